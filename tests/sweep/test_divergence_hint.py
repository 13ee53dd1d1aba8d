"""A diverged run says what usually fixes it: clipping the gradient norm, or a lower student learning rate."""

import json

from helpers import experiment

from kdtemp.store.layout import ExperimentLayout


def test_a_diverged_run_names_clip_grad_norm_and_the_learning_rate(tiny_config, run_cli):
    config = tiny_config("diverge-hint", kd={"temperatures": [10], "seeds": [0]},
                         student={"hidden": [16], "epochs": 1, "lr": 1e12})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 1
    failed = {line.split(":")[1].strip(): line for line in result.stderr.splitlines() if line.startswith("failed:")}
    distilled = next(line for run_id, line in failed.items() if run_id.startswith("constant-T10"))
    baseline = next(line for run_id, line in failed.items() if run_id.startswith("baseline"))
    for line in (distilled, baseline):
        assert "train.clip_grad_norm" in line and "lower student.lr (now 1e+12)" in line, line
    assert "grows like T" in distilled and "grows like T" not in baseline  # no KD term, no T in its gradient
    run_dir = next(d for d in ExperimentLayout(experiment(config)).run_dirs() if d.name.startswith("constant-T10"))
    reason = json.loads((run_dir / "summary.json").read_text())["reason"]
    assert reason.startswith("training loss became") and "train.clip_grad_norm" in reason


def test_with_clipping_on_only_the_learning_rate_is_suggested(tiny_config, run_cli):
    config = tiny_config("diverge-clipped", kd={"temperatures": [10], "seeds": [0], "baseline": False},
                         student={"hidden": [16], "epochs": 1, "lr": 1e30}, train={"clip_grad_norm": 1e30})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert result.code == 1 and len(failed) == 1
    assert "lower student.lr (now 1e+30)" in failed[0] and "clip_grad_norm" not in failed[0]
