"""Does kdtemp's CUDA path work? One command, no download, under 8 minutes on one GPU.

Every CUDA path a sweep takes, each as its own check (pass / fail / error / skipped, with a message),
on synthetic CIFAR-100-shaped data (benchmarks/synthetic.py), plus Fashion-MNIST when installed:

    versions                     torch, CUDA, cuDNN, the device, TF32 flags
    teacher_amp_channels_last    the teacher's loop with bf16 autocast and channels_last weights
    cached_pass_amp_vs_fp32      the teacher-logit pass: AMP vs fp32 logits, and what the cache holds
    group_augment_amp_on/off     a ResNet-8x4 group of 5 (4 T + baseline) with augmentation
    multi_seed_group             students of 3 seeds in one group (cached logits)
    hints_augment_two_groups     hints + augmentation over 2 groups: hook count and peak memory stay flat
    sync_free_steps              torch.cuda.set_sync_debug_mode("error") around every step loop
    group_vs_alone               a member's numbers in a group vs alone, train.deterministic on and off
    member_bytes_vs_peak         device.member_bytes against the measured per-member peak
    footprint_latency            footprint.student_and_teacher's latencies against CUDA-event timing
    sweep_interrupt_resume       `kdtemp sweep --device cuda`, Ctrl-C after an epoch, then resumed
    model_pt_on_cpu              the sweep's model.pt files loaded where no CUDA exists
    fashion_mnist                a short real-data sweep, when Debian's dataset-fashion-mnist is installed

    python benchmarks/gpu_check.py                   # CUDA; writes $OUT/gpu_check.json (or runs/gpu_check/)
    python benchmarks/gpu_check.py --device cpu      # the same checks at tiny sizes (what the tests run)

Without CUDA (and without --device cpu) it prints one line and exits 0. The JSON is rewritten after each
check, so a cut-off run still leaves what it reached; the exit code is 1 when any check failed or errored.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import yaml
from checklist import SKIPPED, Checklist, Outcome, Skip, default_out, verdict
from measuring import ALPHA, MiB, kd_member, peak_mib, reset_peak, synchronize
from synthetic import write_cifar100_folder
from torch import nn

import kdtemp
import kdtemp.engine.loop as engine_loop
import kdtemp.group.student_group as student_group
import kdtemp.sweep.experiment as sweep_experiment
from kdtemp.config.loading import load_config
from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.builtin import SYSTEM_FASHION_MNIST_DIRS
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.engine.device import MEMORY_SHARE, member_bytes
from kdtemp.engine.evaluation import chunks, inference_module, predict_logits
from kdtemp.engine.job_setup import loop_settings, wants_channels_last
from kdtemp.engine.loop import (
    EpochDone,
    Member,
    TeacherSignal,
    autocast,
    to_memory_format,
)
from kdtemp.engine.trainer import NetworkTrainer
from kdtemp.errors import ConfigError
from kdtemp.events import TeacherResult
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.features import Hint
from kdtemp.models.footprint import student_and_teacher
from kdtemp.models.registry import build_model
from kdtemp.store.files import load_checkpoint, read_csv_rows, read_summary
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.records import Status
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.loading import LoadedTeacher, teacher_logits
from kdtemp.teachers.training import train_teacher

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How big each check is: the real CIFAR pair on CUDA, toy conv nets on CPU."""

    teacher: dict
    student: dict
    train: int
    test: int
    batch: int
    eval_batch: int
    temperatures: tuple[float, ...]
    seeds: tuple[int, ...]


CUDA_SIZES = Sizes(teacher={"arch": "resnet32x4", "epochs": 1}, student={"arch": "resnet8x4", "epochs": 1},
                   train=64 * 40, test=1000, batch=64, eval_batch=500, temperatures=(1, 2, 4, 8), seeds=(0, 1, 2))
CPU_SIZES = Sizes(teacher={"arch": "cnn", "channels": [4], "hidden": 16, "dropout": 0.0, "epochs": 1},
                  student={"arch": "mlp", "hidden": [16], "epochs": 1},
                  train=160, test=32, batch=32, eval_batch=32, temperatures=(1, 4), seeds=(0, 1))
"""Only what exercises the code paths: the CPU run is the scripts' own test, not a measurement."""


def merged(tree: dict, sections: dict) -> dict:
    """`tree` with each section of `sections` merged in one level deep."""
    tree = {key: dict(value) if isinstance(value, dict) else value for key, value in tree.items()}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def needs_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise Skip("needs CUDA")


