"""Evaluation: metric sums over chunks of a split, and the logits of a network on a whole split."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from kdtemp.data.dataset import Dataset
from kdtemp.engine.device import full_float32
from kdtemp.engine.loop import to_memory_format
from kdtemp.engine.metrics import (
    agreement_count,
    calibration_bins,
    correct_count,
    cross_entropy_sum,
    expected_calibration_error,
    teacher_kl_sum,
)


def chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


SPLITS = ("val", "test")
"""What every epoch is evaluated on: validation to choose by, test to report."""
METRICS = ("loss", "acc", "agreement", "kl", "ece")
"""What an evaluation measures on each split (agreement and kl only against a teacher)."""


def metric_name(split: str, metric: str) -> str:
    """The column of `metric` (loss, acc, agreement, kl, ece) on `split`: val_acc, val_agreement, ...; on
    test the names metrics.csv has always had (test_acc, agreement, test_kl, ...)."""
    return "agreement" if (split, metric) == ("test", "agreement") else f"{split}_{metric}"


def evaluation_sums(
    logits: torch.Tensor, targets: torch.Tensor, teacher_log_probs: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Sums over one chunk; accuracy and agreement stay integer counts, exact however many chunks add up."""
    sums = {
        "loss": cross_entropy_sum(logits, targets),
        "acc": correct_count(logits, targets),
        "calibration": calibration_bins(logits, targets),
    }
    if teacher_log_probs is not None:
        sums["agreement"] = agreement_count(logits, teacher_log_probs)
        sums["kl"] = teacher_kl_sum(logits, teacher_log_probs)
    return sums


def finish_evaluation(totals: dict[str, torch.Tensor], count: int, split: str) -> dict[str, torch.Tensor]:
    """Means over the split, named for it (`metric_name`), divided in float64: 709 correct of 1000 is
    0.709, not float32's 0.70899999."""
    result = {
        metric_name(split, name): value.double() / count
        for name, value in totals.items()
        if name != "calibration"
    }
    result[metric_name(split, "ece")] = expected_calibration_error(totals["calibration"])
    return result


def split_metrics(
    data: Dataset,
    batch_size: int,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    teacher_log_probs: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every metric on the validation and the test split (named by `metric_name`), from `logits_of`, the
    float logits of a chunk of inputs ((B, C), or (K, B, C) for a stacked group); agreement and KL against
    `teacher_log_probs` by split when given. No val_ metrics without a validation split: their
    metrics.csv cells stay empty, so no test number passes for a validation one. Call it under no_grad."""
    metrics: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        if split == "val" and data.val_is_test:
            continue
        inputs, targets = data.split(split)
        teacher = None if teacher_log_probs is None else teacher_log_probs[split]
        totals: dict[str, torch.Tensor] = {}
        for chunk in chunks(len(targets), batch_size):
            reference = None if teacher is None else teacher[..., chunk, :]
            add_sums(totals, evaluation_sums(logits_of(inputs[chunk]), targets[chunk], reference))
        metrics.update(finish_evaluation(totals, len(targets), split))
    return metrics


def add_sums(totals: dict[str, torch.Tensor], sums: dict[str, torch.Tensor]) -> None:
    for name, value in sums.items():
        totals[name] = totals[name] + value if name in totals else value


CPU_INFERENCE_BATCH = 256
"""Chunk size for CPU inference: small enough for a conv net's activations to stay in cache."""


def inference_module(model: nn.Module, example: torch.Tensor, device: torch.device) -> nn.Module:
    """A faster stand-in for `model` in eval mode, or `model` itself.

    On CPU: a frozen TorchScript copy with BatchNorm folded into convolutions and oneDNN layouts,
    several times faster for conv nets. It is used only if it reproduces the eager outputs on
    `example`; any failure to build it falls back to eager.
    """
    model.eval()
    if device.type != "cpu":
        return model
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
            if torch.allclose(frozen(example), model(example), rtol=1e-4, atol=1e-4):
                return frozen
    except Exception:  # TorchScript raises many kinds of errors for modules it cannot handle
        pass
    return model


def predict_logits(
    model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """Eval-mode logits of `model` on `inputs`, in chunks: the teacher's one pass, computed in float32.

    No autocast and no TF32, even where training uses them: these logits become the soft targets,
    the subject of a temperature study, and bf16 output spacing (0.03-0.06 at magnitudes 8-16) would
    move softmax(t/T) at T = 1 by up to ~3%. One pass, cached, so full precision costs little.
    """
    if device.type == "cpu":
        batch_size = min(batch_size, CPU_INFERENCE_BATCH)
    runner = inference_module(model, inputs[:batch_size].to(device), device)
    outputs = []
    with torch.no_grad(), full_float32():
        for chunk in chunks(len(inputs), batch_size):
            outputs.append(runner(to_memory_format(inputs[chunk].to(device), channels_last)).float())
    return torch.cat(outputs)
