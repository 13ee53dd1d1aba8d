"""`kdtemp search` (halving) against the full grid it searches: student-epochs, wall time, and whether the
search names the grid's answer.

On MNIST-1D (configs/default.yaml, 27 student epochs: rungs at 3 and 9) and on Fashion-MNIST
(configs/fashion-mnist.yaml, 9 epochs: rungs at 1 and 3), the grid is 5 T (1, 2, 4, 8, 16) x 3 schedules
(constant, linear, cosine) x 3 seeds, plus no-KD; linear and cosine at T = 1 are constant T = 1, so both
the sweep and the search train 13 cells. The rungs are the search's defaults (a ninth and a third of the
epochs). Each repeat takes other student seeds (3r, 3r+1, 3r+2), so the grid's answer changes
between repeats; in each, one `kdtemp sweep` and one `kdtemp search` run in fresh experiment folders in
this process, with the same trained teacher and its cached logits copied in. Printed per repeat: both
wall times and their ratio, both student-epoch counts and their ratio, the grid's best cell on mean
validation accuracy, the search's chosen cell, and the gap between their grid validation accuracies
(the search's cell is looked up in the grid's own runs). Same answer = gap within 1 point. Last, the
answer's noise floor: how often another repeat's full grid (every cell trained, at other seeds) names a
cell within 1 point of a grid's best, in that grid's accuracies. Where two full grids disagree, the
validation split cannot tell the top cells apart at 1 point; --val-fraction holds out more.

    python benchmarks/search_speed.py                         # 5 repeats per dataset, ~30 min on 2 cores
    python benchmarks/search_speed.py --datasets mnist1d --repeats 10 --val-fraction 0.25   # 1000 val samples
    python benchmarks/search_speed.py --datasets mnist1d --repeats 2 --epochs 9   # a quick look
    python benchmarks/search_speed.py --curves curves.json   # also keep every grid's validation curves

The curves (mean validation accuracy per cell and epoch of each repeat's grid) let a pruning rule be
tried offline: the search's survivors train exactly as in the grid, so the grid's curves decide.

This is a benchmark, not a test: it trains real models and prints its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from kdtemp.engine.threads import busy_cpus, wait_environment

# as the `kdtemp` command does, before torch loads OpenMP: on a busy machine idle threads wait passively
os.environ.update(wait_environment(os.environ, busy_cpus()))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from kdtemp.config.loading import load_config  # noqa: E402
from kdtemp.events import ignore  # noqa: E402
from kdtemp.report.results import load_results  # noqa: E402
from kdtemp.search.runner import search  # noqa: E402
from kdtemp.store.layout import ExperimentLayout  # noqa: E402
from kdtemp.sweep.experiment import prepare_experiment  # noqa: E402
from kdtemp.sweep.runner import sweep  # noqa: E402
from kdtemp.teachers.loading import all_teacher_logits  # noqa: E402
from kdtemp.teachers.training import train_teacher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "mnist1d": ROOT / "configs" / "default.yaml",
    "fashion-mnist": ROOT / "configs" / "fashion-mnist.yaml",
}
TEMPERATURES = [1, 2, 4, 8, 16]
SCHEDULES = ["constant", "linear", "cosine"]
SAME_ANSWER_POINTS = 1.0
EPOCHS = {"mnist1d": 27, "fashion-mnist": 9}


def write_config(
    workdir: Path, dataset: str, name: str, seeds: list[int], epochs: int, val_fraction: float | None
) -> Path:
    tree = yaml.safe_load(CONFIGS[dataset].read_text()) or {}
    tree.update(name=name, runs_dir=str(workdir / "runs"), device="cpu")
    tree.setdefault("data", {})["root"] = str(workdir / "data")
    if val_fraction is not None:
        tree["data"]["val_fraction"] = val_fraction
    tree.setdefault("student", {})["epochs"] = epochs
    tree["kd"] = {**tree.get("kd", {}), "temperatures": TEMPERATURES, "schedules": SCHEDULES, "seeds": seeds}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def grid_curves(root: Path) -> dict[str, list[float]]:
    """Mean validation accuracy per epoch of each (schedule, t0) cell of a swept grid, no-KD included."""
    frames = [pd.read_csv(path) for path in sorted((root / "students").glob("*/metrics.csv"))]
    rows = pd.concat(frames, ignore_index=True)
    means = rows.groupby(["schedule", "t0", "epoch"], dropna=False)["val_acc"].mean()
    curves: dict[str, list[float]] = {}
    for (schedule, t0, _), value in means.items():
        curves.setdefault(f"{schedule} T={t0:g}", []).append(float(value))
    return curves


def grid_cells(root: Path) -> pd.Series:
    """Mean last-epoch validation accuracy per (schedule, t0) of a swept grid."""
    final = load_results(root).final
    grid = final[(final["schedule"] != "none") & final["same_as"].isna()]
    return grid.groupby(["schedule", "t0"])["val_acc"].mean()


def one_repeat(
    workdir: Path, dataset: str, teacher_root: Path, repeat: int, epochs: int, val_fraction: float | None
) -> dict:
    seeds = [3 * repeat, 3 * repeat + 1, 3 * repeat + 2]
    timings, roots = {}, {}
    for job in ("grid", "search"):
        path = write_config(workdir, dataset, f"{dataset}-{job}-{repeat}", seeds, epochs, val_fraction)
        config = load_config(path)
        root = ExperimentLayout.of(config.runs_dir, config.name).root
        root.mkdir(parents=True, exist_ok=True)
        for folder in ("teacher", "cache"):  # the same teacher and cached logits: training is what is timed
            shutil.copytree(teacher_root / folder, root / folder)
        started = time.perf_counter()
        result = sweep(config) if job == "grid" else search(config)
        timings[job] = time.perf_counter() - started
        roots[job] = (root, result)
    cells = grid_cells(roots["grid"][0])
    best = cells.idxmax()
    outcome = roots["search"][1]
    chosen = (outcome.chosen["schedule"], float(outcome.chosen["t0"]))
    gap = 100 * (cells[best] - cells[chosen])
    return {
        "dataset": dataset,
        "repeat": repeat,
        "epochs_each": epochs,
        "grid_s": timings["grid"],
        "search_s": timings["search"],
        "wall": timings["search"] / timings["grid"],
        "grid_epochs": outcome.grid_student_epochs,
        "search_epochs": outcome.spent_student_epochs,
        "epochs": outcome.spent_student_epochs / outcome.grid_student_epochs,
        "grid_best": f"{best[0]} T={best[1]:g} ({100 * cells[best]:.1f}%)",
        "search_chose": f"{chosen[0]} T={chosen[1]:g} ({100 * cells[chosen]:.1f}%)",
        "gap_points": gap,
        "same": gap <= SAME_ANSWER_POINTS + 1e-9,  # 1.00 printed is within 1 point
        "curves": grid_curves(roots["grid"][0]),
        "cells": {f"{schedule} T={t0:g}": float(value) for (schedule, t0), value in cells.items()},
    }


def grids_agree(cells_per_repeat: list[dict[str, float]]) -> tuple[int, int]:
    """The answer's noise floor: over ordered pairs of repeats (a, b), how often b's full grid names a cell
    within SAME_ANSWER_POINTS of a's best, in a's own accuracies. Another grid trains every cell at other
    seeds, so it disagrees only where a's answer is not reproducible at that resolution."""
    agree = pairs = 0
    for a, first in enumerate(cells_per_repeat):
        for b, second in enumerate(cells_per_repeat):
            if a != b:
                gap = 100 * (max(first.values()) - first[max(second, key=second.__getitem__)])
                agree += gap <= SAME_ANSWER_POINTS + 1e-9
                pairs += 1
    return agree, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="mnist1d,fashion-mnist")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: 27 for mnist1d, 9 for fashion-mnist"
    )
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="data.val_fraction of every run (default: the config's, 0.1: 400 MNIST-1D validation samples)",
    )
    parser.add_argument("--curves", type=Path, default=None, help="write each grid's validation curves here")
    args = parser.parse_args()
    print(f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'OpenMP default')}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for dataset in args.datasets.split(","):
            epochs = args.epochs or EPOCHS[dataset]
            source = write_config(workdir, dataset, f"{dataset}-teacher", [0], epochs, args.val_fraction)
            config = load_config(source)
            if args.teacher_epochs:
                config = config.model_copy(
                    update={"teacher": config.teacher.model_copy(update={"epochs": args.teacher_epochs})}
                )
            train_teacher(config)
            prepared = prepare_experiment(config)  # the teacher's logits, cached for every repeat to copy
            all_teacher_logits(prepared.teachers, prepared.data, config, prepared.device, ignore)
            teacher_root = ExperimentLayout.of(config.runs_dir, config.name).root
            for repeat in range(args.repeats):
                row = one_repeat(workdir, dataset, teacher_root, repeat, epochs, args.val_fraction)
                rows.append(row)
                print(
                    f"{dataset} repeat {repeat}: grid {row['grid_s']:.1f} s, search {row['search_s']:.1f} s "
                    f"({100 * row['wall']:.0f}%); student-epochs {row['search_epochs']}/{row['grid_epochs']} "
                    f"({100 * row['epochs']:.0f}%); grid best {row['grid_best']}, search chose "
                    f"{row['search_chose']}, gap {row['gap_points']:.2f} points",
                    flush=True,
                )
                if args.curves:  # after every repeat, so a long run keeps what it measured
                    kept = [{k: row[k] for k in ("dataset", "repeat", "grid_best", "curves")} for row in rows]
                    args.curves.write_text(json.dumps(kept, indent=1))
    table = pd.DataFrame(rows).drop(columns=["curves", "cells"])
    print()
    print("search (halving, factor 3, rungs at a ninth and a third of the epochs) against the grid:")
    shown = table.assign(
        wall=(100 * table["wall"]).round(0).astype(int).astype(str) + "%",
        epochs=(100 * table["epochs"]).round(0).astype(int).astype(str) + "%",
        grid_s=table["grid_s"].round(1),
        search_s=table["search_s"].round(1),
        gap_points=table["gap_points"].round(2),
    )
    print(shown.to_string(index=False))
    print()
    for dataset, part in table.groupby("dataset", sort=False):
        print(
            f"{dataset}: student-epochs {100 * statistics.median(part['epochs']):.0f}% of the grid's "
            f"(median), wall time {100 * statistics.median(part['wall']):.0f}% (median, max "
            f"{100 * part['wall'].max():.0f}%), same answer (within {SAME_ANSWER_POINTS:g} point) in "
            f"{int(part['same'].sum())} of {len(part)} repeats"
        )
        agree, pairs = grids_agree([row["cells"] for row in rows if row["dataset"] == dataset])
        if pairs:
            print(
                f"{dataset}: another repeat's full grid names a cell within {SAME_ANSWER_POINTS:g} point of "
                f"a grid's best in {agree} of {pairs} pairs ({100 * agree / pairs:.0f}%)"
            )


if __name__ == "__main__":
    main()