class Bench:
    """What the checks share: the device, sizes, a scratch folder with the synthetic data, one trained teacher."""

    def __init__(self, device: torch.device, sizes: Sizes, work: Path):
        self.device, self.sizes, self.work = device, sizes, work
        self.data_root = write_cifar100_folder(work / "data", sizes.train, sizes.test)
        self._data: Dataset | None = None
        self._teacher_file: Path | None = None
        self.results: dict = {}

    def tree(self, name: str, **sections) -> dict:
        sizes = self.sizes
        base = {
            "name": name, "runs_dir": str(self.work / "runs"), "device": str(self.device),
            "data": {"dataset": "cifar100", "root": str(self.data_root), "batch_size": sizes.batch,
                     "eval_batch_size": sizes.eval_batch, "download": False},
            "teacher": sizes.teacher, "student": sizes.student,
            "kd": {"alpha": ALPHA, "temperatures": list(sizes.temperatures), "seeds": [sizes.seeds[0]], "baseline": True},
        }
        return merged(base, sections)

    def config_file(self, name: str, **sections) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.tree(name, **sections)))
        return path

    def config(self, name: str, **sections) -> ExperimentConfig:
        return load_config(self.config_file(name, **sections))

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_dataset(self.config("probe").data).to(self.device)
        return self._data

    def teacher_file(self) -> Path:
        """The teacher trained once by the public `train_teacher` job, for every sweep to copy."""
        if self._teacher_file is None:
            config = self.config("teacher-source")
            train_teacher(config)
            self._teacher_file = ExperimentLayout.of(config.runs_dir, config.name).teacher_model
        return self._teacher_file

    def place_teacher(self, config: ExperimentConfig) -> None:
        layout = ExperimentLayout.of(config.runs_dir, config.name)
        layout.teacher_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.teacher_file(), layout.teacher_model)

    def teacher_model(self) -> nn.Module:
        config = self.config("probe")
        model = build_model(config.teacher, self.data.input_shape, self.data.num_classes)
        model.load_state_dict(load_checkpoint(self.teacher_file(), "teacher")["state_dict"])
        return model.to(self.device).eval()

    def test_logits(self, teacher: nn.Module, config: ExperimentConfig) -> torch.Tensor:
        return predict_logits(teacher, self.data.test_x, config.data.eval_batch_size, self.device,
                              wants_channels_last(teacher, self.device))[None]

    def network_signal(self, teacher: nn.Module, config: ExperimentConfig, hooked: bool = False) -> TeacherSignal:
        """The teacher run on every batch (augmentation on), as sweep builds it."""
        example = self.data.train_x[:self.sizes.batch]
        network = teacher if hooked else inference_module(teacher, example, self.device)
        return TeacherSignal(test_logits=self.test_logits(teacher, config), networks=(network,))

    def cached_signal(self, teacher: nn.Module, config: ExperimentConfig) -> TeacherSignal:
        train = predict_logits(teacher, self.data.train_x, config.data.eval_batch_size, self.device)
        return TeacherSignal(test_logits=self.test_logits(teacher, config), train_logits=train[None])

    def sweep_metrics(self, config: ExperimentConfig) -> pd.DataFrame:
        """Run `sweep(config)` from a fresh experiment; every run's metrics, wall times dropped."""
        self.place_teacher(config)
        result = sweep(config, force=True)
        if result.failed:
            raise RuntimeError(f"runs failed: {result.failed}")
        layout = ExperimentLayout.of(config.runs_dir, config.name)
        frames = [pd.read_csv(RunFiles(d).metrics) for d in layout.run_dirs()]
        return (pd.concat(frames, ignore_index=True).drop(columns=["epoch_seconds"])
                .sort_values(["run_id", "epoch"]).reset_index(drop=True))


def members(temperatures, seed: int, steps: int, baseline: bool = True) -> list[Member]:
    """One member per temperature (constant schedule) and the no-KD baseline, as sweep plans them."""
    return [kd_member(t, seed, steps) for t in (*temperatures, *([None] if baseline else []))]


def train_group(bench: Bench, config: ExperimentConfig, chosen: list[Member], signal: TeacherSignal,
                data: Dataset | None = None, hint: Hint | None = None) -> dict:
    """One StudentGroup trained for config.student.epochs: its last rows, failures, ms per step, peak memory."""
    data = data or bench.data
    spec, device = config.student, bench.device
    settings = loop_settings(config, spec, chosen[0].seed, device)
    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    group = StudentGroup(lambda: build_model(spec, data.input_shape, data.num_classes), chosen, data, signal, settings, hint)
    with group:
        epochs = [event for event in group.run() if isinstance(event, EpochDone)]
    synchronize(device)
    wall = time.perf_counter() - started
    failures = {k: reason for event in epochs for k, reason in event.failures.items()}
    steps = group.steps_per_epoch * len(epochs)
    return {"rows": epochs[-1].metrics, "failures": failures, "ms_per_step": 1000 * wall / steps, "steps": steps,
            "peak_mib": peak_mib(device), "multi_seed": group.member_rows is not None, "amp": settings.amp}


