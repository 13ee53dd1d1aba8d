"""kdtemp against torchdistill, the peer our users would pick: the same Fashion-MNIST temperature grid.

kdtemp's trained CNN teacher (configs/fashion-mnist.yaml) is loaded into both; MLP 784-64-10 students,
T = 1, 3, 5, 10, seed 0, 2 epochs, SGD (lr, momentum, weight decay of the config) with Nesterov, cosine
per step, batch 128. torchdistill's example script (examples/torchvision/image_classification.py) is not
in its wheel, so this runs what it runs through torchdistill's public API, once per T as its users do:
`torchdistill.core.distillation.get_distillation_box` with its DataLoaders over torchvision's
FashionMNIST, `WeightedSumLoss` of its `KDLoss` (torchdistill's `alpha` is the cross-entropy weight: it
gets 1 - kdtemp's alpha), then its epoch loop (pre_epoch_process, forward_process, post_forward_process,
post_epoch_process). In one process, for torchdistill too: its per-run Python start-up is not counted.

Against it, one `kdtemp sweep` of the same grid, end to end (data, checks, the teacher's one pass,
training, files). Printed: wall times, the ratio, and each T's test accuracy side by side. The 12-run
(3 seeds) and 15-cell (5 T x 3 seeds) figures time kdtemp's sweeps and estimate torchdistill's as its
measured seconds per run times the runs (its runs are independent, one after another).

    pip install -e '.[bench]'                        # torchdistill
    python benchmarks/peer_speed.py                  # one round, about 10 minutes on 2 cores
    python benchmarks/peer_speed.py --rounds 4       # kdtemp and torchdistill alternated 4 times

This is a benchmark, not a test: it trains real models and prints its figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from sweep_speed import MEAN, STD, experiment_config, kdtemp_way, make_teacher, torchvision_root

from kdtemp.models.registry import build_model
from kdtemp.store.files import load_checkpoint
from kdtemp.store.layout import ExperimentLayout


def torchdistill_run(workdir: Path, teacher_path: Path, temperature: float, seed: int, epochs: int) -> dict:
    """One torchdistill KD run at `temperature`: wall seconds and the student's test accuracy."""
    import torchvision
    import torchvision.datasets
    import torchvision.models  # noqa: F401 - torchdistill's registries read these modules when imported
    from torch.utils.data import RandomSampler, SequentialSampler
    from torchdistill.core.distillation import get_distillation_box
    from torchvision import transforms

    config = experiment_config(workdir, "torchdistill", [temperature], [seed], epochs, None)
    started = time.perf_counter()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    root = str(torchvision_root(workdir))
    train_set = torchvision.datasets.FashionMNIST(root, train=True, transform=transform, download=False)
    test_set = torchvision.datasets.FashionMNIST(root, train=False, transform=transform, download=False)
    teacher = build_model(config.teacher, (1, 28, 28), 10)
    teacher.load_state_dict(load_checkpoint(teacher_path, "teacher")["state_dict"])
    torch.manual_seed(seed)
    spec = config.student
    student = build_model(spec, (1, 28, 28), 10)
    batch = config.student_batch_size()
    steps = epochs * -(-len(train_set) // batch)
    model_config = {
        "forward_proc": "forward_batch_only",
        "sequential": [],
        "wrapper": None,
        "forward_hook": {"input": [], "output": []},
    }
    kd = {
        "student_module_path": ".",
        "student_module_io": "output",
        "teacher_module_path": ".",
        "teacher_module_io": "output",
        "temperature": temperature,
        "alpha": 1 - config.kd.alpha,
        "reduction": "batchmean",
    }
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch, "num_workers": 2},
        },
        "val_data_loader": {
            "dataset_id": "test",
            "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
            "kwargs": {"batch_size": 1000, "num_workers": 2},
        },
        "teacher": {**model_config, "requires_grad": False},
        "student": {**model_config, "adaptations": None, "frozen_modules": [], "requires_grad": True},
        "optimizer": {
            "key": "SGD",
            "kwargs": {
                "lr": spec.lr,
                "momentum": spec.momentum,
                "weight_decay": spec.weight_decay,
                "nesterov": True,
            },
        },
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}},
        },
    }
    box = get_distillation_box(
        teacher,
        student,
        {"train": train_set, "test": test_set},
        train_config,
        torch.device("cpu"),
        None,
        False,
        1.0,
    )
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        for inputs, targets, supp_dict in box.train_data_loader:
            box.post_forward_process(box.forward_process(inputs, targets, supp_dict))
        box.post_epoch_process()
    student.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in box.val_data_loader:
            correct += int((student(inputs).argmax(-1) == targets).sum())
    return {"wall": time.perf_counter() - started, "acc": correct / len(test_set)}


