"""Launchers: local workers and a real single-node Slurm cluster give the sequential sweep's numbers, exactly."""

import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    REPO,
    experiment,
    final_metrics,
    kdtemp_command,
    kdtemp_env,
    train_experiment,
    write_experiment,
)

from kdtemp.config.loading import load_config
from kdtemp.config.schema import config_to_dict
from kdtemp.errors import ConfigError
from kdtemp.events import SweepResult
from kdtemp.store.files import is_completed
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.locks import RunLock
from kdtemp.sweep import slurm as slurm_launcher
from kdtemp.sweep import local_workers
from kdtemp.engine.threads import choose_threads
from kdtemp.sweep.local_workers import cuda_index
from kdtemp.sweep.plan import plan_runs
from kdtemp.sweep.slurm import UnitJob, job_config_tree
from kdtemp.sweep.units import work_units

GRID = {"student": {"hidden": [64], "epochs": 12}, "kd": {"temperatures": [1, 2, 4], "seeds": [0, 1]},
        "train": {"max_group_size": 4}, "launcher": {"slurm_cpus_per_job": 1, "slurm_time": 10}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """8 runs (3 temperatures x 2 seeds + 2 baselines) trained in one process: the numbers to match."""
    return train_experiment(write_experiment(tmp_path_factory.mktemp("launch-reference"), data_root, "reference", **GRID))


def copy_of(reference: Path, tmp_path: Path, name: str) -> Path:
    """A fresh experiment with the reference's config and teacher, and no students yet."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"{name}.yaml"
    config.write_text(reference.read_text().replace(str(reference.parent / "runs"), str(tmp_path / "runs")))
    shutil.copytree(experiment(reference) / "teacher", experiment(config) / "teacher")
    return config


def kdtemp(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(kdtemp_command(*args), cwd=REPO, env=kdtemp_env(env), capture_output=True,
                          text=True, timeout=timeout)


def test_units_are_per_seed_groups_with_their_generations(reference):
    config = load_config(reference)
    assert work_units(config) == []  # all complete
    units = work_units(config, force=True)
    assert sorted(len(unit) for unit in units) == [4, 4]  # one per seed (max_group_size 4), never across seeds
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    for unit in units:
        seeds = {pd.read_csv(layout.run_dir(run_id) / "metrics.csv")["seed"][0] for run_id in unit}
        assert len(seeds) == 1
    assert len(work_units(config, force=True, at_least=6)) >= 6  # split further for idle workers


def test_local_workers_match_the_sequential_sweep(reference, tmp_path, run_cli):
    config = copy_of(reference, tmp_path, "workers")
    result = run_cli("sweep", "--config", config, "--workers", "2")
    assert result.code == 0, result.stderr
    assert "8 runs: 0 skipped (complete), 0 resumed, 8 started, 8 completed, 0 failed" in result.stdout
    assert "worker 0 (auto)" in result.stderr and "worker 1 (auto)" in result.stderr
    pd.testing.assert_frame_equal(final_metrics(experiment(config)), final_metrics(experiment(reference)))
    owners = {RunFiles(d).owner.read_text() for d in ExperimentLayout(experiment(config)).run_dirs()}
    assert any("worker 0" in owner for owner in owners) and any("worker 1" in owner for owner in owners)


def test_devices_that_do_not_exist_are_refused(reference, tmp_path, run_cli):
    config = copy_of(reference, tmp_path, "nodevice")
    result = run_cli("sweep", "--config", config, "--devices", "cuda:0,cuda:1")
    assert result.code == 2 and "CUDA is not available here" in result.stderr
    assert not (experiment(config) / "students").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--slurm-cpus-per-job", "0", "--slurm-cpus-per-job: input should be greater than 0"),
    ("--slurm-mem-gb", "lots", "--slurm-mem-gb: input should be a valid integer"),
    ("--workers", "-1", "--workers: input should be greater than 0"),
])
def test_bad_launcher_options_name_the_option(reference, tmp_path, run_cli, option, value, message):
    config = copy_of(reference, tmp_path, "badlaunch")
    result = run_cli("sweep", "--config", config, "--launcher", "slurm", option, value)
    assert result.code == 2 and f"error: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not (experiment(config) / "students").exists()


def test_status_lists_every_state(reference, tmp_path, run_cli):
    config = copy_of(reference, tmp_path, "states")
    shutil.copytree(experiment(reference) / "students", experiment(config) / "students")
    run_dirs = ExperimentLayout(experiment(config)).run_dirs()
    (run_dirs[0] / "summary.json").write_text('{"status": "failed", "reason": "training loss became nan in epoch 2"}')
    (run_dirs[1] / "summary.json").unlink()  # cut off after its metrics: interrupted
    shutil.rmtree(run_dirs[2])  # never started
    lock = RunLock(ExperimentLayout(experiment(config)).lock_path(run_dirs[3].name))
    (run_dirs[3] / "summary.json").unlink()
    assert lock.acquire()
    try:
        # another process holds run 3's lock: status must call it running
        result = kdtemp("status", "--config", str(config))
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert "4 completed, 1 running, 1 failed, 1 interrupted, 1 pending" in result.stdout
    assert re.search(r"run .*state .*epochs .*test acc .*detail", result.stdout)
    assert re.search(rf"{run_dirs[0].name}.*failed.*training loss became nan", result.stdout)
    assert re.search(rf"{run_dirs[1].name}.*interrupted.*resumes after epoch 11", result.stdout)
    assert re.search(rf"{run_dirs[3].name}.*running", result.stdout)


# --- devices and threads of workers and jobs (no GPU, no Slurm needed) -----------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_a_slurm_job_trains_on_the_configs_device(tiny_config, monkeypatch, device):
    """The array task validates the sweep's config as given: its device is not replaced by 'auto'."""
    config = load_config(tiny_config(device=device, launcher={"slurm_gpus_per_job": 1}))
    seen = {}

    def fake_sweep(job_config, force, only, worker):
        seen["device"] = job_config.device
        return SweepResult(1, 0, 0, 1, 1, experiment_dir=Path("unused"))

    monkeypatch.setattr(slurm_launcher, "sweep", fake_sweep)
    UnitJob(job_config_tree(config), ["run"], force=False)()
    assert seen["device"] == device


def test_cuda_without_gpus_per_job_is_refused_before_submitting(tiny_config, run_cli):
    config = tiny_config(device="cuda")
    result = run_cli("sweep", "--config", config, "--launcher", "slurm")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "error: device cuda needs a GPU in each Slurm job, but slurm_gpus_per_job is 0; pass --slurm-gpus-per-job 1" \
        in result.stderr
    with pytest.raises(ConfigError, match="cuda:1 needs a GPU"):
        job_config_tree(load_config(tiny_config(device="cuda:1")))
    assert job_config_tree(load_config(tiny_config(device="cpu"))) == config_to_dict(load_config(tiny_config(device="cpu")))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_configs_ask_slurm_for_a_gpu_and_plan_as_before(name):
    path = REPO / "configs" / f"{name}.yaml"
    config = load_config(path)
    assert config.launcher.slurm_gpus_per_job == 1 and config.launcher.name == "local"
    cuda = config.model_copy(update={"device": "cuda"})
    assert job_config_tree(cuda)["device"] == "cuda"
    # the launcher section is not part of any run's identity: the local plan is the one without it
    without = config.model_copy(update={"launcher": type(config.launcher)()})
    assert [r.run_id for r in plan_runs(config, "f" * 16)] == [r.run_id for r in plan_runs(without, "f" * 16)]


@pytest.mark.parametrize("cpus, workers, expected", [(16, 4, 4), (16, 3, 5), (2, 3, 1), (8, 1, 8)])
def test_workers_split_the_cores_gpu_workers_too(cpus, workers, expected):
    choice = choose_threads(None, workers, {}, affinity=None, quota=None, cpu_count=cpus)
    assert choice.threads == expected == max(1, cpus // workers)


def test_a_cuda_worker_makes_its_gpu_current(monkeypatch):
    assert [cuda_index(d) for d in ("cuda:0", "cuda:3", "cuda", "cpu", "auto")] == [0, 3, None, None, None]
    calls = []
    monkeypatch.setattr(local_workers.torch.cuda, "set_device", calls.append)
    threads = local_workers.torch.get_num_threads()
    try:
        local_workers._prepare_worker("cuda:3", 1)
        assert calls == [3] and local_workers.torch.get_num_threads() == 1
        local_workers._prepare_worker("cpu", 1)
        assert calls == [3]
    finally:
        local_workers.torch.set_num_threads(threads)


# --- a real Slurm ----------------------------------------------------------------------------------

SLURM_MISSING = next((reason for missing, reason in [
    (shutil.which("slurmctld") is None or shutil.which("munged") is None, "Slurm is not installed (apt-get install slurm-wlm munge)"),
    (hasattr(os, "geteuid") and os.geteuid() != 0, "starting a local Slurm cluster needs root"),
    (importlib.util.find_spec("submitit") is None, "submitit is not installed (pip install 'kdtemp[slurm]')"),
] if missing), None)
slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=SLURM_MISSING or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """scripts/slurm-local.sh: a single-node cluster for this module; stopped by pid afterwards."""
    directory = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm-local.sh"
    started = subprocess.run([str(script), "start", str(directory)], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        yield {"SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        subprocess.run([str(script), "stop", str(directory)], capture_output=True, timeout=60)


@slurm
def test_slurm_array_matches_the_sequential_sweep(reference, tmp_path, cluster):
    config = copy_of(reference, tmp_path, "slurm")
    result = kdtemp("sweep", "--config", str(config), "--launcher", "slurm", env=cluster)
    assert result.returncode == 0, result.stderr
    assert re.search(r"submitted Slurm job array \d+: 2 tasks, 8 runs", result.stdout)
    assert "8 runs: 0 skipped (complete), 0 resumed, 8 started, 8 completed, 0 failed" in result.stdout
    pd.testing.assert_frame_equal(final_metrics(experiment(config)), final_metrics(experiment(reference)))
    owners = [RunFiles(d).owner.read_text() for d in ExperimentLayout(experiment(config)).run_dirs()]
    assert all("slurm_array_job_id" in owner for owner in owners)


@slurm
def test_a_cancelled_array_resumes_when_run_again(reference, tmp_path, cluster):
    """One task at a time, cancelled while the first runs: the second never starts, whatever the timing.

    Running the same command again finishes every run exactly once, with the sequential sweep's numbers.
    """
    from kdtemp.sweep.status import sweep_status

    config = copy_of(reference, tmp_path, "cancelled")
    submitted = kdtemp("sweep", "--config", str(config), "--launcher", "slurm", "--no-wait",
                       "--slurm-array-parallelism", "1", env=cluster)
    assert submitted.returncode == 0, submitted.stderr
    array = re.search(r"submitted Slurm job array (\d+)", submitted.stdout).group(1)
    layout = ExperimentLayout(experiment(config))
    deadline = time.monotonic() + 120
    running = []
    while time.monotonic() < deadline and not running:
        running = [s for s in sweep_status(load_config(config)) if s.state == "running" and s.detail]
        time.sleep(0.1)
    assert running and all(f"slurm job {array}_0" in s.detail for s in running), running
    queued = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i %T"], env={**os.environ, **cluster},
                            capture_output=True, text=True).stdout
    assert f"{array}_0 RUNNING" in queued and f"{array}_1 PENDING" in queued, queued
    subprocess.run(["scancel", array], env={**os.environ, **cluster}, check=True, timeout=30)
    while time.monotonic() < deadline:  # wait for the array to leave the queue
        if not subprocess.run(["squeue", "-h", "-j", array], env={**os.environ, **cluster}, capture_output=True,
                              text=True).stdout.strip():
            break
        time.sleep(0.3)
    states = [s.state for s in sweep_status(load_config(config))]
    assert states.count("completed") <= 4 and states.count("pending") >= 4, states
    rerun = kdtemp("sweep", "--config", str(config), "--launcher", "slurm", env=cluster)
    assert rerun.returncode == 0, rerun.stderr
    final = kdtemp("status", "--config", str(config), env=cluster)
    assert "8 completed, 0 running, 0 failed, 0 interrupted, 0 pending" in final.stdout
    assert all(is_completed(d) for d in layout.run_dirs()) and len(layout.run_dirs()) == 8
    pd.testing.assert_frame_equal(final_metrics(experiment(config)), final_metrics(experiment(reference)))