def rows_finite(result: dict) -> bool:
    return not result["failures"] and all(
        row is not None and all(math.isfinite(v) for v in row.values() if isinstance(v, float)) for row in result["rows"])


def mean_of(result: dict, key: str) -> float:
    return statistics.fmean(row[key] for row in result["rows"])


# --- the checks ------------------------------------------------------------------------------------


def check_versions(bench: Bench) -> Outcome:
    details = {"kdtemp": kdtemp.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
               "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if bench.device.type == "cuda":
        properties = torch.cuda.get_device_properties(bench.device)
        details.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), device=properties.name,
                       capability=f"{properties.major}.{properties.minor}", memory_gib=round(properties.total_memory / 2**30, 1),
                       bf16=torch.cuda.is_bf16_supported(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                       tf32_cudnn=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    summary = ", ".join(f"{k} {details[k]}" for k in ("torch", "cuda", "cudnn", "device") if k in details)
    return verdict(True, summary, **details)


def check_teacher(bench: Bench) -> Outcome:
    """The teacher's loop: on CUDA, AMP and channels_last must be on (and off on CPU); the loss finite."""
    config = bench.config("teacher-check")
    spec, data, device = config.teacher, bench.data, bench.device
    torch.manual_seed(spec.seed)
    model = build_model(spec, data.input_shape, data.num_classes)
    settings = loop_settings(config, spec, spec.seed, device, model)
    trainer = NetworkTrainer(model, data, settings)
    synchronize(device)
    started = time.perf_counter()
    rows = [event.metrics[0] for event in trainer.run() if isinstance(event, EpochDone)]
    synchronize(device)
    wall = time.perf_counter() - started
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    layout_ok = conv.weight.is_contiguous(memory_format=torch.channels_last)
    on_cuda = device.type == "cuda"
    flags_ok = settings.amp == on_cuda and settings.channels_last == on_cuda and layout_ok == on_cuda
    finite = bool(rows) and all(math.isfinite(rows[-1][k]) for k in ("train_loss", "test_loss"))
    row = rows[-1] if rows else {}
    return verdict(flags_ok and finite,
                   f"amp {settings.amp}, channels_last {settings.channels_last} (weights {layout_ok}), "
                   f"train loss {row.get('train_loss', float('nan')):.3f}, {1000 * wall / trainer.steps_per_epoch:.1f} ms/step",
                   amp=settings.amp, channels_last=settings.channels_last, weights_channels_last=layout_ok, row=row,
                   ms_per_step=1000 * wall / trainer.steps_per_epoch)


def autocast_logits(teacher: nn.Module, inputs: torch.Tensor, batch: int, device: torch.device,
                    channels_last: bool) -> torch.Tensor:
    """The teacher's logits under bf16 autocast: what the cached pass computed before it ran in float32."""
    with torch.no_grad(), autocast(device, True):
        return torch.cat([teacher(to_memory_format(inputs[part].to(device), channels_last)).float()
                          for part in chunks(len(inputs), batch)])


def check_cached_pass(bench: Bench) -> Outcome:
    """The teacher-logit pass under AMP vs fp32, and whether the cache a sweep writes is float32."""
    config = bench.config("cached-pass")
    teacher, data, device = bench.teacher_model(), bench.data, bench.device
    batch = config.data.eval_batch_size
    fp32 = predict_logits(teacher, data.train_x, batch, device, channels_last=False)
    amp = autocast_logits(teacher, data.train_x, batch, device, wants_channels_last(teacher, device))
    loaded = LoadedTeacher(teacher, {}, "gpu-check", bench.teacher_file(), "teacher")
    cached = teacher_logits(loaded, data, config, device).train

    def compare(other: torch.Tensor) -> dict:
        difference = (other.float() - fp32).abs()
        return {"max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
                "relative": float(difference.mean() / fp32.abs().mean()),
                "argmax_agreement": float((other.argmax(-1) == fp32.argmax(-1)).float().mean())}

    amp_vs_fp32, cache_vs_fp32 = compare(amp), compare(cached)
    ok = (cached.dtype == torch.float32 and bool(torch.isfinite(cached).all())
          and amp_vs_fp32["relative"] < 0.05 and cache_vs_fp32["relative"] < 0.05)
    return verdict(ok, f"AMP vs fp32 logits: max |diff| {amp_vs_fp32['max_abs']:.3g}, relative {amp_vs_fp32['relative']:.2%}, "
                       f"argmax agreement {amp_vs_fp32['argmax_agreement']:.1%}; cache {cached.dtype} vs fp32: "
                       f"max |diff| {cache_vs_fp32['max_abs']:.3g}",
                   amp_vs_fp32=amp_vs_fp32, cache_vs_fp32=cache_vs_fp32, cache_dtype=str(cached.dtype))


def check_group_augment(bench: Bench, amp: bool) -> Outcome:
    """A group of 4 temperatures + the baseline, augmentation on, the teacher run on every batch."""
    config = bench.config(f"group-amp-{amp}", data={"augment": True}, train={"amp": amp})
    signal = bench.network_signal(bench.teacher_model(), config)
    steps = config.student.epochs * engine_loop.steps_per_epoch(len(bench.data.train_y), bench.sizes.batch)
    result = train_group(bench, config, members(bench.sizes.temperatures, 0, steps), signal)
    bench.results[f"group_amp_{amp}"] = result
    message = (f"K={len(result['rows'])}, amp {result['amp']}, {result['ms_per_step']:.1f} ms/step, "
               f"peak {result['peak_mib'] or 0:.0f} MiB, mean train loss {mean_of(result, 'train_loss'):.3f}")
    details = dict(result)
    ok = rows_finite(result) and result["amp"] == (amp and bench.device.type == "cuda")
    other = bench.results.get(f"group_amp_{not amp}")
    if other is not None and rows_finite(other) and ok:
        gap = abs(mean_of(result, "train_loss") - mean_of(other, "train_loss")) / mean_of(other, "train_loss")
        details["train_loss_gap_amp_on_vs_off"] = gap
        details["amp_speedup"] = (other if amp else result)["ms_per_step"] / (result if amp else other)["ms_per_step"]
        message += f"; train loss within {gap:.2%} of amp {not amp}, AMP speed-up {details['amp_speedup']:.2f}x"
        ok = gap < 0.05
    return verdict(ok, message, **details)


def check_multi_seed(bench: Bench) -> Outcome:
    """Students of several seeds in one group (cached logits), and one of them trained alone for comparison."""
    config = bench.config("multi-seed")
    teacher = bench.teacher_model()
    signal = bench.cached_signal(teacher, config)
    steps = config.student.epochs * engine_loop.steps_per_epoch(len(bench.data.train_y), bench.sizes.batch)
    seeds, temperatures = bench.sizes.seeds, bench.sizes.temperatures[-1:]
    chosen = [m for seed in seeds for m in members(temperatures, seed, steps)]
    grouped = train_group(bench, config, chosen, signal)
    alone = train_group(bench, config, members(temperatures, seeds[-1], steps, baseline=False), signal)
    member = len(chosen) - 2  # the last seed's distilled member
    difference = max(abs(grouped["rows"][member][k] - alone["rows"][0][k]) for k in ("train_loss", "test_loss", "test_acc"))
    ok = rows_finite(grouped) and grouped["multi_seed"]
    return verdict(ok, f"K={len(chosen)} over seeds {list(seeds)} in one group: {grouped['ms_per_step']:.1f} ms/step "
                       f"(alone {alone['ms_per_step']:.1f}); seed {seeds[-1]} member vs alone max |diff| {difference:.3g}",
                   ms_per_step=grouped["ms_per_step"], alone_ms_per_step=alone["ms_per_step"], member_vs_alone=difference,
                   peak_mib=grouped["peak_mib"], multi_seed=grouped["multi_seed"])


def hook_count(models: list[nn.Module]) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for model in models for m in model.modules())


