"""A trained teacher brought by the user (`teacher.checkpoint`): read, fitted to its arch, evaluated.

Four formats are read, none of them by unpickling arbitrary objects: a kdtemp teacher `model.pt` and a
plain state dict (torch.load with weights_only=True), a TorchScript file (torch.jit.load) and a
torch.export program (`.pt2`, torch.export.load). Whatever the format, its weights are loaded into
the network the spec names, so the teacher the sweep uses is an ordinary module: hooks for hints,
cached logits and every check on teacher/model.pt work as for a teacher kdtemp trained. A TorchScript
or export program must also compute the same logits as that network, checked on a few test inputs.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from kdtemp.config.model_specs import HFSpec, ModelSpec
from kdtemp.errors import CheckpointError, first_line
from kdtemp.models.registry import build_model
from kdtemp.store.files import file_sha256, load_checkpoint

STATE_DICT, KDTEMP, TORCHSCRIPT, EXPORT = "state_dict", "kdtemp", "torchscript", "torch.export"
TRANSFORMERS = "transformers"
SHOWN_KEYS = 3
"""How many missing / unexpected / mismatched keys a refusal names."""


@dataclass(frozen=True)
class ImportedTeacher:
    model: nn.Module
    source: dict
    """What teacher/model.pt records of the file: path, sha256, format."""
    program: nn.Module | None
    """The TorchScript or export program itself, for the logits check; None for state dicts."""


def checkpoint_format(path: Path) -> str:
    """TorchScript and export archives are zips with their own entries; anything else goes to torch.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return STATE_DICT
    if any(name.endswith("/archive_format") for name in names):
        return EXPORT
    if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
        return TORCHSCRIPT
    return STATE_DICT


def read_weights(path: Path) -> tuple[dict, str, nn.Module | None]:
    """(state dict, format, program or None) of a teacher checkpoint file."""
    kind = checkpoint_format(path)
    if kind == STATE_DICT:
        data = load_checkpoint(path, "teacher.checkpoint")
        nested = data.get("state_dict")
        if isinstance(nested, dict):
            return (
                nested,
                KDTEMP if str(data.get("format", "")).startswith("kdtemp-teacher") else STATE_DICT,
                None,
            )
        if not all(isinstance(value, torch.Tensor) for value in data.values()):
            raise CheckpointError(
                f"teacher.checkpoint {path} is a dict but not a state dict (name -> tensor); "
                "save model.state_dict(), a TorchScript file or a torch.export program"
            )
        return data, STATE_DICT, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = (
                torch.jit.load(str(path), map_location="cpu")
                if kind == TORCHSCRIPT
                else torch.export.load(str(path))
            )
    except Exception as exc:  # both loaders raise many kinds of errors for damaged archives
        raise CheckpointError(
            f"cannot read teacher.checkpoint {path} as {kind} ({first_line(exc)}); re-save it"
        ) from None
    example = None
    if kind == EXPORT:
        example = program.example_inputs
        program = program.module()
    state = {name: tensor.detach() for name, tensor in program.state_dict().items()}
    return state, kind, _Program(cast(nn.Module, program), example)  # an export program's module() above


class _Program(nn.Module):
    """A loaded program, and the batch size an export program was traced at (its shapes are static)."""

    def __init__(self, program: nn.Module, example_inputs):
        super().__init__()
        self.program = program
        self.batch = None
        if example_inputs is not None and example_inputs[0]:
            self.batch = int(example_inputs[0][0].shape[0])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.program(inputs)


def is_saved_model(spec: ModelSpec) -> bool:
    """A teacher `hf:<folder>` taken as trained: evaluated and recorded, never trained."""
    return isinstance(spec, HFSpec) and not spec.fine_tune and spec.checkpoint is None


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


def import_teacher(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None
) -> ImportedTeacher:
    """The spec's network with the checkpoint's weights, refused when they do not fit it (naming
    which keys); a saved transformers teacher (`is_saved_model`) with its own weights."""
    if is_saved_model(spec):
        assert isinstance(spec, HFSpec)
        model = build_model(spec, input_shape, num_classes, vocab_size)
        source = {
            "path": str(spec.folder.resolve()),
            "sha256": folder_sha256(spec.folder),
            "format": TRANSFORMERS,
        }
        return ImportedTeacher(model.eval(), source, None)
    path = Path(cast(Path, spec.checkpoint))  # called for teachers given a checkpoint only
    if not path.is_file():
        raise CheckpointError(
            f"teacher.checkpoint not found: {path}; give the path of a trained teacher's file"
        )
    state, kind, program = read_weights(path)
    model = build_model(spec, input_shape, num_classes, vocab_size)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise CheckpointError(
            f"teacher.checkpoint {path} does not fit a {spec.arch} with {num_classes} classes: {problem}; "
            "give the arch (and kwargs) it was trained as"
        )
    model.load_state_dict(state)
    source = {"path": str(path.resolve()), "sha256": file_sha256(path), "format": kind}
    return ImportedTeacher(model.eval(), source, program)


def state_dict_mismatch(model: nn.Module, state: dict) -> str:
    """Which keys are missing, unexpected or of another shape ('' when the state fits `model`)."""
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and tuple(state[key].shape) != tuple(own[key].shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{label} {', '.join(keys[:SHOWN_KEYS])}{more}")
    return "; ".join(parts)


def check_same_logits(imported: ImportedTeacher, inputs: torch.Tensor, arch: str) -> None:
    """A program's logits must be the named network's with its weights: else the arch is not what
    was saved."""
    if imported.program is None:
        return
    batch = imported.program.batch or min(8, len(inputs))
    example = inputs[:batch].cpu()
    with torch.no_grad():
        try:
            expected = imported.program(example)
        except Exception as exc:
            raise CheckpointError(
                f"cannot run teacher.checkpoint on a batch of the data ({first_line(exc)}); "
                "export it for inputs of this dataset's shape"
            ) from None
        model = imported.model.cpu()
        got = model(example)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        gap = float((got - expected).abs().max())
        raise CheckpointError(
            f"teacher.checkpoint's program computes other logits than {arch} with its weights "
            f"(max difference {gap:.3g}); give the arch it was saved from, in eval mode"
        )