def kdtemp_accuracies(workdir: Path, name: str) -> dict[float, float]:
    """Last-epoch test accuracy per T of a kdtemp sweep (seed 0)."""
    layout = ExperimentLayout(workdir / "runs" / name)
    final = pd.concat(pd.read_csv(d / "metrics.csv").tail(1) for d in layout.run_dirs())
    return {float(t): float(a) for t, a in final.groupby("t0")["test_acc"].mean().items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1, help="kdtemp and torchdistill alternated this often")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=2, help="teacher training (setup, not timed)")
    parser.add_argument(
        "--teacher", type=Path, help="an existing Fashion-MNIST teacher model.pt to use instead"
    )
    args = parser.parse_args()
    import torchdistill

    temps = [1.0, 3.0, 5.0, 10.0]
    print(
        f"torch {torch.__version__}, torchdistill {torchdistill.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory(prefix="kdtemp-peer-") as scratch:
        work = Path(scratch)
        teacher = args.teacher or make_teacher(work, args.teacher_epochs)
        kdtemp_walls, peer_walls, peer_runs = [], [], []
        peer_acc: dict[float, list[float]] = {t: [] for t in temps}
        ours_acc: dict[float, list[float]] = {t: [] for t in temps}
        for round_index in range(args.rounds):
            name = f"kdtemp-{round_index}"
            kdtemp_walls.append(kdtemp_way(work, name, teacher, temps, [0], args.epochs, None)["wall"])
            for t, accuracy in kdtemp_accuracies(work, name).items():
                ours_acc[t].append(accuracy)
            started = time.perf_counter()
            for t in temps:
                run = torchdistill_run(work, teacher, t, 0, args.epochs)
                peer_runs.append(run["wall"])
                peer_acc[t].append(run["acc"])
                print(f"  torchdistill T={t:g}: {run['wall']:.1f} s, {100 * run['acc']:.2f}%", flush=True)
            peer_walls.append(time.perf_counter() - started)
            print(
                f"round {round_index + 1}: kdtemp {kdtemp_walls[-1]:.1f} s, "
                f"torchdistill {peer_walls[-1]:.1f} s",
                flush=True,
            )
        twelve = kdtemp_way(work, "kdtemp-12", teacher, temps, [0, 1, 2], args.epochs, None)["wall"]
        fifteen = kdtemp_way(
            work, "kdtemp-15", teacher, [1.0, 2.0, 3.0, 5.0, 10.0], [0, 1, 2], args.epochs, None
        )["wall"]
    ours, peer, per_run = (statistics.median(v) for v in (kdtemp_walls, peer_walls, peer_runs))
    print()
    print("| T | kdtemp test acc | torchdistill test acc | difference (points) |")
    print("|---:|---:|---:|---:|")
    for t in temps:
        a, b = statistics.mean(ours_acc[t]), statistics.mean(peer_acc[t])
        print(f"| {t:g} | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (a - b):+.2f} |")
    print()
    print("| grid | runs | kdtemp (s) | torchdistill (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| T = 1, 3, 5, 10, seed 0 (measured, median of {args.rounds}) | 4 | {ours:.1f} | {peer:.1f} | "
        f"{peer / ours:.1f}x |"
    )
    print(
        f"| 3 seeds (torchdistill estimated: {per_run:.1f} s per run) | 12 | {twelve:.1f} | "
        f"{12 * per_run:.1f} | "
        f"{12 * per_run / twelve:.1f}x |"
    )
    print(
        f"| 5 T x 3 seeds (torchdistill estimated) | 15 | {fifteen:.1f} | {15 * per_run:.1f} | "
        f"{15 * per_run / fifteen:.1f}x |"
    )


if __name__ == "__main__":
    main()