def check_hints_two_groups(bench: Bench) -> Outcome:
    """Hints + augmentation, two groups in one sweep: the teacher's hooks and the peak memory stay flat.

    Two seeds share one group since seeds group across augmentation, so max_group_size 1 makes the two."""
    config = bench.config("hints-two-groups", data={"augment": True}, train={"max_group_size": 1},
                          kd={"feature_weight": 1.0, "seeds": list(bench.sizes.seeds[:2]), "temperatures": [4], "baseline": False})
    bench.place_teacher(config)
    teachers: list[nn.Module] = []
    original = sweep_experiment.load_teachers

    def recording(*args, **kwargs):
        loaded = original(*args, **kwargs)
        teachers.extend(t.model for t in loaded)
        return loaded

    device = bench.device
    marks: dict[str, dict] = {}

    def mark_groups(event) -> None:
        match = re.match(r"group (\d+)/", getattr(event, "description", ""))
        if match and f"group {match[1]}" not in marks:
            synchronize(device)
            marks[f"group {match[1]}"] = {"hooks": hook_count(teachers), "peak_mib_before": peak_mib(device)}
            reset_peak(device)

    sweep_experiment.load_teachers = recording
    try:
        result = sweep(config, force=True, emit=mark_groups)
        if result.failed:
            raise RuntimeError(f"runs failed: {result.failed}")
    finally:
        sweep_experiment.load_teachers = original
    synchronize(device)
    after = hook_count(teachers)
    names = sorted(marks)
    if len(names) < 2:
        return verdict(False, f"expected 2 groups, the sweep made {len(names)}", marks=marks)
    hooks = [marks[n]["hooks"] for n in names] + [after]
    hooks_flat = hooks[0] == hooks[1] and after == 0
    message = f"teacher hooks at group starts {hooks[:2]}, after the sweep {after}"
    details = {"marks": marks, "hooks_after": after}
    ok = hooks_flat
    if device.type == "cuda":
        first, second = marks[names[1]]["peak_mib_before"], peak_mib(device)
        memory_flat = second <= first * 1.05 + 4
        message += f"; peak memory group 1 {first:.0f} MiB, group 2 {second:.0f} MiB"
        details.update(peak_group_1_mib=first, peak_group_2_mib=second)
        ok = ok and memory_flat
    else:
        message += "; memory part skipped: needs CUDA"
    return verdict(ok, message, **details)


