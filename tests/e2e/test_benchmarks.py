"""The GPU scripts run their CPU fallbacks here (no GPU on this machine): every check reports a status,
none breaks, and the figures they write agree with one another.

Both scripts start at once in subprocesses (module fixture), so their interpreter start-ups overlap.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, kdtemp_env

pytestmark = pytest.mark.slow

CUDA_ONLY = {"sync_free_steps", "member_bytes_vs_peak", "fashion_mnist"}
ALL_CHECKS = {
    "versions", "teacher_amp_channels_last", "cached_pass_amp_vs_fp32", "group_augment_amp_on", "group_augment_amp_off",
    "multi_seed_group", "hints_augment_two_groups", "sync_free_steps", "group_vs_alone", "member_bytes_vs_peak",
    "footprint_latency", "sweep_interrupt_resume", "model_pt_on_cpu", "fashion_mnist",
}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Start gpu_check --device cpu and gpu_speed (default device: no CUDA here) together."""
    if torch.cuda.is_available():
        pytest.skip("these tests cover the CPU fallbacks; a CUDA machine runs the scripts themselves")
    out = tmp_path_factory.mktemp("bench")
    env = kdtemp_env({"OUT": str(out / "from-env")})
    commands = {
        "check-cpu": [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--out", str(out / "check")],
        "speed": [sys.executable, "benchmarks/gpu_speed.py"],
    }
    processes = {name: subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, command in commands.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr)
    return out, results


def test_gpu_check_without_cuda_says_skipped_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the checks instead")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path)])
    import gpu_check

    assert gpu_check.main() == 0
    assert capsys.readouterr().out == "gpu_check: skipped (no CUDA device)\n"
    assert not list(tmp_path.iterdir())  # and it wrote nothing


def test_gpu_check_on_cpu_runs_every_check_and_none_breaks(scripts):
    out, results = scripts
    code, stdout, stderr = results["check-cpu"]
    record = json.loads((out / "check" / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in record["checks"]}
    assert record["finished"] and set(checks) == ALL_CHECKS, stderr[-3000:]
    statuses = {name: c["status"] for name, c in checks.items()}
    assert set(statuses.values()) <= {"pass", "fail", "skipped"}, {n: checks[n]["message"] for n, s in statuses.items() if s == "error"}
    assert {n for n, s in statuses.items() if s == "skipped"} == CUDA_ONLY
    assert all(checks[n]["message"] == "skipped: needs CUDA" for n in CUDA_ONLY)
    # the exit code follows the statuses; the printed table has one row per check with the JSON's status
    assert code == (1 if "fail" in statuses.values() else 0), stderr[-3000:]
    # and on CPU every check that can run passes: a failing one would fail on the GPU too
    assert {n for n, s in statuses.items() if s != "pass"} == CUDA_ONLY, {n: checks[n]["message"] for n in checks}
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in stdout.splitlines() if line.startswith("| ")}
    assert {name: rows[name] for name in checks} == statuses
    # what the end-to-end check reached: Ctrl-C exit 130 with a checkpoint left, then a clean resume
    resume = checks["sweep_interrupt_resume"]["details"]
    assert resume["first_exit"] == 130 and resume["checkpoints"] and resume["second_exit"] == 0
    assert all(epochs == list(range(3)) for epochs in resume["epochs"].values())


def test_gpu_speed_without_cuda_runs_its_cpu_fallback_with_consistent_figures(scripts):
    out, results = scripts
    code, stdout, stderr = results["speed"]
    assert code == 0, stderr[-3000:]
    assert stdout.splitlines()[0] == "gpu_speed: no CUDA device; running the CPU fallback (--device cpu --quick)"
    record = json.loads((out / "from-env" / "gpu_speed.json").read_text())  # --out defaults to $OUT
    grid = record["meta"]["grid"]
    checks = {c["name"]: c for c in record["checks"]}
    assert record["finished"] and {c["status"] for c in checks.values()} <= {"pass", "skipped"}
    assert checks["target_c_5x_faster_than_a"]["status"] == "skipped"
    runs = (len(grid["temperatures"]) + 1) * len(grid["seeds"])
    per_seed = len(grid["temperatures"]) + 1
    expected_shape = {  # way: (runs, optimiser steps, students per step)
        "a_repdistiller_sequence": (runs, runs * grid["steps"], 1),
        "b_kdtemp_sequence": (runs, runs * grid["steps"], 1),
        "c_kdtemp_grouped": (runs, len(grid["seeds"]) * grid["steps"], per_seed),
    }
    for name, (run_count, steps, students) in expected_shape.items():
        figures = checks[name]["details"]
        assert (figures["runs"], figures["steps"], figures["students_per_step"]) == (run_count, steps, students), name
        assert figures["images_per_s_per_student"] == pytest.approx(run_count * grid["steps"] * grid["batch"] / figures["wall_s"])
        assert figures["ms_per_step"] == pytest.approx(1000 * figures["wall_s"] / steps)
    scaling = checks["c_throughput_by_group_size"]["details"]
    assert sorted(map(int, scaling)) == sorted(grid["scaling"])
    assert checks["c_step_profile"]["details"]["members"] == per_seed
