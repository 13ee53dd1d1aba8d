"""What the figures show: schedules dodged apart at one T, the baseline band in the legend, no-KD told from t0 = 1."""

import math

import matplotlib.colors as mcolors
import pandas as pd
import pytest

from kdtemp.report import plots


@pytest.fixture
def figures(monkeypatch):
    """Every Figure the plotting functions save, kept for inspection instead of (as well as) the PNG."""
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure) or save(figure, path))
    return drawn


def summary_of_two_schedules() -> pd.DataFrame:
    rows = [{"schedule": s, "alpha": 0.9, "t0": t, "n": 3, "mean_test_acc": 0.7 + 0.01 * t, "ci95_test_acc": 0.02}
            for s in ("constant", "linear") for t in (1.0, 4.0)]
    rows.append({"schedule": "none", "alpha": 0.0, "t0": math.nan, "n": 3, "mean_test_acc": 0.65, "ci95_test_acc": 0.01})
    rows.append({"schedule": "teacher", "alpha": math.nan, "t0": math.nan, "n": 1, "mean_test_acc": 0.95, "ci95_test_acc": math.nan})
    return pd.DataFrame(rows)


def test_schedules_at_one_temperature_are_dodged_apart_on_the_log_axis(figures, tmp_path):
    plots.accuracy_vs_temperature(summary_of_two_schedules(), "x", tmp_path / "a.png")
    axis = figures[0].axes[0]
    bars = {container.get_label(): list(container.lines[0].get_xdata()) for container in axis.containers}
    constant, linear = bars["constant"], bars["linear"]
    for index, t0 in enumerate((1.0, 4.0)):
        assert constant[index] != linear[index]
        # symmetric about t0 in log space, and near enough to read as the same T
        assert math.log(constant[index]) + math.log(linear[index]) == pytest.approx(2 * math.log(t0))
        assert abs(math.log(linear[index] / t0)) < 0.1


def test_the_baseline_band_is_in_the_legend(figures, tmp_path):
    plots.accuracy_vs_temperature(summary_of_two_schedules(), "x", tmp_path / "a.png")
    labels = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert "no-KD baseline, 95% CI" in labels and any(label.startswith("no-KD baseline (65.0%") for label in labels)


def test_learning_curves_tell_t0_1_from_the_no_kd_line(figures, tmp_path):
    rows = [{"schedule": schedule, "t0": t0, "seed": seed, "epoch": epoch, "test_acc": 0.5 + 0.1 * epoch + 0.01 * seed}
            for schedule, t0 in (("constant", 1.0), ("constant", 4.0), ("none", math.nan))
            for seed in (0, 1) for epoch in range(3)]
    plots.learning_curves(pd.DataFrame(rows), "x", tmp_path / "c.png")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    no_kd, t0_one = lines["no KD"], lines["t0=1"]
    # identical numbers here, so the no-KD line lies on t0 = 1: it must differ in colour and carry markers
    assert list(no_kd.get_ydata()) == pytest.approx(list(t0_one.get_ydata()))
    assert mcolors.to_rgba(no_kd.get_color()) != mcolors.to_rgba(t0_one.get_color())
    assert no_kd.get_linestyle() != t0_one.get_linestyle()
    assert no_kd.get_marker() not in ("None", None, "") and no_kd.get_zorder() > t0_one.get_zorder()