# -- synchronisation inside the step loops --


def kdtemp_frame(exc: BaseException) -> str:
    """The innermost kdtemp line of a traceback: where the synchronising call was made."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/kdtemp/" in f.filename]
    if not frames:
        return str(exc).splitlines()[0]
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"


@contextlib.contextmanager
def sync_checked_batches():
    """EpochBatches whose iteration runs under set_sync_debug_mode("error") from each epoch's second step on.

    The first step is left out (one-time lazy initialisation), and so is the epoch's end, where one host
    sync for the metrics is by design.
    """
    original = getattr(student_group, "EpochBatches", None)
    if original is None or getattr(engine_loop, "EpochBatches", None) is not original:
        raise Skip("not available in this version (the loops no longer iterate engine_loop.EpochBatches)")

    class SyncChecked(original):
        def __iter__(self):
            try:
                for index, batch in enumerate(super().__iter__()):
                    if index == 1:
                        torch.cuda.set_sync_debug_mode("error")
                    yield batch
            finally:
                torch.cuda.set_sync_debug_mode(0)

    engine_loop.EpochBatches = student_group.EpochBatches = SyncChecked
    try:
        yield
    finally:
        engine_loop.EpochBatches = student_group.EpochBatches = original
        torch.cuda.set_sync_debug_mode(0)


def sync_free(loop: Callable[[], object]) -> str:
    try:
        loop()
        return "clean"
    except RuntimeError as exc:
        if "synchroniz" not in str(exc):
            raise
        return f"syncs at {kdtemp_frame(exc)}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def check_sync_free_steps(bench: Bench) -> Outcome:
    needs_cuda(bench.device)
    teacher = bench.teacher_model()
    augmented = bench.config("sync-augment", data={"augment": True})
    cached = bench.config("sync-cached")
    spe = engine_loop.steps_per_epoch(len(bench.data.train_y), bench.sizes.batch)
    hint_shape = (teacher.classifier.in_features,)
    loops = {}
    with sync_checked_batches():
        def teacher_loop():
            model = build_model(cached.teacher, bench.data.input_shape, bench.data.num_classes)
            for _ in NetworkTrainer(model, bench.data, loop_settings(cached, cached.teacher, 0, bench.device, model)).run():
                pass

        loops["teacher"] = sync_free(teacher_loop)
        loops["group_augment"] = sync_free(lambda: train_group(
            bench, augmented, members(bench.sizes.temperatures, 0, spe), bench.network_signal(teacher, augmented)))
        loops["group_multi_seed_cached"] = sync_free(lambda: train_group(
            bench, cached, [m for s in bench.sizes.seeds for m in members([4], s, spe)], bench.cached_signal(teacher, cached)))
        loops["group_hints_augment"] = sync_free(lambda: train_group(
            bench, augmented, members([4], 0, spe), bench.network_signal(teacher, augmented, hooked=True),
            hint=Hint(1.0, None, hint_shape)))
    ok = all(state == "clean" for state in loops.values())
    return verdict(ok, "; ".join(f"{name} {state}" for name, state in loops.items()), loops=loops)


def max_difference(first: pd.DataFrame, second: pd.DataFrame) -> float:
    numeric = first.select_dtypes("number").columns
    return float((first[numeric] - second[numeric]).abs().max().max())


def check_group_vs_alone(bench: Bench) -> Outcome:
    """A run's numbers trained in a group vs alone (max_group_size 1), with train.deterministic off and on."""
    details, parts, ok = {}, [], True
    for deterministic in (False, True):
        extra = {"deterministic": True} if deterministic else {}
        label = "deterministic on" if deterministic else "deterministic off"
        try:
            grouped = bench.config(f"grouped-{int(deterministic)}", train=extra)
            alone = bench.config(f"alone-{int(deterministic)}", train={**extra, "max_group_size": 1})
        except ConfigError:
            parts.append(f"{label}: skipped, train.deterministic not available in this version")
            details[label] = SKIPPED
            continue
        difference = max_difference(bench.sweep_metrics(grouped), bench.sweep_metrics(alone))
        # float32 rounding of other kernels (a vmapped conv is a grouped conv); CUDA without
        # deterministic kernels may drift further. `bitwise` records whether README's promise held.
        tolerance = 1e-5 if deterministic or bench.device.type != "cuda" else 2e-2
        ok = ok and difference <= tolerance
        details[label] = {"max_abs_difference": difference, "bitwise": difference == 0.0, "tolerance": tolerance}
        parts.append(f"{label}: max |group - alone| {difference:.3g} (allowed {tolerance:g})")
    return verdict(ok, "; ".join(parts), **details)


