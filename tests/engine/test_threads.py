"""CPU threads from what the process may use (issue 25): affinity, cgroup quota, Slurm, local workers; and
the OpenMP wait setting the `kdtemp` command makes before torch loads. No timing here:
benchmarks/busy_cpu.py measures."""

import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, kdtemp_command, kdtemp_env

from kdtemp.engine.threads import SPIN_COUNT, cgroup_cpus, choose_threads, wait_environment


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


def test_a_wait_policy_the_user_chose_is_left_alone():
    assert wait_environment({}) == {"GOMP_SPINCOUNT": SPIN_COUNT}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        assert wait_environment({name: "PASSIVE"}) == {}


def test_the_command_sets_the_spin_before_torch_and_records_the_threads(tmp_path, tiny_config):
    """In a fresh process, as a user runs it: torch must not be imported when the entry sets the variable
    (libgomp reads it as torch loads), and the job's config.yaml records the threads and the spin."""
    probe = ("import sys, os; import kdtemp.cli.entry; assert 'torch' not in sys.modules; "
             "print(os.environ.get('GOMP_SPINCOUNT'))")
    environ = {key: value for key, value in kdtemp_env().items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    assert subprocess.run([sys.executable, "-c", probe], env=environ, capture_output=True, text=True,
                          cwd=REPO, check=True).stdout == "None\n"  # importing the entry sets nothing, nor loads torch
    config = tiny_config(teacher={"epochs": 1})
    done = subprocess.run([*kdtemp_command("train-teacher", "--config", config, "--threads", "1")],
                          env=environ, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notes = " ".join((done.stdout + done.stderr).split())  # notes go to stderr
    assert f"CPU threads: 1 (train.threads); idle threads wait with GOMP_SPINCOUNT={SPIN_COUNT}" in notes
    recorded = yaml.safe_load((tmp_path / "runs" / "tiny" / "teacher" / "config.yaml").read_text())
    assert recorded["environment"]["cpu_threads"] == 1
    assert recorded["environment"]["gomp_spincount"] == SPIN_COUNT
    passive = subprocess.run([*kdtemp_command("train-teacher", "--config", config, "--force")],
                             env={**environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True, cwd=tmp_path)
    assert passive.returncode == 0 and "idle threads wait with OpenMP's default spin" in " ".join(passive.stderr.split())
    assert os.environ.get("GOMP_SPINCOUNT") in (None, SPIN_COUNT)  # this process untouched by the children
