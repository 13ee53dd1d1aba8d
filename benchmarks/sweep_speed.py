"""How fast is a kdtemp sweep? The same Fashion-MNIST grid trained three ways in one process.

    (a) the PyTorch KD tutorial's loop: a DataLoader over torchvision's dataset, the teacher's forward
        on every batch, one run after another;
    (b) kdtemp with its runs in sequence (groups of one student);
    (c) kdtemp's grouped engine (the students of a seed stacked into one model).

CNN teacher (configs/fashion-mnist.yaml), MLP 784-64-10 student, T in {1, 3, 5, 10}, seeds 0-2, 2 epochs,
no baseline runs. It prints wall time, runs per minute, the speed-ups, each way's mean test accuracy, and
the floor: the grid's student-training FLOPs over this machine's measured matmul rate.

    python benchmarks/sweep_speed.py                 # the full comparison (about 15 minutes on 2 cores)
    python benchmarks/sweep_speed.py --seeds 0       # 4 runs only

This is a benchmark, not a test: it trains real models and prints its figures.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kdtemp.config.loading import load_config
from kdtemp.data.builtin import IDX_FILES, SYSTEM_FASHION_MNIST_DIRS
from kdtemp.data.registry import load_dataset
from kdtemp.events import Note
from kdtemp.models.registry import build_model
from kdtemp.store.files import load_checkpoint
from kdtemp.store.layout import ExperimentLayout
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.training import train_teacher

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "fashion-mnist.yaml"
MEAN, STD = 0.2860, 0.3530


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine, in FLOP/s (best of a few tries)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def linear_macs(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def experiment_config(workdir: Path, name: str, temps, seeds, epochs: int, group_size: int | None):
    tree = yaml.safe_load(CONFIG.read_text())
    tree.update(name=name, runs_dir=str(workdir / "runs"), device="cpu")
    tree["data"]["root"] = str(workdir / "data")
    tree["student"]["epochs"] = epochs
    tree["kd"] = {**tree.get("kd", {}), "temperatures": list(temps), "seeds": list(seeds), "baseline": False}
    tree["train"] = {"max_group_size": group_size}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path)


def make_teacher(workdir: Path, epochs: int) -> Path:
    config = experiment_config(workdir, "teacher-source", [1], [0], 1, None)
    config = config.model_copy(update={"teacher": config.teacher.model_copy(update={"epochs": epochs})})
    train_teacher(config)
    return ExperimentLayout.of(config.runs_dir, config.name).teacher_model


def kdtemp_way(workdir: Path, name: str, teacher: Path, temps, seeds, epochs: int, group_size: int | None) -> dict:
    """One `kdtemp sweep`, end to end, from a fresh runs dir (teacher copied in, no logit cache)."""
    config = experiment_config(workdir, name, temps, seeds, epochs, group_size)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    layout.teacher_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(teacher, layout.teacher_model)
    marks = {"start": time.perf_counter()}

    def mark(event) -> None:
        if isinstance(event, Note) and event.text.startswith("computing teacher logits"):
            marks["logits"] = time.perf_counter()
        elif isinstance(event, Note) and "runs planned" in event.text:
            marks["planned"] = time.perf_counter()
        elif not isinstance(event, Note) and "train" not in marks:
            marks["train"] = time.perf_counter()

    result = sweep(config, emit=mark)
    wall = time.perf_counter() - marks["start"]
    frames = [pd.read_csv(d / "metrics.csv") for d in layout.run_dirs()]
    metrics = pd.concat(frames, ignore_index=True)
    final = metrics.groupby("run_id").tail(1)
    # the members of a group share each epoch's wall time (the same float): count it once per group
    training = float(metrics.drop_duplicates(["epoch", "epoch_seconds"])["epoch_seconds"].sum())
    return {
        "wall": wall, "runs": result.completed, "acc": float(final["test_acc"].mean()),
        "training": training,
        "data": marks.get("planned", marks["start"]) - marks["start"],
        "logits": marks.get("train", marks["start"]) - marks.get("logits", marks.get("train", marks["start"])),
    }


def torchvision_root(workdir: Path) -> Path:
    """torchvision's FashionMNIST layout (uncompressed idx files), made from Debian's copy: setup, not timed."""
    source = next((d for d in SYSTEM_FASHION_MNIST_DIRS if d.is_dir()), None)
    if source is None:
        raise SystemExit("install Debian's dataset-fashion-mnist first: apt-get install dataset-fashion-mnist")
    raw = workdir / "torchvision" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES.values():
        with gzip.open(source / f"{stem}.gz", "rb") as packed:
            (raw / stem).write_bytes(packed.read())
    return workdir / "torchvision"


def tutorial_way(workdir: Path, teacher_path: Path, temps, seeds, epochs: int, first: int) -> dict:
    """The PyTorch KD tutorial's loop (DataLoader, teacher forward per batch), with kdtemp's hyperparameters."""
    import torchvision
    from torchvision import transforms

    config = experiment_config(workdir, "tutorial", temps, seeds, epochs, None)
    start = time.perf_counter()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    root = torchvision_root(workdir)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    train_set = torchvision.datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
    test_set = torchvision.datasets.FashionMNIST(str(root), train=False, transform=transform, download=False)
    checkpoint = load_checkpoint(teacher_path, "teacher")
    teacher = build_model(config.teacher, (1, 28, 28), 10)
    teacher.load_state_dict(checkpoint["state_dict"])
    teacher.eval()
    spec, alpha = config.student, config.kd.alpha
    accuracies, first_seconds = [], None
    runs = [(t, s) for s in seeds for t in temps]
    for number, (temperature, seed) in enumerate(runs, 1):
        torch.manual_seed(seed)
        student = build_model(spec, (1, 28, 28), 10)
        loader = torch.utils.data.DataLoader(train_set, batch_size=config.student_batch_size(), shuffle=True, num_workers=2)
        optimizer = torch.optim.SGD(student.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=True,
                                    weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
        student.train()
        for _ in range(epochs):
            for inputs, labels in loader:
                optimizer.zero_grad()
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                student_logits = student(inputs)
                soft_targets = F.softmax(teacher_logits / temperature, dim=-1)
                soft_prob = F.log_softmax(student_logits / temperature, dim=-1)
                soft_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size(0) * temperature**2
                label_loss = F.cross_entropy(student_logits, labels)
                loss = alpha * soft_loss + (1 - alpha) * label_loss
                loss.backward()
                optimizer.step()
                scheduler.step()
        student.eval()
        correct = 0
        with torch.no_grad():
            for inputs, labels in torch.utils.data.DataLoader(test_set, batch_size=1000, num_workers=2):
                correct += int((student(inputs).argmax(-1) == labels).sum())
        accuracies.append(correct / len(test_set))
        if number == first:
            first_seconds = time.perf_counter() - start
    wall = time.perf_counter() - start
    return {"wall": wall, "runs": len(runs), "acc": sum(accuracies) / len(accuracies), "setup": setup_seconds,
            "first_wall": first_seconds, "first_acc": sum(accuracies[:first]) / first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temps", default="1,3,5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=2, help="teacher training (setup, not timed)")
    parser.add_argument("--teacher", type=Path, help="an existing Fashion-MNIST teacher model.pt to use instead")
    parser.add_argument("--skip-tutorial", action="store_true")
    args = parser.parse_args()
    temps = [float(t) for t in args.temps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    first = len(temps)  # the 4-run grid: every temperature at the first seed
    workdir = Path(tempfile.mkdtemp(prefix="kdtemp-bench-"))
    (workdir / "data").mkdir()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; workdir {workdir}")

    teacher = args.teacher or make_teacher(workdir, args.teacher_epochs)
    rate = matmul_rate()
    data = load_dataset(experiment_config(workdir, "probe", temps, seeds, args.epochs, None).data)
    student = build_model(load_config(CONFIG).student, (1, 28, 28), 10)
    grid_runs = len(temps) * len(seeds)
    flops = grid_runs * args.epochs * len(data.train_y) * 6 * linear_macs(student)
    floor = flops / rate
    print(f"matmul rate {rate / 1e9:.0f} GFLOP/s; student-training FLOPs of the {grid_runs}-run grid {flops / 1e9:.0f} GFLOP; "
          f"floor {floor:.2f} s")

    results = {}
    results["c4"] = kdtemp_way(workdir, "grouped-4", teacher, temps, seeds[:1], args.epochs, None)
    results["c"] = kdtemp_way(workdir, "grouped", teacher, temps, seeds, args.epochs, None)
    results["b"] = kdtemp_way(workdir, "sequential", teacher, temps, seeds, args.epochs, 1)
    if not args.skip_tutorial:
        results["a"] = tutorial_way(workdir, teacher, temps, seeds, args.epochs, first)

    rows = []

    def add(label, runs, wall, acc):
        rows.append((label, runs, wall, 60 * runs / wall, acc))

    if "a" in results:
        add("(a) tutorial loop, in sequence", grid_runs, results["a"]["wall"], results["a"]["acc"])
        add("(a) tutorial loop, first 4 runs", first, results["a"]["first_wall"], results["a"]["first_acc"])
    add("(b) kdtemp, runs in sequence", grid_runs, results["b"]["wall"], results["b"]["acc"])
    add("(c) kdtemp, grouped", grid_runs, results["c"]["wall"], results["c"]["acc"])
    add("(c) kdtemp, grouped, 4 runs", first, results["c4"]["wall"], results["c4"]["acc"])
    print()
    print("| way | runs | wall (s) | runs/min | mean test acc |")
    print("|---|---:|---:|---:|---:|")
    for label, runs, wall, per_minute, acc in rows:
        print(f"| {label} | {runs} | {wall:.1f} | {per_minute:.1f} | {100 * acc:.2f}% |")
    print()
    c, c4, b = results["c"], results["c4"], results["b"]
    if "a" in results:
        a = results["a"]
        print(f"speed-up, {grid_runs} runs: (a)/(c) = {a['wall'] / c['wall']:.1f}x, (a)/(b) = {a['wall'] / b['wall']:.1f}x")
        print(f"speed-up, {first} runs:  (a)/(c) = {a['first_wall'] / c4['wall']:.1f}x   [target >= 8x, aim 20x]")
    print(f"grouping:  (b)/(c) = {b['wall'] / c['wall']:.1f}x")
    print(f"growth {first} -> {grid_runs} runs: (c) {c['wall'] / c4['wall']:.2f}x the {first}-run wall time   [target <= 2x]")
    print(f"floor: {floor:.2f} s; (c) student training {c['training']:.1f} s = {c['training'] / floor:.2f}x the floor   [target <= 3x]; "
          f"(c) end to end {c['wall']:.1f} s = {c['wall'] / floor:.1f}x")
    rest = c["wall"] - c["training"] - c["data"] - c["logits"]
    print(f"where (c)'s {c['wall']:.1f} s go: data loading and checks {c['data']:.1f} s, teacher logits (one pass) "
          f"{c['logits']:.1f} s, student training incl. per-epoch evaluation {c['training']:.1f} s, files and the rest {rest:.1f} s")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