def check_member_bytes(bench: Bench) -> Outcome:
    """member_bytes (the planner's estimate) against the measured peak of one more member."""
    needs_cuda(bench.device)
    config = bench.config("member-bytes")
    data = bench.data
    small = Dataset(data.name, data.train_x[:bench.sizes.batch * 8], data.train_y[:bench.sizes.batch * 8],
                    data.test_x[:bench.sizes.batch], data.test_y[:bench.sizes.batch], data.classes, data.source, data.pad_value)
    teacher = bench.teacher_model()
    train = predict_logits(teacher, small.train_x, bench.sizes.batch, bench.device)
    test = predict_logits(teacher, small.test_x, bench.sizes.batch, bench.device)
    signal = TeacherSignal(test_logits=test[None], train_logits=train[None])
    steps = engine_loop.steps_per_epoch(len(small.train_y), bench.sizes.batch)
    probe = build_model(config.student, data.input_shape, data.num_classes).to(bench.device)
    estimate = member_bytes(probe, data.train_x[:bench.sizes.batch], 1) / MiB
    del probe
    counts, peaks = (1, 5), []
    for count in counts:
        chosen = members([4] * count, 0, steps, baseline=False)
        peaks.append(train_group(bench, config, chosen, signal, data=small)["peak_mib"])
    measured = (peaks[1] - peaks[0]) / (counts[1] - counts[0])
    ok = measured <= estimate / MEMORY_SHARE
    return verdict(ok, f"estimate {estimate:.1f} MiB per member, measured {measured:.1f} MiB "
                       f"(estimate/measured {estimate / measured if measured > 0 else float('inf'):.2f}; "
                       f"the planner allows up to {1 / MEMORY_SHARE:.0f}x)",
                   estimate_mib=estimate, measured_mib=measured, peaks_mib=dict(zip(map(str, counts), peaks)))


def event_timed_ms(model: nn.Module, batch: torch.Tensor, device: torch.device, repeats: int = 15) -> float:
    """Median forward time by CUDA events (perf_counter on CPU): an independent clock for latency_ms."""
    timings = []
    with torch.no_grad():
        for index in range(repeats + 3):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(batch)
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                began = time.perf_counter()
                model(batch)
                elapsed = 1000 * (time.perf_counter() - began)
            if index >= 3:
                timings.append(elapsed)
    return statistics.median(timings)


def check_footprint(bench: Bench) -> Outcome:
    config = bench.config("footprint")
    data, device = bench.data, bench.device
    student = build_model(config.student, data.input_shape, data.num_classes).to(device).eval()
    teacher = bench.teacher_model()
    batch = data.train_x[:bench.sizes.batch]
    fields = student_and_teacher(student, [teacher], batch, device)
    independent = {"student": event_timed_ms(student, batch, device), "teacher": event_timed_ms(teacher, batch, device)}
    ratios = {role: fields[f"{role}_latency_ms"] / independent[role] for role in independent}
    finite = all(math.isfinite(fields[f"{r}_latency_ms"]) and fields[f"{r}_latency_ms"] > 0 for r in independent)
    ok = finite
    if device.type == "cuda":  # on a shared CPU the timings are too noisy to compare
        ok = ok and all(0.5 <= r <= 2.0 for r in ratios.values()) and fields["teacher_latency_ms"] > fields["student_latency_ms"]
    return verdict(ok, f"latency_ms student {fields['student_latency_ms']:.3f}, teacher {fields['teacher_latency_ms']:.3f} "
                       f"(event-timed {independent['student']:.3f}, {independent['teacher']:.3f}) at batch {len(batch)}",
                   fields=fields, independent_ms=independent, ratios=ratios)


