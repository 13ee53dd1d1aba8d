"""transformers classifiers: a saved model (`hf:<folder>`) or a random one from a config (`hf-config`).

Local files only: nothing is downloaded. The model is wrapped to read kdtemp's text inputs (N, 2, L) and
return plain logits, so the engine, the teacher-logit cache and hints see an ordinary module. In
BERT (tested) the last nn.Linear is the classification head, whose input is the pooled feature a hint
matches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from kdtemp.config.model_specs import HFConfigSpec, HFSpec
from kdtemp.errors import ConfigError, first_line

TEXT_EXTRA = "pip install -e '.[text]'"


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier as a module of text inputs (ids, mask) -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs[:, 0], attention_mask=inputs[:, 1]).logits


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"hf: and hf-config archs need transformers: {TEXT_EXTRA}") from None
    transformers.logging.set_verbosity_error()  # its load reports and progress bars are not the user's
    transformers.logging.disable_progress_bar()
    return transformers


def build_saved(spec: HFSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int) -> nn.Module:
    """AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True), refused when its
    labels, vocabulary or positions do not fit the data."""
    transformers = _transformers()
    folder = spec.folder
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{spec.arch}: {folder} holds no config.json; give a folder written by save_pretrained"
        )
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True
        )
    except Exception as exc:
        raise ConfigError(
            f"{spec.arch} does not load ({first_line(exc)}); save it again with save_pretrained"
        ) from None
    labels = int(model.config.num_labels)
    if labels != num_classes:
        raise ConfigError(
            f"{spec.arch} predicts {labels} labels, the data has {num_classes} classes; "
            "give a model saved with num_labels equal to the data's classes"
        )
    check_fits(spec.arch, model.config, input_shape, vocab_size)
    return SequenceClassifier(model)


def build_from_config(
    spec: HFConfigSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int
) -> nn.Module:
    """AutoConfig.for_model(**kwargs) with num_labels, vocab_size and max_position_embeddings the data's
    unless given, then AutoModelForSequenceClassification.from_config: random weights, offline."""
    transformers = _transformers()
    kwargs = dict(spec.kwargs)
    model_type = kwargs.pop("model_type")
    source = None if spec.init_from is None else saved_source(spec, model_type)
    if source is not None:
        layers_key = layer_count_key(source.config)
        inherited = source.config.to_dict()
        for key in (
            "architectures",
            "id2label",
            "label2id",
            "num_labels",
            "model_type",
            "transformers_version",
        ):
            inherited.pop(key, None)
        inherited[layers_key] = max(1, getattr(source.config, layers_key) // 2)
        kwargs = {**inherited, **kwargs}
    kwargs.setdefault("vocab_size", vocab_size)
    kwargs.setdefault("max_position_embeddings", max(input_shape[-1], 16))
    kwargs["num_labels"] = num_classes
    try:
        config = transformers.AutoConfig.for_model(model_type, **kwargs)
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    except Exception as exc:
        raise ConfigError(f"hf-config {model_type}: {first_line(exc)}; fix its kwargs") from None
    check_fits("hf-config", config, input_shape, vocab_size)
    if source is not None:
        every_other_layer(source, model)
    return SequenceClassifier(model)


LAYER = re.compile(r"\.layer\.(\d+)\.")
"""The encoder layer index in a transformers state-dict key (BERT's encoder.layer.i., DistilBERT's
transformer.layer.i.)."""


def saved_source(spec: HFConfigSpec, model_type: str) -> Any:
    folder = Path(cast(Path, spec.init_from))
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"hf-config init_from {folder} holds no config.json; give a folder written by save_pretrained"
        )
    transformers = _transformers()
    try:
        source = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True
        )
    except Exception as exc:
        raise ConfigError(f"hf-config init_from {folder} does not load ({first_line(exc)})") from None
    if source.config.model_type != model_type:
        raise ConfigError(
            f"hf-config init_from {folder} is a {source.config.model_type}, kwargs.model_type {model_type}; "
            "initialise from a model of the same family"
        )
    return source


def layer_count_key(config: Any) -> str:
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(config, key):
            return key
    raise ConfigError(f"hf-config init_from: {config.model_type} names no layer count kdtemp knows")


def every_other_layer(source: nn.Module, student: nn.Module) -> None:
    """Student layer j takes source layer 2j; every other weight of the same name and shape is copied."""
    own = student.state_dict()
    taken = {}
    for key, tensor in source.state_dict().items():
        match = LAYER.search(key)
        if match is not None:
            index = int(match.group(1))
            if index % 2:
                continue
            key = f"{key[: match.start()]}.layer.{index // 2}.{key[match.end() :]}"
        if key in own and own[key].shape == tensor.shape:
            taken[key] = tensor
    student.load_state_dict(taken, strict=False)


def check_fits(arch: str, config: Any, input_shape: tuple[int, ...], vocab_size: int) -> None:
    """The model's vocabulary must hold every token id and its position table the padded length."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and vocab < vocab_size:
        raise ConfigError(
            f"{arch} has a vocabulary of {vocab} ids, the data's tokenizer {vocab_size}; "
            "give data.tokenizer the model's own tokenizer (its folder)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < input_shape[-1]:
        raise ConfigError(
            f"{arch} takes at most {positions} positions, the texts are padded to {input_shape[-1]}; "
            f"set data.max_length to {positions} or less"
        )
