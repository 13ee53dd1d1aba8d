"""A user's own KD method, in a file of theirs, turned on with kd.methods and swept like the built-ins:
its term reaches the loss, its field reaches metrics.csv, its source reaches the run ids."""

import sys

import pandas as pd
import pytest
from helpers import experiment

import kdtemp.methods.registry

METHOD_FILE = '''
import torch
from kdtemp.methods import KDMethod, Terms


class LogitPenalty(KDMethod):
    """WEIGHT * the batch mean of the sum of squared student logits, for the runs that name it."""

    name = "logit-l2"

    def __init__(self, members, group):
        super().__init__(members, group)
        self.weight = torch.tensor([WEIGHT if self.uses(m) else 0.0 for m in self.members], device=group.device)

    def terms(self, step):
        squared = step.logits.pow(2).sum(-1).mean(-1)
        return Terms(added={"logit_l2": self.weight * squared}, logged={"logit_l2": squared})

    def row_fields(self, k, means):
        return {"train_logit_l2": means["logit_l2"]} if self.uses(self.members[k]) else {}


WEIGHT = 0.5
'''


@pytest.fixture
def user_method(tmp_path, monkeypatch):
    """my_method.py in the working directory, and a registry that forgets it after the test."""
    monkeypatch.setattr(kdtemp.methods.registry, "METHODS", list(kdtemp.methods.registry.METHODS))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_method.py").write_text(METHOD_FILE)
    return tmp_path / "my_method.py"


def metrics(config):
    runs = experiment(config) / "students"
    return {run.name: pd.read_csv(run / "metrics.csv") for run in sorted(runs.iterdir())}


def test_a_user_method_is_swept_reported_and_hashed(user_method, tiny_config, run_cli):
    common = {"student": {"hidden": [16], "epochs": 2}}
    plain = tiny_config("plain", kd={"temperatures": [4], "seeds": [0]}, **common)
    mine = tiny_config("mine", kd={"temperatures": [4], "seeds": [0], "methods": ["my_method:LogitPenalty"]},
                       **common)
    for config in (plain, mine):
        assert run_cli("train-teacher", "--config", config).code == 0
        assert run_cli("sweep", "--config", config).code == 0
    plain_runs, my_runs = metrics(plain), metrics(mine)
    plain_kd = next(frame for name, frame in plain_runs.items() if name.startswith("constant"))
    my_kd_name, my_kd = next((name, frame) for name, frame in my_runs.items() if name.startswith("constant"))
    baseline = next(frame for name, frame in my_runs.items() if name.startswith("baseline"))
    # the field is a column of the run that trains with the method, and the penalty moved its loss
    assert "train_logit_l2" in my_kd.columns and (my_kd["train_logit_l2"] > 0).all()
    assert "train_logit_l2" not in baseline.columns
    assert not my_kd["train_loss"].equals(plain_kd["train_loss"])
    # train_loss = (1 - alpha) ce + alpha kd + WEIGHT * logit_l2, per batch; the epoch means add up alike
    expected = 0.1 * my_kd["train_ce"] + 0.9 * my_kd["train_kd"] + 0.5 * my_kd["train_logit_l2"]
    assert my_kd["train_loss"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)
    # the distilled run's id hashes the method; the baseline, which does not use it, keeps its id
    assert set(plain_runs) != set(my_runs)
    assert {n for n in plain_runs if n.startswith("baseline")} == {n for n in my_runs if n.startswith("baseline")}
    # an edited method trains a new run rather than passing for the old one
    user_method.write_text(METHOD_FILE.replace("sum(-1).mean(-1)", "sum(-1).mean(-1) * 1.0"))
    kdtemp.methods.registry.METHODS[:] = [m for m in kdtemp.methods.registry.METHODS if m.name != "logit-l2"]
    sys.modules.pop("my_method", None)
    assert run_cli("sweep", "--config", mine).code == 0
    assert len(metrics(mine)) == len(my_runs) + 1

@pytest.mark.parametrize("reference, message", [
    ("nowhere:Thing", "kd.methods: nowhere:Thing: cannot import 'nowhere'"),
    ("my_method:WEIGHT", "kd.methods: my_method:WEIGHT: 'WEIGHT' is a float, not a class or function"),
    ("my_method:Terms", "kd.methods: my_method:Terms is not a KD method"),
])
def test_a_bad_method_is_refused_in_one_line(user_method, tiny_config, run_cli, reference, message):
    config = tiny_config("bad", kd={"temperatures": [4], "seeds": [0], "methods": [reference]})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and message in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (experiment(config) / "students").exists()
