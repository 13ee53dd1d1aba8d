"""Export a trained student for use without kdtemp: TorchScript (torch.jit) or an ExportedProgram
(torch.export).

Both are PyTorch's own formats: `torch.jit.load(path)` or `torch.export.load(path).module()` gives
back a callable model, checked here to reproduce the student's outputs before the file is kept.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import ValidationError

from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import CheckpointError, RunsError, first_line
from kdtemp.models.registry import build_model
from kdtemp.store.files import atomic_write_bytes, load_checkpoint, read_summary
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.records import Status

Format = Literal["torchscript", "pt2"]
FILE_NAMES = {"torchscript": "student.torchscript.pt", "pt2": "student.pt2"}


def best_run(layout: ExperimentLayout) -> str:
    """The completed run with the highest last-epoch validation accuracy (the model.pt it exports is its
    last epoch's), the first in run-id order of equals; on test accuracy only for runs without a
    validation split (which the CLI then says)."""
    best, best_accuracy = None, -1.0
    for run_dir in layout.run_dirs():
        summary = read_summary(run_dir)
        if summary is not None and summary.status == Status.COMPLETED:
            val = summary.final.get("val_acc")
            accuracy = val if isinstance(val, (int, float)) else summary.test_acc or 0.0
            if accuracy > best_accuracy:
                best, best_accuracy = run_dir.name, accuracy
    if best is None:
        raise RunsError(
            f"no completed runs under {layout.students_dir}; run `kdtemp sweep` or `kdtemp search` first"
        )
    return best


def load_student(run_dir: Path) -> tuple[torch.nn.Module, tuple[int, ...], int | None]:
    """A completed run's student, rebuilt from the config recorded beside it, its input shape and (text)
    vocabulary size."""
    files = RunFiles(run_dir)
    if not (files.summary.exists() and files.model.exists()):
        raise RunsError(f"{run_dir.name} has no finished student (no model.pt); let its sweep complete first")
    record = yaml.safe_load(files.config.read_text())
    try:
        config = ExperimentConfig.model_validate(record["experiment"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise RunsError(
            f"{files.config}: the recorded config does not validate "
            f"({str(exc).splitlines()[0]}); rerun the sweep with --force"
        ) from None
    layout = ExperimentLayout(run_dir.parent.parent)
    teacher = load_checkpoint(layout.teacher_models(len(config.teacher_specs()))[0], "teacher checkpoint")
    input_shape = tuple(teacher["input_shape"])
    vocab_size = teacher.get("vocab_size")
    model = build_model(config.student, input_shape, int(teacher["num_classes"]), vocab_size)
    checkpoint = load_checkpoint(files.model, "student model")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{files.model} does not fit the run's student ({first_line(exc)}); rerun the sweep with --force"
        ) from None
    return model.eval(), input_shape, vocab_size


def example_inputs(input_shape: tuple[int, ...], vocab_size: int | None) -> torch.Tensor:
    """Four inputs to trace and check an export with: normal floats, or (text) random token ids with the
    second half of the last two texts masked as padding."""
    generator = torch.Generator().manual_seed(0)
    if vocab_size is None:
        return torch.randn(4, *input_shape, generator=generator)
    length = input_shape[-1]
    ids = torch.randint(0, vocab_size, (4, length), generator=generator)
    mask = torch.ones(4, length, dtype=torch.int64)
    mask[2:, max(1, length // 2) :] = 0
    return torch.stack([ids, mask], dim=1)


def export_student(layout: ExperimentLayout, run_id: str | None, format: Format = "pt2") -> tuple[str, Path]:
    """Write the student of `run_id` (default: the best run) as `format` beside its files; (run_id, path)."""
    run_id = run_id or best_run(layout)
    run_dir = layout.run_dir(run_id)
    if not run_dir.is_dir():
        raise RunsError(f"no run {run_id} under {layout.students_dir}; `kdtemp status` lists the runs")
    model, input_shape, vocab_size = load_student(run_dir)
    example = example_inputs(input_shape, vocab_size)
    with torch.no_grad():
        expected = model(example)
        buffer = io.BytesIO()
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", FutureWarning
                )  # deprecated by PyTorch, still what many deployments load
                torch.jit.save(torch.jit.trace(model, example), buffer)
                buffer.seek(0)
                reloaded = torch.jit.load(buffer)
        else:
            batch = torch.export.Dim("batch")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, buffer)
            buffer.seek(0)
            reloaded = torch.export.load(buffer).module()
        if not torch.allclose(reloaded(example), expected, atol=1e-5, rtol=1e-5):
            raise CheckpointError(
                f"the {format} export of {run_id} does not reproduce the student's outputs; try --format "
                f"{'pt2' if format == 'torchscript' else 'torchscript'}"
            )
    path = run_dir / FILE_NAMES[format]
    atomic_write_bytes(path, buffer.getvalue())
    return run_id, path