# -- the CLI end to end --


@dataclass
class Ran:
    code: int
    output: str


def run_kdtemp(bench: Bench, args: list[str], interrupt_when: Callable[[], bool] | None = None,
               timeout_s: float = 240) -> Ran:
    """`kdtemp ARGS` as a user runs it, sent Ctrl-C once `interrupt_when()` holds.

    On CUDA a fresh process (its own CUDA context); on CPU in this process, which saves the interpreter's
    start-up (same `kdtemp.cli.app.main`, same SIGINT handler).
    """
    if bench.device.type == "cuda":
        log = bench.work / f"kdtemp-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as handle:
            process = subprocess.Popen([sys.executable, "-m", "kdtemp", *args], stdout=handle, stderr=subprocess.STDOUT, env=env)
            deadline, sent = time.monotonic() + timeout_s, False
            while process.poll() is None:
                if interrupt_when is not None and not sent and interrupt_when():
                    process.send_signal(signal.SIGINT)
                    sent = True
                if time.monotonic() > deadline:
                    process.kill()
                    raise TimeoutError(f"kdtemp {' '.join(args)} ran past {timeout_s:.0f}s")
                time.sleep(0.02)
        return Ran(process.returncode, log.read_text())
    from kdtemp.cli.app import main

    done = threading.Event()

    def watch():
        while not done.is_set():
            if interrupt_when is not None and interrupt_when():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    captured = io.StringIO()
    saved_argv = sys.argv
    sys.argv = ["kdtemp", *args]
    watcher.start()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    finally:
        done.set()
        watcher.join()
        sys.argv = saved_argv
    return Ran(code, captured.getvalue())


def check_sweep_interrupt_resume(bench: Bench) -> Outcome:
    """`kdtemp sweep --device ...` stopped by Ctrl-C after its first epoch, then run again: it resumes."""
    epochs = 3
    path = bench.config_file("end-to-end", student={"epochs": epochs})
    config = load_config(path)
    bench.place_teacher(config)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    args = ["sweep", "--config", str(path), "--device", str(bench.device)]
    first = run_kdtemp(bench, args, interrupt_when=lambda: any(layout.students_dir.glob("*/checkpoint.pt")))
    checkpoints = sorted(p.parent.name for p in layout.students_dir.glob("*/checkpoint.pt"))
    second = run_kdtemp(bench, args)
    run_dirs = layout.run_dirs()
    statuses = {d.name: getattr(read_summary(d), "status", None) for d in run_dirs}
    epochs_seen = {d.name: [int(row["epoch"]) for row in read_csv_rows(RunFiles(d).metrics)] for d in run_dirs}
    resumed = re.search(r"(\d+) resumed", second.output)
    resumed_count = int(resumed[1]) if resumed else 0
    bench.results["end_to_end"] = path if all(s == Status.COMPLETED for s in statuses.values()) else None
    ok = (first.code == 130 and bool(checkpoints) and second.code == 0 and bool(statuses)
          and all(s == Status.COMPLETED for s in statuses.values())
          and all(seen == list(range(epochs)) for seen in epochs_seen.values()) and resumed_count >= 1)
    return verdict(ok, f"first exit {first.code} with {len(checkpoints)} checkpoint(s); second exit {second.code}, "
                       f"{resumed_count} resumed, {sum(s == Status.COMPLETED for s in statuses.values())}/{len(statuses)} completed",
                   first_exit=first.code, second_exit=second.code, checkpoints=checkpoints, statuses=statuses,
                   epochs=epochs_seen, first_output=first.output[-1500:], second_output=second.output[-1500:])


def load_on_cpu(config_path: str, student_path: str, teacher_path: str) -> dict:
    """Load both model.pt files through kdtemp's loader into fresh modules and run a forward pass on CPU."""
    config = load_config(Path(config_path))
    result = {"cuda_visible": torch.cuda.is_available()}
    for role, path, spec in (("student", student_path, config.student), ("teacher", teacher_path, config.teacher)):
        checkpoint = load_checkpoint(Path(path), f"{role} model")
        model = build_model(spec, (3, 32, 32), 100)
        model.load_state_dict(checkpoint["state_dict"])
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, 3, 32, 32))
        result[role] = {"finite": bool(torch.isfinite(logits).all()), "shape": list(logits.shape)}
    return result


