"""Each guarantee broken on purpose: SIGKILL, SIGINT, two sweeps at once, divergence, hostile and broken files."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import (
    REPO,
    experiment,
    final_metrics,
    kdtemp_command,
    kdtemp_env,
    train_experiment,
    write_experiment,
)

from kdtemp.store.files import is_completed
from kdtemp.store.layout import ExperimentLayout, RunFiles

SLOW_SWEEP = {"student": {"hidden": [64], "epochs": 8}, "kd": {"temperatures": [1, 2, 4], "seeds": [0, 1]},
              "train": {"max_group_size": 2}}


def with_teacher(tiny_config, run_cli, name, **sections):
    config = tiny_config(name, **sections)
    assert run_cli("train-teacher", "--config", config).code == 0
    return config


def start_sweep(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(kdtemp_command("sweep", "--config", config, *extra), cwd=REPO, env=kdtemp_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def rows_written(config: Path) -> int:
    total = 0
    for run_dir in ExperimentLayout(experiment(config)).run_dirs():
        if RunFiles(run_dir).metrics.exists():
            total += max(0, len(RunFiles(run_dir).metrics.read_text().splitlines()) - 1)
    return total


def finals(config: Path) -> pd.DataFrame:
    return final_metrics(experiment(config))


def assert_all_complete(config: Path, count: int):
    run_dirs = ExperimentLayout(experiment(config)).run_dirs()
    assert len(run_dirs) == count
    for run_dir in run_dirs:
        assert is_completed(run_dir), run_dir.name
        assert not RunFiles(run_dir).checkpoint.exists()


def counts(stdout: str) -> dict[str, int]:
    match = re.search(r"(\d+) runs: (\d+) skipped \(complete\), (\d+) resumed, (\d+) started, (\d+) completed, (\d+) failed", stdout)
    assert match, stdout
    return dict(zip(["planned", "skipped", "resumed", "started", "completed", "failed"], map(int, match.groups())))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """The same sweep, never interrupted, built once: what every broken run must end up equal to.

    Read-only: a test that changes files works on a copy.
    """
    return train_experiment(write_experiment(tmp_path_factory.mktemp("reference"), data_root, "reference", **SLOW_SWEEP))


@pytest.fixture
def reference_copy(reference, tmp_path):
    config = tmp_path / reference.name
    shutil.copy(reference, config)
    text = config.read_text().replace(str(reference.parent / "runs"), str(tmp_path / "runs"))
    config.write_text(text)
    shutil.copytree(experiment(reference), experiment(config))
    return config


def copy_teacher(source: Path, config: Path):
    shutil.copytree(experiment(source) / "teacher", experiment(config) / "teacher")


def test_sigkill_mid_sweep_then_rerun_completes_every_run_once(reference, tiny_config):
    config = tiny_config("killed", **SLOW_SWEEP)
    copy_teacher(reference, config)
    process = start_sweep(config)
    assert wait_for(lambda: rows_written(config) >= 20), process.communicate()  # first group (16 rows) done, second begun
    process.kill()
    process.wait()
    assert rows_written(config) < 8 * 8  # it really was cut off
    rerun = start_sweep(config)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    summary = counts(out)
    assert summary["skipped"] >= 1 and summary["resumed"] + summary["started"] + summary["skipped"] == 8
    assert_all_complete(config, 8)
    pd.testing.assert_frame_equal(finals(config), finals(reference))


def test_ctrl_c_stops_saves_and_resumes(reference, tiny_config):
    config = tiny_config("interrupted", **SLOW_SWEEP)
    copy_teacher(reference, config)
    process = start_sweep(config)
    assert wait_for(lambda: rows_written(config) >= 3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted: every finished epoch is saved; run the same command again to resume" in err
    assert "Traceback" not in err
    rerun = start_sweep(config)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert counts(out)["resumed"] >= 1
    assert_all_complete(config, 8)
    pd.testing.assert_frame_equal(finals(config), finals(reference))


def test_two_sweeps_on_one_runs_dir_train_each_run_once(reference, tiny_config):
    config = tiny_config("shared", **SLOW_SWEEP)
    copy_teacher(reference, config)
    first, second = start_sweep(config), start_sweep(config)
    outputs = [process.communicate(timeout=180) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trained = [counts(out)["started"] + counts(out)["resumed"] for out, _ in outputs]
    assert sum(trained) == 8  # every run trained by exactly one of them
    assert_all_complete(config, 8)
    pd.testing.assert_frame_equal(finals(config), finals(reference))


def test_diverging_run_is_marked_failed_and_the_sweep_exits_1(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "diverge", kd={"temperatures": [2, 1e30], "seeds": [0]})
    result = run_cli("sweep", "--config", config)
    assert result.code == 1
    assert counts(result.stdout)["failed"] == 1 and counts(result.stdout)["completed"] == 2
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "constant-T1e30" in failed[0] and "training loss became" in failed[0]
    run_dir = next(d for d in ExperimentLayout(experiment(config)).run_dirs() if d.name.startswith("constant-T1e30"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_epoch"] == 0 and "epoch 0" in summary["reason"]
    report = run_cli("report", "--config", config)
    assert report.code == 0 and "failed: constant-T1e30" in report.stderr
    assert "1 failed" in report.stdout


def test_whole_sweep_diverging_with_a_huge_learning_rate(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "blowup", kd={"temperatures": [4], "seeds": [0]},
                          student={"hidden": [32], "epochs": 2, "lr": 1e12})
    result = run_cli("sweep", "--config", config)
    assert result.code == 1 and counts(result.stdout)["failed"] == 2  # the KD run and the baseline


def test_gradient_clipping_tames_it(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "clipped", kd={"temperatures": [4], "seeds": [0]},
                          student={"hidden": [32], "epochs": 2, "lr": 5.0}, train={"clip_grad_norm": 0.1})
    assert run_cli("sweep", "--config", config).code == 0


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_teacher_checkpoint_that_would_run_code_is_refused(tiny_config, run_cli, tmp_path):
    config = with_teacher(tiny_config, run_cli, "hostile")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(marker)}, experiment(config) / "teacher" / "model.pt")
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and not marker.exists()
    assert re.search(r"error: refused to load teacher checkpoint .*model.pt: it holds Python objects beyond tensors"
                     r".*\(it asks for (posix|nt|os)\.system\); delete it", result.stderr)
    assert "False" not in result.stderr  # torch's advice to turn weights_only off is not passed on
    assert not (experiment(config) / "students").exists()


def test_a_student_checkpoint_that_would_run_code_is_discarded(run_cli, tmp_path, reference_copy):
    config = reference_copy
    victim = ExperimentLayout(experiment(config)).run_dirs()[0]
    (victim / "summary.json").unlink()
    marker = tmp_path / "pwned-student"
    torch.save({"format": "kdtemp-student/1", "member": _Payload(marker)}, victim / "checkpoint.pt")
    result = run_cli("sweep", "--config", config)
    assert result.code == 0 and not marker.exists()
    assert "refused to load student checkpoint" in result.stderr and "restarting" in result.stderr
    assert counts(result.stdout)["started"] == 1


def test_mismatched_teacher_checkpoints_are_refused(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "mismatch")
    path = experiment(config) / "teacher" / "model.pt"
    original = torch.load(path, weights_only=True)
    for change, message in [
        ({"num_classes": 100}, r"predicts 100 classes, mnist1d has 10"),
        ({"dataset": "fashion-mnist"}, r"was trained on fashion-mnist, this config uses mnist1d"),
        ({"input_shape": [1, 28, 28]}, r"takes inputs of shape \[1, 28, 28\], mnist1d gives \[1, 40\]"),
        ({"architecture": {"arch": "mlp", "hidden": [8], "dropout": 0.0}}, r"is a \{'arch': 'mlp'.*the config asks for \{'arch': 'cnn'"),
        ({"data_fingerprint": "0" * 32}, r"trained on different mnist1d data"),
    ]:
        torch.save({**original, **change}, path)
        result = run_cli("sweep", "--config", config)
        assert result.code == 2 and re.search(message, result.stderr), result.stderr
        assert "`--name <new>`" in result.stderr and "`kdtemp train-teacher --force` overwrites it" in result.stderr
    torch.save(original, path)
    other_arch = config.with_name("mismatch-arch.yaml")
    other_arch.write_text(config.read_text().replace("channels:", "kernel_size: 5\n  channels:"))
    shutil.copytree(experiment(config), experiment(other_arch))
    result = run_cli("sweep", "--config", other_arch)
    assert result.code == 2 and "kernel_size" in result.stderr


def test_truncated_checkpoint_is_a_clear_error(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "truncated-ckpt")
    path = experiment(config) / "teacher" / "model.pt"
    path.write_bytes(path.read_bytes()[:200])
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and re.search(r"cannot read teacher checkpoint .*truncated or not a checkpoint", result.stderr)


def test_truncated_metrics_are_skipped_by_report_and_rerun_by_sweep(reference_copy, run_cli):
    reference = reference_copy
    victim = ExperimentLayout(experiment(reference)).run_dirs()[2]
    metrics = RunFiles(victim).metrics
    text = metrics.read_text()
    metrics.write_text(text[: len(text) // 2])
    report = run_cli("report", "--config", reference)
    assert report.code == 0 and f"skipped, unreadable: {victim.name}" in report.stderr
    assert "7 completed runs" in report.stdout
    rerun = run_cli("sweep", "--config", reference)
    assert rerun.code == 0 and counts(rerun.stdout)["started"] == 1 and counts(rerun.stdout)["skipped"] == 7
    assert is_completed(victim)


def test_growing_the_grid_trains_only_new_cells_and_force_retrains(tiny_config, run_cli):
    config = with_teacher(tiny_config, run_cli, "grow", kd={"temperatures": [2], "seeds": [0]})
    assert counts(run_cli("sweep", "--config", config).stdout)["started"] == 2
    grown = run_cli("sweep", "--config", config, "--temps", "2,4", "--seeds", "0,1")
    assert counts(grown.stdout) == {"planned": 6, "skipped": 2, "resumed": 0, "started": 4, "completed": 4, "failed": 0}
    forced = run_cli("sweep", "--config", config, "--force")
    assert counts(forced.stdout)["started"] == 2 and counts(forced.stdout)["skipped"] == 0


def test_unwritable_runs_dir_fails_up_front(tiny_config, run_cli, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the runs dir should be")
    config = tiny_config("unwritable", runs_dir=str(blocker / "runs"))
    result = run_cli("train-teacher", "--config", config)
    assert result.code == 2
    assert re.search(r"error: cannot write to runs directory .*not-a-directory/runs .*choose another with --runs-dir", result.stderr)


def test_run_config_records_what_reproduces_it(reference):
    run_dir = ExperimentLayout(experiment(reference)).run_dirs()[0]
    import yaml

    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {"kdtemp", "torch", "python", "device"} <= set(record["environment"])
    assert record["environment"]["torch"] == str(torch.__version__)
    assert record["experiment"]["kd"]["seeds"] == [0, 1] and record["run"]["seed"] in (0, 1)
    assert record["experiment"]["student"]["epochs"] == 8
    import hashlib

    digest = hashlib.sha256(json.dumps(record["identity"], sort_keys=True).encode()).hexdigest()[:8]
    assert run_dir.name.endswith(f"-{digest}")  # the recorded identity is exactly what names the run
