"""The grid's axes beyond T: alpha (kd.alphas), and cells that share a temperature curve trained once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import experiment, train_experiment

from kdtemp.config.loading import load_config
from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError
from kdtemp.report.build import build_report
from kdtemp.report.render import write_report
from kdtemp.sweep.plan import plan_runs, same_curve_cells
from kdtemp.temperature.base import epoch_temperatures


def config_of(**kd) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"kd": {"seeds": [0], **kd}})


def test_alphas_are_a_grid_axis_with_a_run_per_alpha():
    runs = plan_runs(config_of(temperatures=[2, 4], alphas=[0.5, 0.9]), "teacher")
    distilled = [(run.alpha, run.t0) for run in runs if not run.is_baseline]
    assert sorted(distilled) == [(0.5, 2.0), (0.5, 4.0), (0.9, 2.0), (0.9, 4.0)]
    assert len({run.run_id for run in runs}) == len(runs)
    # the one-value form plans the same runs, with the same ids, as a one-item list
    single = {r.run_id for r in plan_runs(config_of(temperatures=[2], alpha=0.5), "teacher")}
    listed = {r.run_id for r in plan_runs(config_of(temperatures=[2], alphas=[0.5]), "teacher")}
    assert single == listed


def test_alpha_and_alphas_together_are_refused_but_a_flag_replaces_the_files_form(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("kd:\n  alpha: 0.7\n  alphas: [0.5, 0.9]\n")
    with pytest.raises(ConfigError, match=r"both.yaml: .*give kd.alpha or kd.alphas, not both"):
        load_config(both)
    path = tmp_path / "x.yaml"
    path.write_text("kd:\n  alpha: 0.7\n")
    config = load_config(path, {"kd.alphas": ([0.5, 0.9], "--alphas")})
    assert config.kd.alpha_grid() == [0.5, 0.9]
    with pytest.raises(ConfigError, match=r"--alphas: .*less than or equal to 1"):
        load_config(None, {"kd.alphas": ([0.5, 1.5], "--alphas")})


def test_schedules_equal_at_a_t0_train_once():
    config = config_of(temperatures=[1, 3], schedules=["constant", "linear", "cosine", "exp"])
    epochs = config.student.epochs
    runs = plan_runs(config, "teacher")
    cells = {(run.schedule_label, run.t0) for run in runs if not run.is_baseline}
    # linear and cosine end at t_end = 1, so from t0 = 1 they are constant T = 1; exp (gamma 0.9) is not
    assert ("linear", 1.0) not in cells and ("cosine", 1.0) not in cells
    assert {("constant", 1.0), ("exp", 1.0), ("linear", 3.0), ("cosine", 3.0)} <= cells
    repeats = {(r.schedule, r.same_as, r.t0) for r in same_curve_cells(config)}
    assert repeats == {("linear", "constant", 1.0), ("cosine", "constant", 1.0)}
    schedules = {s.name: s for s in config.kd.schedules}
    for name in ("linear", "cosine"):  # the claim, checked on the curves themselves
        assert epoch_temperatures(schedules[name], 1.0, epochs) == epoch_temperatures(
            schedules["constant"], 1.0, epochs
        )
    assert epoch_temperatures(schedules["exp"], 1.0, epochs) != epoch_temperatures(
        schedules["constant"], 1.0, epochs
    )


@pytest.mark.slow
def test_alphas_and_shared_curves_in_the_report(tiny_config):
    config = tiny_config(
        kd={"temperatures": [1, 4], "seeds": [0, 1], "alphas": [0.5, 0.9], "schedules": ["constant", "linear"]}
    )
    train_experiment(config)
    root = experiment(config)
    trained = [d.name for d in (root / "students").iterdir()]
    assert not [name for name in trained if name.startswith("linear-T1")]  # trained once, as constant T=1
    entries = json.loads((root / "same_curves.json").read_text())
    assert {(e["schedule"], e["same_as"], e["t0"], e["alpha"]) for e in entries} == {
        ("linear", "constant", 1.0, 0.5),
        ("linear", "constant", 1.0, 0.9),
    }
    report = build_report(root)
    final = report.results.final
    for alpha in (0.5, 0.9):
        shown = final[(final["schedule"] == "linear") & (final["t0"] == 1.0) & (final["alpha"] == alpha)]
        source = final[(final["schedule"] == "constant") & (final["t0"] == 1.0) & (final["alpha"] == alpha)]
        assert list(shown["run_id"]) == list(source["run_id"]) and len(shown) == 2
        assert (shown["same_as"] == "constant").all()
    tests = report.settings[0].tests
    assert not ((tests["schedule"] == "linear") & (tests["t0"] == 1.0)).any()  # tested once, as constant
    assert len(tests) == 6  # 2 alphas x (constant 1, 4 + linear 4)
    paths = write_report(report)
    summary = pd.read_csv(paths["summary"])
    linear = summary[(summary["schedule"] == "linear") & (summary["t0"] == 1.0)]
    assert len(linear) == 2 and (linear["n"] == 2).all()
    assert (paths["summary"].parent / "temperature_alpha.png").stat().st_size > 0
    assert "same temperature curve, trained once" in paths["markdown"].read_text()
