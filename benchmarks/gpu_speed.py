"""How fast is the CIFAR-100 grid users run, on one GPU? Three ways in one process, same steps.

The grid: ResNet-32x4 teacher -> ResNet-8x4 students, T = 1, 2, 4, 8 x seeds 0, 1, 2, plus one no-KD
baseline per seed (15 runs), augmentation on, batch 64, on synthetic CIFAR-100-shaped data
(benchmarks/synthetic.py; nothing to download) for a fixed number of steps per run:

    (a) RepDistiller-style: one run after another, a torchvision DataLoader (RandomCrop + flip on CPU
        workers), the teacher's forward on every batch, a plain fp32 PyTorch loop with `loss.item()`
        per step, a test pass at the end (baselines skip the teacher, as train_vanilla does);
    (b) kdtemp's engine, runs in sequence (StudentGroup of one member, as sweep with max_group_size 1);
    (c) kdtemp's engine, grouped as sweep groups them (with augmentation: one group of 5 per seed).

It prints images/s per student, wall time, peak memory and ms per step for each way, (c)'s throughput
per student at K = 1, 5 and 15, and a profile of (c)'s step (top kernels, host vs device time).
Target on one H100: (c) >= 5x faster than (a) over the 15 runs.

    python benchmarks/gpu_speed.py                      # CUDA, 200 steps per run (a few minutes, estimated: not yet run on a GPU)
    python benchmarks/gpu_speed.py --quick              # fewer steps
    python benchmarks/gpu_speed.py --device cpu --quick # the CPU fallback: ResNet-8s, 4 runs, 1 step each

Without CUDA it runs the CPU fallback. Results go to $OUT/gpu_speed.json (or runs/gpu_speed/), rewritten
after each part, so a cut-off run keeps what it reached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from checklist import PASS, Checklist, Outcome, Skip, default_out, verdict
from measuring import ALPHA, kd_member, peak_mib, reset_peak, synchronize
from synthetic import synthetic_cifar100
from torch import nn

from kdtemp.config.loading import load_config
from kdtemp.config.schema import ExperimentConfig
from kdtemp.data.builtin import NORMALISATION
from kdtemp.data.dataset import Dataset
from kdtemp.engine.evaluation import predict_logits
from kdtemp.engine.job_setup import loop_settings, wants_channels_last
from kdtemp.engine.loop import EpochDone, Member, TeacherSignal
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.registry import build_model


@dataclass(frozen=True)
class Grid:
    teacher: str
    student: str
    temperatures: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    batch: int
    test: int
    scaling: tuple[int, ...]
    """Group sizes K whose per-student throughput is measured."""
    profile_steps: int
    workers: int


def grid_for(device: torch.device, steps: int | None, quick: bool, batch: int) -> Grid:
    if device.type == "cuda":
        return Grid("resnet32x4", "resnet8x4", (1, 2, 4, 8), (0, 1, 2), steps or (30 if quick else 200), batch,
                    1000, (1, 5, 15), 10, min(8, os.cpu_count() or 1))
    return Grid("resnet8", "resnet8", (4,), (0, 1), steps or 1, min(batch, 8), 8, (1, 2), 1, 0)


def experiment(grid: Grid, device: torch.device, work: Path) -> ExperimentConfig:
    """The config the engine reads its settings from: SGD 0.05, momentum 0.9, wd 5e-4, cosine, 1 epoch."""
    tree = {"name": "gpu-speed", "runs_dir": str(work), "device": str(device),
            "data": {"dataset": "cifar100", "batch_size": grid.batch, "eval_batch_size": 500, "augment": True},
            "teacher": {"arch": grid.teacher}, "student": {"arch": grid.student, "epochs": 1},
            "kd": {"alpha": ALPHA, "temperatures": list(grid.temperatures), "seeds": list(grid.seeds)}}
    path = work / "gpu-speed.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path)


def runs_of(grid: Grid) -> list[tuple[float | None, int]]:
    """(temperature or None for the baseline, seed), seed by seed: the 15 runs."""
    return [(t, seed) for seed in grid.seeds for t in (*grid.temperatures, None)]


def start_measure(device: torch.device) -> float:
    reset_peak(device)
    synchronize(device)
    return time.perf_counter()


def measured(device: torch.device, started: float, grid: Grid, runs: int, steps: int, students_per_step: int) -> dict:
    """Wall time; images/s per student (each run sees grid.steps batches); ms per optimiser step; peak memory."""
    synchronize(device)
    wall = time.perf_counter() - started
    return {"runs": runs, "wall_s": wall, "steps": steps, "students_per_step": students_per_step,
            "ms_per_step": 1000 * wall / steps, "images_per_s_per_student": runs * grid.steps * grid.batch / wall,
            "peak_mib": peak_mib(device)}


# --- (a) RepDistiller-style --------------------------------------------------------------------------


class CifarImages(torch.utils.data.Dataset):
    """uint8 CHW arrays served as PIL images through torchvision transforms, as torchvision's CIFAR100 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """RepDistiller's DistillKL: KL(p_t^T || p_s^T) summed, times T^2, over the batch (Hinton et al. 2015)."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