def check_model_pt_on_cpu(bench: Bench) -> Outcome:
    path = bench.results.get("end_to_end")
    if path is None:
        raise Skip("needs the end-to-end sweep's model.pt files (that check did not complete)")
    config = load_config(path)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    student = layout.run_dirs()[0] / "model.pt"
    stored = sorted({str(t.device) for t in torch.load(student, weights_only=True)["state_dict"].values()})
    arguments = [str(path), str(student), str(layout.teacher_model)]
    if bench.device.type == "cuda":
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from gpu_check import load_on_cpu; "
                "print(json.dumps(load_on_cpu(*sys.argv[2:])))")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), *arguments],
                              capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            return verdict(False, f"loading without CUDA failed: {done.stderr.strip().splitlines()[-1]}", stderr=done.stderr[-2000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        result = load_on_cpu(*arguments)
    ok = not result["cuda_visible"] and all(result[r]["finite"] and result[r]["shape"] == [2, 100] for r in ("student", "teacher"))
    return verdict(ok, f"student and teacher model.pt loaded and ran with no CUDA visible; tensors stored on {stored}",
                   stored_on=stored, **result)


def check_fashion_mnist(bench: Bench) -> Outcome:
    """A short real-data sweep: the teacher and the students must learn (accuracy well above chance)."""
    needs_cuda(bench.device)
    if not any(d.is_dir() for d in SYSTEM_FASHION_MNIST_DIRS):
        raise Skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    tree = merged(yaml.safe_load((ROOT / "configs" / "fashion-mnist.yaml").read_text()), {
        "name": "fashion-check", "runs_dir": str(bench.work / "runs"), "device": str(bench.device),
        "data": {"root": str(bench.work / "data"), "download": False}, "teacher": {"epochs": 2}, "student": {"epochs": 2},
        "kd": {"temperatures": [1, 4], "seeds": [0]}})
    path = bench.work / "fashion-check.yaml"
    path.write_text(yaml.safe_dump(tree))
    config = load_config(path)
    teacher = [r for r in train_teacher(config) if isinstance(r, TeacherResult)][-1]
    result = sweep(config)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    finals = {d.name: float(read_csv_rows(RunFiles(d).metrics)[-1]["test_acc"]) for d in layout.run_dirs()}
    ok = teacher.test_acc > 0.8 and not result.failed and min(finals.values()) > 0.7
    return verdict(ok, f"teacher {teacher.test_acc:.1%}, students {', '.join(f'{a:.1%}' for a in finals.values())}",
                   teacher_acc=teacher.test_acc, students=finals)


CHECKS: list[tuple[str, Callable[[Bench], Outcome]]] = [
    ("versions", check_versions),
    ("teacher_amp_channels_last", check_teacher),
    ("cached_pass_amp_vs_fp32", check_cached_pass),
    ("group_augment_amp_on", lambda b: check_group_augment(b, True)),
    ("group_augment_amp_off", lambda b: check_group_augment(b, False)),
    ("multi_seed_group", check_multi_seed),
    ("hints_augment_two_groups", check_hints_two_groups),
    ("sync_free_steps", check_sync_free_steps),
    ("member_bytes_vs_peak", check_member_bytes),
    ("footprint_latency", check_footprint),
    ("sweep_interrupt_resume", check_sweep_interrupt_resume),
    ("model_pt_on_cpu", check_model_pt_on_cpu),
    ("group_vs_alone", check_group_vs_alone),
    ("fashion_mnist", check_fashion_mnist),
]


def restore_defaults() -> None:
    """Undo what a check may leave behind: debug modes, deterministic flags, cached memory."""
    if torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)
    if torch.cuda.is_available():  # touching cuDNN's flags loads cuDNN: seconds, on CPU for nothing
        torch.backends.cudnn.deterministic = False
        torch.cuda.set_sync_debug_mode(0)
        gc.collect()
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out("gpu_check"), help="folder for gpu_check.json ($OUT if set)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (tiny sizes; CUDA-only checks skipped)")
    parser.add_argument("--budget-s", type=float, default=420, help="checks still waiting after this many seconds are skipped")
    parser.add_argument("--only", help="comma-separated check names to run (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped (no CUDA device)")
        return 0
    sizes = CUDA_SIZES if device.type == "cuda" else CPU_SIZES
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: threads only add contention
    chosen = CHECKS if not args.only else [(n, c) for n, c in CHECKS if n in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kdtemp-gpu-check-"))
    checklist = Checklist("gpu_check", args.out / "gpu_check.json",
                          {"device": str(device), "sizes": sizes.__dict__, "argv": sys.argv[1:]}, args.budget_s, restore_defaults)
    try:
        bench = Bench(device, sizes, work)
        for name, check in chosen:
            checklist.run(name, lambda: check(bench))
        checklist.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(checklist.table())
    print(f"\n{checklist.path}")
    return 1 if checklist.broken else 0


if __name__ == "__main__":
    sys.exit(main())
