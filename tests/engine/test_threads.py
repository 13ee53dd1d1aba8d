"""CPU threads from what the process may use (issue 25): affinity, cgroup quota, Slurm, local workers; and
the OpenMP wait setting the `kdtemp` command makes before torch loads. No timing here:
benchmarks/busy_cpu.py measures."""

import subprocess
import sys

import pytest
import yaml
from helpers import REPO, kdtemp_command, kdtemp_env

from kdtemp.engine.threads import busy_cpus, cgroup_cpus, choose_threads, wait_description, wait_environment


@pytest.mark.parametrize(
    ("environ", "affinity", "quota", "workers", "expected", "reason"),
    [
        ({}, None, None, 1, 16, "CPUs on the machine: 16"),
        ({}, 4, None, 1, 4, "CPU affinity: 4"),  # taskset -c 0-3
        ({}, 16, 2.5, 1, 3, "cgroup CPU quota: 3"),  # docker --cpus 2.5: three threads keep 2.5 CPUs busy
        ({"SLURM_CPUS_PER_TASK": "6"}, 12, None, 1, 6, "SLURM_CPUS_PER_TASK: 6"),
        ({"SLURM_CPUS_PER_TASK": "6"}, 4, None, 1, 4, "CPU affinity: 4"),  # the smallest limit wins
        ({"SLURM_CPUS_PER_TASK": "8"}, None, None, 3, 2, "SLURM_CPUS_PER_TASK: 8, shared by 3 workers"),
        ({"SLURM_CPUS_PER_TASK": ""}, None, 0.5, 4, 1, "cgroup CPU quota: 1, shared by 4 workers"),
    ],
)
def test_threads_follow_the_smallest_limit_the_process_has(environ, affinity, quota, workers, expected, reason):
    choice = choose_threads(None, workers, environ, affinity, quota, cpu_count=16)
    assert (choice.threads, choice.reason) == (expected, reason)


def test_train_threads_overrides_every_limit():
    assert choose_threads(5, 2, {"SLURM_CPUS_PER_TASK": "1"}, 1, 1.0, cpu_count=16).threads == 5


def test_cgroup_quotas_of_both_versions_are_read(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(tmp_path / "v1") is None and cgroup_cpus(tmp_path / "absent") is None


def test_threads_sleep_at_once_only_when_other_work_keeps_a_cpu_busy():
    assert wait_environment({}, 0.1) == {"KDTEMP_OTHER_CPU_LOAD": "0.10"}  # idle: OpenMP's default spin
    busy = wait_environment({}, 1.8)
    assert busy == {"KDTEMP_OTHER_CPU_LOAD": "1.80", "OMP_WAIT_POLICY": "PASSIVE"}
    assert wait_description(busy) == "OMP_WAIT_POLICY=PASSIVE: other work kept 1.80 CPUs busy when the job started"
    assert wait_environment({}, None) == {}  # not measured (not Linux): nothing changes
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        assert wait_environment({name: "PASSIVE"}, 2.0) == {}  # the user's choice stays
    assert wait_description({"GOMP_SPINCOUNT": "1000"}) == "GOMP_SPINCOUNT=1000 (as set)"


def test_busy_cpus_reads_the_kernels_counters(tmp_path):
    """Two snapshots of a faked /proc/stat: 2 CPUs, 150 of 200 jiffies busy in between -> 1.5 CPUs busy."""
    stat = tmp_path / "stat"
    snapshots = iter([
        "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 350 50 0 0 0 0 0\n",
        "cpu  200 0 150 740 110 0 0 0 0 0\ncpu0 100 0 75 370 55 0 0 0 0 0\ncpu1 100 0 75 370 55 0 0 0 0 0\n",
    ])

    class Snapshots(type(stat)):
        def read_text(self, *args, **kwargs):
            return next(snapshots)

    assert busy_cpus(0.0, Snapshots(stat)) == pytest.approx(2 * 150 / 200)
    assert busy_cpus(0.0, tmp_path / "absent") is None


def test_the_command_measures_the_load_before_torch_and_records_the_threads(tmp_path, tiny_config):
    """In a fresh process, as a user runs it: importing the entry loads no torch (OpenMP reads the policy
    as torch loads), a training command records what it measured, the threads and the wait policy."""
    probe = "import sys; import kdtemp.cli.entry; assert 'torch' not in sys.modules"
    environ = {key: value for key, value in kdtemp_env().items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    subprocess.run([sys.executable, "-c", probe], env=environ, cwd=REPO, check=True)
    config = tiny_config(teacher={"epochs": 1})
    done = subprocess.run([*kdtemp_command("train-teacher", "--config", config, "--threads", "1")],
                          env=environ, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notes = " ".join(done.stderr.split())  # notes go to stderr
    assert "CPU threads: 1 (train.threads); idle threads: " in notes and "CPUs busy when the job started" in notes
    recorded = yaml.safe_load((tmp_path / "runs" / "tiny" / "teacher" / "config.yaml").read_text())
    assert recorded["environment"]["cpu_threads"] == 1 and "when the job started" in recorded["environment"]["omp_wait"]
    chosen = subprocess.run([*kdtemp_command("train-teacher", "--config", config, "--force")],
                            env={**environ, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True, cwd=tmp_path)
    assert chosen.returncode == 0 and "idle threads: OMP_WAIT_POLICY=ACTIVE (as set)" in " ".join(chosen.stderr.split())


def test_the_wait_policy_changes_how_threads_wait_not_what_they_compute(tmp_path, tiny_config):
    """The same teacher trained with OpenMP's default spin and with PASSIVE, two threads each: the same
    weights, bit for bit (on this CPU; the docs say so)."""
    import torch

    config = tiny_config(teacher={"epochs": 1})
    weights = []
    for policy in ("ACTIVE", "PASSIVE"):
        done = subprocess.run([*kdtemp_command("train-teacher", "--config", config, "--force", "--threads", "2")],
                              env={**kdtemp_env(), "OMP_WAIT_POLICY": policy}, capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        weights.append(torch.load(tmp_path / "runs" / "tiny" / "teacher" / "model.pt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