def repdistiller_way(grid: Grid, config: ExperimentConfig, teacher: nn.Module, train: CifarImages, test: CifarImages,
                     device: torch.device, runs: list) -> dict:
    cuda = device.type == "cuda"
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # RepDistiller sets it
    spec = config.student
    try:
        started = start_measure(device)
        accuracies = []
        for temperature, seed in runs:
            torch.manual_seed(seed)
            student = build_model(spec, (3, 32, 32), 100).to(device)
            optimizer = torch.optim.SGD(student.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
            loader = torch.utils.data.DataLoader(train, batch_size=grid.batch, shuffle=True, num_workers=grid.workers, pin_memory=cuda)
            student.train()
            losses = []
            for inputs, targets in loader:
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                logits = student(inputs)
                loss = F.cross_entropy(logits, targets)
                if temperature is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs)
                    loss = (1 - ALPHA) * loss + ALPHA * distill_kl(logits, teacher_logits, temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            student.eval()
            correct = 0
            with torch.no_grad():
                for inputs, targets in torch.utils.data.DataLoader(test, batch_size=100, num_workers=grid.workers, pin_memory=cuda):
                    correct += (student(inputs.to(device)).argmax(1) == targets.to(device)).sum().item()
            accuracies.append(correct / len(test))
        result = measured(device, started, grid, len(runs), len(runs) * grid.steps, 1)
        return {**result, "mean_test_acc": statistics.fmean(accuracies)}
    finally:
        torch.backends.cudnn.benchmark = benchmark


# --- (b), (c) kdtemp's engine --------------------------------------------------------------------------


def build_group(config: ExperimentConfig, data: Dataset, signal: TeacherSignal, chosen: list[Member],
                device: torch.device) -> StudentGroup:
    spec = config.student
    settings = loop_settings(config, spec, chosen[0].seed, device)
    return StudentGroup(lambda: build_model(spec, data.input_shape, data.num_classes), chosen, data, signal, settings)


def run_group(group: StudentGroup) -> list:
    """Train one epoch; the last rows. The group's hooks (hints) end with it."""
    with group:
        return [event.metrics for event in group.run() if isinstance(event, EpochDone)][-1]


def train_group(config: ExperimentConfig, data: Dataset, signal: TeacherSignal, chosen: list[Member], device: torch.device) -> list:
    return run_group(build_group(config, data, signal, chosen, device))


def teacher_signal(config: ExperimentConfig, data: Dataset, teacher: nn.Module, device: torch.device) -> TeacherSignal:
    """The teacher on every batch (augmentation), and its test logits computed once (a sweep caches them)."""
    test = predict_logits(teacher, data.test_x, config.data.eval_batch_size, device, wants_channels_last(teacher, device))
    return TeacherSignal(test_logits=test[None], networks=(teacher,))


def kdtemp_way(grid: Grid, config: ExperimentConfig, data: Dataset, teacher: nn.Module, device: torch.device,
               groups: list[list[tuple[float | None, int]]]) -> dict:
    started = start_measure(device)
    signal = teacher_signal(config, data, teacher, device)
    accuracies = []
    for runs in groups:
        rows = train_group(config, data, signal, [kd_member(t, seed, grid.steps) for t, seed in runs], device)
        accuracies += [row["test_acc"] for row in rows]
    result = measured(device, started, grid, sum(map(len, groups)), len(groups) * grid.steps, max(map(len, groups)))
    return {**result, "groups": len(groups), "mean_test_acc": statistics.fmean(accuracies)}


def scaling(grid: Grid, config: ExperimentConfig, data: Dataset, teacher: nn.Module, device: torch.device) -> dict:
    """Per-student throughput of one seed's group at each K (temperatures cycled, a baseline every fifth)."""
    signal = teacher_signal(config, data, teacher, device)
    pattern = (*grid.temperatures, None)
    result = {}
    for k in grid.scaling:
        chosen = [kd_member(pattern[i % len(pattern)], 0, grid.steps) for i in range(k)]
        started = start_measure(device)
        train_group(config, data, signal, chosen, device)
        result[str(k)] = measured(device, started, grid, 1, grid.steps, k)
    return result


def profile_group(grid: Grid, config: ExperimentConfig, data: Dataset, teacher: nn.Module, device: torch.device) -> dict:
    """torch.profiler over (c)'s step: one seed's group for a few steps (and its one-batch test pass), after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    count = grid.profile_steps * grid.batch
    small = Dataset(data.name, data.train_x[:count], data.train_y[:count], data.test_x[:grid.batch], data.test_y[:grid.batch],
                    data.classes, data.source, data.pad_value)
    signal = teacher_signal(config, small, teacher, device)
    chosen = [kd_member(t, 0, grid.profile_steps) for t in (*grid.temperatures, None)]
    train_group(config, small, signal, chosen, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    group = build_group(config, small, signal, chosen, device)
    started = start_measure(device)
    with profile(activities=activities) as prof:
        run_group(group)
        synchronize(device)
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    cuda = device.type == "cuda"
    # self times: each microsecond counted once, kernels under their own names, host work under its ops
    device_key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    host_us = sum(a.self_cpu_time_total for a in averages)
    device_us = sum(getattr(a, device_key) for a in averages) if cuda else None
    kernels = sum(1 for event in prof.events() if str(getattr(event, "device_type", "")).endswith("CUDA")) if cuda else 0
    steps = grid.profile_steps
    return {
        "members": len(chosen), "steps": steps, "wall_ms_per_step": 1000 * wall / steps,
        "host_ms_per_step": host_us / 1000 / steps, "device_ms_per_step": None if device_us is None else device_us / 1000 / steps,
        "device_busy": None if device_us is None else device_us / 1000 / (1000 * wall),
        "kernels_per_step": kernels / steps if kernels else None,
        "table": averages.table(sort_by=device_key if cuda else "self_cpu_time_total", row_limit=15),
    }


# --- running and printing ------------------------------------------------------------------------------


def summary(key: str, result: dict) -> str:
    """One line for the checklist table."""
    if key == "scaling":
        return "; ".join(f"K={k}: {r['images_per_s_per_student']:.0f} images/s per student" for k, r in result.items())
    if key == "profile":
        device_ms = "n/a" if result["device_ms_per_step"] is None else f"{result['device_ms_per_step']:.2f}"
        return (f"K={result['members']}: wall {result['wall_ms_per_step']:.2f} ms/step, host ops {result['host_ms_per_step']:.2f}, "
                f"device kernels {device_ms}")
    return (f"{result['runs']} runs in {result['wall_s']:.1f} s, {result['images_per_s_per_student']:.0f} images/s per student, "
            f"{result['ms_per_step']:.1f} ms/step")


def speed_rows(parts: dict) -> list[str]:
    lines = ["| way | runs | students per step | wall (s) | images/s per student | ms/step | peak MiB | mean test acc |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"a": "(a) RepDistiller-style, in sequence", "b": "(b) kdtemp, runs in sequence", "c": "(c) kdtemp, grouped"}
    for key, label in labels.items():
        r = parts.get(key)
        if r is None:
            lines.append(f"| {label} | - | - | - | - | - | - | - |")
            continue
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "n/a"
        lines.append(f"| {label} | {r['runs']} | {r['students_per_step']} | {r['wall_s']:.1f} | {r['images_per_s_per_student']:.0f} "
                     f"| {r['ms_per_step']:.1f} | {peak} | {100 * r['mean_test_acc']:.2f}% |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_out("gpu_speed"), help="folder for gpu_speed.json ($OUT if set)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, help="steps per run (default 200 on CUDA, 30 with --quick, 1 on CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="fewer steps (on CPU always: ResNet-8s, a 4-run grid)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: a, b, c, scaling, profile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_speed: no CUDA device; running the CPU fallback (--device cpu --quick)")
        device, args.quick = torch.device("cpu"), True
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU fallback checks the code paths, it measures nothing
    grid = grid_for(device, args.steps, args.quick, args.batch)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = experiment(grid, device, work)
    data, images, labels = synthetic_cifar100(grid.steps * grid.batch, grid.test)
    data = data.to(device)
    mean, std = NORMALISATION["cifar100"]
    from torchvision import transforms

    normalise = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_images = CifarImages(images, labels, transforms.Compose([transforms.RandomCrop(32, padding=4),
                                                                    transforms.RandomHorizontalFlip(), *normalise]))
    test_x = ((data.test_x.cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255)
    test_images = CifarImages(test_x.round().clamp(0, 255).to(torch.uint8).numpy(), data.test_y.cpu().numpy(),
                              transforms.Compose(normalise))
    torch.manual_seed(0)
    teacher = build_model(config.teacher, data.input_shape, data.num_classes).to(device).eval()
    runs = runs_of(grid)
    by_seed = [[run for run in runs if run[1] == seed] for seed in grid.seeds]
    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "grid": grid.__dict__, "runs": len(runs)}
    checklist = Checklist("gpu_speed", args.out / "gpu_speed.json", meta)
    skip = set(filter(None, args.skip.split(",")))
    parts: dict = {}

    def part(key: str, name: str, measure) -> None:
        def run() -> Outcome:
            if key in skip:
                raise Skip("left out with --skip")
            parts[key] = measure()
            return Outcome(PASS, summary(key, parts[key]), parts[key])
        checklist.run(name, run)

    # warm-up (untimed): CUDA context, cuDNN heuristics
    if device.type == "cuda":
        train_group(config, data, teacher_signal(config, data, teacher, device), [kd_member(4, 0, grid.steps)], device)
    part("a", "a_repdistiller_sequence", lambda: repdistiller_way(grid, config, teacher, train_images, test_images, device, runs))
    part("b", "b_kdtemp_sequence", lambda: kdtemp_way(grid, config, data, teacher, device, [[run] for run in runs]))
    part("c", "c_kdtemp_grouped", lambda: kdtemp_way(grid, config, data, teacher, device, by_seed))
    part("scaling", "c_throughput_by_group_size", lambda: scaling(grid, config, data, teacher, device))
    part("profile", "c_step_profile", lambda: profile_group(grid, config, data, teacher, device))

    def target() -> Outcome:
        if "a" not in parts or "c" not in parts:
            raise Skip("needs (a) and (c)")
        speedup = parts["a"]["wall_s"] / parts["c"]["wall_s"]
        if device.type != "cuda":
            raise Skip(f"the >= 5x target is for CUDA (here (a)/(c) = {speedup:.1f}x)")
        return verdict(speedup >= 5, f"(a)/(c) = {speedup:.1f}x [target >= 5x]", speedup=speedup)

    checklist.run("target_c_5x_faster_than_a", target)
    checklist.finish()

    print()
    print(f"{len(runs)} runs x {grid.steps} steps, batch {grid.batch}, {grid.teacher} -> {grid.student}, augmentation on, "
          f"{meta['device_name']}")
    print("\n".join(speed_rows(parts)))
    if "a" in parts and "c" in parts:
        b = f", (a)/(b) = {parts['a']['wall_s'] / parts['b']['wall_s']:.1f}x, (b)/(c) = {parts['b']['wall_s'] / parts['c']['wall_s']:.1f}x" \
            if "b" in parts else ""
        print(f"\nspeed-up (a)/(c) = {parts['a']['wall_s'] / parts['c']['wall_s']:.1f}x   [target >= 5x on an H100]{b}")
    if "scaling" in parts:
        print("\n| K (one seed) | images/s per student | images/s, all students | ms/step | peak MiB |\n|---:|---:|---:|---:|---:|")
        for k, r in parts["scaling"].items():
            peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "n/a"
            print(f"| {k} | {r['images_per_s_per_student']:.0f} | {int(k) * r['images_per_s_per_student']:.0f} "
                  f"| {r['ms_per_step']:.1f} | {peak} |")
    if "profile" in parts:
        p = parts["profile"]
        device_ms = "n/a" if p["device_ms_per_step"] is None else f"{p['device_ms_per_step']:.2f}"
        busy = "" if p["device_busy"] is None else f", device busy {p['device_busy']:.0%} of the wall time"
        print(f"\nprofile of (c)'s step, K={p['members']}, {p['steps']} steps: wall {p['wall_ms_per_step']:.2f} ms/step, "
              f"host ops {p['host_ms_per_step']:.2f} ms/step, device kernels {device_ms} ms/step{busy}")
        print(p["table"])
    print("\n" + checklist.table())
    print(f"\n{checklist.path}")
    return 1 if checklist.broken else 0


if __name__ == "__main__":
    sys.exit(main())
