"""The verdict (issues 16, 22): paired tests against no-KD, the best cell (chosen on validation) and constant,
Holm's adjustment, CIs, TOST, the verdict sentence, markers and the seed plan, each against scipy,
statsmodels or a hand-written reference."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from helpers import write_run

from kdtemp.config.schema import ReportConfig
from kdtemp.report import render, stats, tables, verdict
from kdtemp.report.build import build_report
from kdtemp.report import text as report_text


def holm_by_hand(p_values):
    """Holm (1979) step-down: sort the tested p, multiply the i-th (0-based) by m - i, running max, clip at 1."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for i, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))
        adjusted[index] = running
    return adjusted


def final_frame(cells: dict) -> pd.DataFrame:
    """Per-run last epochs as load_results builds them: {(schedule, t0): {seed: test_acc}}, one setting."""
    rows = [{"schedule": schedule, "alpha": 0.0 if schedule == "none" else 0.9, "t0": math.nan if t0 is None else t0,
             "generation": 1, "seed": seed, "test_acc": accuracy, "setting": "s", "baseline_setting": "b"}
            for (schedule, t0), by_seed in cells.items() for seed, accuracy in by_seed.items()]
    return pd.DataFrame(rows)


def by_seed(values):
    return dict(enumerate(values))


def scipy_paired(a: dict, b: dict) -> float:
    seeds = sorted(set(a) & set(b))
    return scipy_stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue


def test_holm_matches_a_hand_computed_family_and_the_step_down_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04); the NaN is no test
    assert stats.holm([0.01, 0.04, 0.03, math.nan, 0.005])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([0.01, math.nan])[1]) and stats.holm([0.01, math.nan])[0] == pytest.approx(0.01)
    generator = np.random.default_rng(0)
    for _ in range(20):
        p_values = generator.uniform(0, 0.4, int(generator.integers(1, 12))).tolist()
        assert stats.holm(p_values) == pytest.approx(holm_by_hand(p_values), rel=1e-12)


def test_cell_tests_match_scipy_ttest_rel_and_holm():
    generator = np.random.default_rng(3)
    baseline = by_seed(0.60 + generator.normal(0, 0.01, 5))
    cells = {("none", None): baseline}
    for schedule, shift in (("constant", 0.0), ("linear", -0.01)):
        for t0, gain in ((1.0, 0.002), (4.0, 0.03), (8.0, 0.04)):
            cells[(schedule, t0)] = {s: a + gain + shift + generator.normal(0, 0.01) for s, a in baseline.items()}
    del cells[("linear", 4.0)][3]  # a failed seed: it drops out of every pair that cell is in
    tests = verdict.cell_tests(final_frame(cells), "test_acc", True).set_index(["schedule", "t0"])
    grid = [key for key in cells if key[0] != "none"]
    means = {key: np.mean(list(cells[key].values())) for key in grid}
    best = max(means, key=means.get)
    expected_p = [scipy_paired(cells[key], baseline) for key in grid]
    for key, p, holm in zip(grid, expected_p, holm_by_hand(expected_p)):
        row = tests.loc[key]
        assert row["n"] == len(cells[key]) and row["mean"] == pytest.approx(means[key], rel=1e-12)
        assert row["p_value"] == pytest.approx(p, rel=1e-9)
        assert row["holm_p_value"] == pytest.approx(holm, rel=1e-9)
        assert row["best"] == (key == best)
        if key == best:
            assert math.isnan(row["p_vs_best"])
        else:
            assert row["p_vs_best"] == pytest.approx(scipy_paired(cells[key], cells[best]), rel=1e-9)
        if key[0] == "constant":
            assert math.isnan(row["p_vs_constant"])
        else:
            assert row["p_vs_constant"] == pytest.approx(scipy_paired(cells[key], cells[("constant", key[1])]), rel=1e-9)


# --- the report on written runs -------------------------------------------------------------------

TIED = {  # constant T=10 and T=5 within seed noise; T=1 below no-KD; linear T=5 below constant T=5
    ("constant", 1.0): [0.60, 0.62, 0.61, 0.60],
    ("constant", 5.0): [0.74, 0.75, 0.73, 0.74],
    ("constant", 10.0): [0.745, 0.742, 0.737, 0.75],
    ("linear", 5.0): [0.70, 0.72, 0.71, 0.73],
    ("none", None): [0.63, 0.64, 0.62, 0.635],
}


def write_runs(root, accuracies):
    for (schedule, t0), values in accuracies.items():
        for seed, accuracy in enumerate(values):
            write_run(root, f"{schedule}-T{t0}-s{seed}" if t0 else f"baseline-s{seed}", schedule, t0, seed, accuracy)
    return root


@pytest.fixture
def tied(tmp_path):
    return write_runs(tmp_path / "runs" / "tied", TIED)


@pytest.fixture
def no_figures(monkeypatch):
    """The plots are test_report's business; skipping them keeps these tests to a second or two."""
    monkeypatch.setattr(render, "write_figures", lambda report, out: {})


def expected_p(accuracies, key, other):
    return scipy_stats.ttest_rel(accuracies[key], accuracies[other]).pvalue


def test_summary_csv_holds_p_vs_best_p_vs_constant_and_holm(tied, no_figures):
    paths = render.write_report(build_report(tied))
    summary = pd.read_csv(paths["summary"]).set_index(["schedule", "t0"])
    grid = [key for key in TIED if key[0] != "none"]
    versus_baseline = [expected_p(TIED, key, ("none", None)) for key in grid]
    for key, p, holm in zip(grid, versus_baseline, holm_by_hand(versus_baseline)):
        assert summary.loc[key, "p_value"] == pytest.approx(p, rel=1e-6)
        assert summary.loc[key, "holm_p_value"] == pytest.approx(holm, rel=1e-6)
    assert math.isnan(summary.loc[("constant", 10.0), "p_vs_best"])  # the best cell
    assert summary.loc[("constant", 5.0), "p_vs_best"] == pytest.approx(expected_p(TIED, ("constant", 5.0), ("constant", 10.0)), rel=1e-6)
    assert summary.loc[("linear", 5.0), "p_vs_constant"] == pytest.approx(expected_p(TIED, ("linear", 5.0), ("constant", 5.0)), rel=1e-6)
    assert math.isnan(summary.loc[("constant", 5.0), "p_vs_constant"])


def points(value):
    return f"{100 * value:+.1f}"


def difference_by_scipy(a, b):
    """Mean paired difference and its 95% t-interval, from scipy."""
    interval = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    return np.mean(np.subtract(a, b)), interval.low, interval.high


def test_verdict_names_the_confirmatory_test_the_cells_it_cannot_tell_apart_and_those_behind(tied):
    section = build_report(tied).settings[0]
    grid = [key for key in TIED if key[0] != "none"]
    holm = dict(zip(grid, holm_by_hand([expected_p(TIED, key, ("none", None)) for key in grid])))
    assert holm[("constant", 1.0)] < 0.05  # below no-KD after adjustment: KD hurt there
    best, five = ("constant", 10.0), ("constant", 5.0)
    assert expected_p(TIED, five, best) > 0.05
    assert expected_p(TIED, ("linear", 5.0), best) < 0.05 and expected_p(TIED, ("constant", 1.0), best) < 0.05
    percent = {key: f"{100 * np.mean(values):.1f}%" for key, values in TIED.items()}
    delta, low, high = difference_by_scipy(TIED[best], TIED[("none", None)])
    diff, diff_low, diff_high = difference_by_scipy(TIED[five], TIED[best])
    verdict_line = report_text.headline(section).splitlines()[0]
    assert verdict_line == (
        f"best: constant T=10, {percent[best]} on test (chosen on validation: {percent[best]}); "
        f"beats no-KD ({points(delta)} points, 95% CI {points(low)} to {points(high)}, "
        f"p = {expected_p(TIED, best, ('none', None)):.2g}: the table's one confirmatory test); "
        f"not distinguishable from constant T=5 ({percent[five]}, {points(diff)} points, "
        f"95% CI {points(diff_low)} to {points(diff_high)}); "
        f"ahead of linear T=5 ({percent[('linear', 5.0)]}) and constant T=1 ({percent[('constant', 1.0)]}) "
        f"(paired p < 0.05); KD hurt: constant T=1 ({percent[('constant', 1.0)]}) below no-KD (Holm-adjusted p < 0.05)")
    constant = section.table.rows["constant"]
    assert tables.format_cell(constant[10.0], True).endswith(" *") and tables.format_cell(constant[5.0], True).endswith(" *")
    assert tables.format_cell(constant[1.0], True).endswith(" †")  # worse than no-KD: not the better-mark
    assert "tied" not in report_text.headline(section)  # no equivalence margin set: nothing is called tied


def test_the_best_cell_is_chosen_on_validation_when_validation_and_test_disagree(tmp_path):
    """T=4 is best on validation, T=8 on test: the bold cell, the verdict's best and the best epoch follow
    validation, and the numbers reported are test's."""
    root = tmp_path / "runs" / "disagree"
    cells = {("constant", 4.0): ([0.70, 0.71, 0.70], [0.80, 0.81, 0.79]),
             ("constant", 8.0): ([0.75, 0.76, 0.74], [0.70, 0.72, 0.71]),
             ("none", None): ([0.60, 0.62, 0.61], [0.60, 0.62, 0.61])}
    for (schedule, t0), (test, val) in cells.items():
        for seed in range(3):
            write_run(root, f"{schedule}-T{t0}-s{seed}" if t0 else f"baseline-s{seed}", schedule, t0, seed,
                      test[seed], val_acc=val[seed])
    section = build_report(root).settings[0]
    row = section.table.rows["constant"]
    assert row[4.0].best and not row[8.0].best
    assert np.mean(cells[("constant", 8.0)][0]) > np.mean(cells[("constant", 4.0)][0])  # test would pick T=8
    assert report_text.headline(section).startswith(
        f"best: constant T=4, {100 * np.mean(cells[('constant', 4.0)][0]):.1f}% on test "
        f"(chosen on validation: {100 * np.mean(cells[('constant', 4.0)][1]):.1f}%)")
    assert "behind T=8" in report_text.headline(section)  # ahead of it on test, at paired p < 0.05
    summary = section.summary.set_index(["schedule", "t0"])
    assert summary.loc[("constant", 4.0), "chosen"] and not summary.loc[("constant", 8.0), "chosen"]
    assert summary.loc[("constant", 4.0), "mean_val_acc"] == pytest.approx(np.mean(cells[("constant", 4.0)][1]))
    # each run's best epoch is its best validation epoch: the last here, where validation peaks
    assert summary.loc[("constant", 8.0), "mean_test_acc_at_best_val"] == pytest.approx(
        np.mean(cells[("constant", 8.0)][0]))


def test_without_a_validation_split_the_report_says_it_chose_on_test(tmp_path):
    root = tmp_path / "runs" / "on-test"
    for seed, (low, high, base) in enumerate([(0.70, 0.75, 0.6), (0.71, 0.74, 0.61), (0.69, 0.76, 0.62)]):
        for schedule, t0, accuracy in (("constant", 4.0, low), ("constant", 8.0, high), ("none", None, base)):
            # val_fraction 0: no val_ cells, and summary.json says so
            write_run(root, f"{schedule}-T{t0}-s{seed}" if t0 else f"baseline-s{seed}", schedule, t0, seed,
                      accuracy, val_is_test=True)
    section = build_report(root).settings[0]
    text = report_text.headline(section)
    assert text.startswith("best: constant T=8, 75.0% (chosen on this test set: no validation split)")
    assert "Holm-adjusted p" in text.splitlines()[0] and "confirmatory" not in text
    assert "unadjusted 95% CI" in text.splitlines()[0]  # the p is adjusted over the cells, the interval is not
    assert text.splitlines()[-1].startswith("warning: chosen on the test set it reports")
    assert section.table.legend.startswith("bold = the row's best temperature on this test set (no validation split)")
    assert section.summary["mean_val_acc"].isna().all() and section.summary["mean_test_acc_at_best_val"].isna().all()


def test_a_validation_metric_is_not_reported_as_test_nor_its_test_called_confirmatory(tied):
    section = build_report(tied, "val_acc").settings[0]
    text = report_text.headline(section)
    assert text.startswith(f"best: constant T=10, {100 * np.mean(TIED[('constant', 10.0)]):.1f}% on validation (chosen on it too)")
    assert "confirmatory test)" not in text.splitlines()[0] and "Holm-adjusted p = " in text.splitlines()[0]
    assert "chosen and tested on validation: these tests explore" in text


def test_an_equivalence_margin_calls_a_cell_tied_only_when_tost_says_so(tied):
    """TOST by hand: the two one-sided t statistics of the paired differences against -margin and +margin."""
    close, far = ("constant", 5.0), ("linear", 5.0)
    best = ("constant", 10.0)

    def tost_by_hand(a, b, margin):
        d = np.subtract(a, b)
        se = d.std(ddof=1) / math.sqrt(len(d))
        lower = scipy_stats.t.sf((d.mean() + margin) / se, len(d) - 1)
        upper = scipy_stats.t.cdf((d.mean() - margin) / se, len(d) - 1)
        return max(lower, upper)

    assert tost_by_hand(TIED[close], TIED[best], 0.02) < 0.05 < tost_by_hand(TIED[far], TIED[best], 0.02)
    section = build_report(tied, statistics=ReportConfig(equivalence_margin=2.0)).settings[0]
    text = report_text.headline(section).splitlines()[0]
    diff, low, high = difference_by_scipy(TIED[close], TIED[best])
    assert (f"tied within ±2.0 points with constant T=5 ({100 * np.mean(TIED[close]):.1f}%, {points(diff)} points, "
            f"95% CI {points(low)} to {points(high)}) (equivalence test, TOST p < 0.05)") in text
    assert "not distinguishable" not in text
    # a difference the paired test finds is never called a tie, however wide the margin
    wide = report_text.headline(build_report(tied, statistics=ReportConfig(equivalence_margin=5.0)).settings[0])
    assert tost_by_hand(TIED[far], TIED[best], 0.05) < 0.05 and expected_p(TIED, far, best) < 0.05
    assert "ahead of linear T=5" in wide and "tied within ±5.0 points with constant T=5 (" in wide
    tests = section.tests.set_index(["schedule", "t0"])
    assert tests.loc[close, "tost_p_vs_best"] == pytest.approx(tost_by_hand(TIED[close], TIED[best], 0.02), rel=1e-9)
    assert tests.loc[far, "tost_p_vs_best"] == pytest.approx(tost_by_hand(TIED[far], TIED[best], 0.02), rel=1e-9)


def test_the_seed_plan_matches_statsmodels_ttestpower_at_the_sd_upper_bound(tied):
    from statsmodels.stats.power import TTestPower

    section = build_report(tied).settings[0]  # runner-up on validation: constant T=5
    differences = np.subtract(TIED[("constant", 10.0)], TIED[("constant", 5.0)])
    upper = differences.std(ddof=1) * math.sqrt(3 / scipy_stats.chi2.ppf(0.2, 3))  # 80% upper bound, 3 df
    planned = max(3, math.ceil(TTestPower().solve_power(effect_size=0.01 / upper, alpha=0.05, power=0.8)))
    assert report_text.headline(section).splitlines()[1] == (
        f"seed plan: detecting a 1-point difference between constant T=10 and constant T=5 with power 0.8 "
        f"(paired t-test, alpha 0.05) takes {planned} seeds, if the sd of per-seed differences is at most "
        f"{100 * upper:.2f} points (its 80% upper bound from 4 seeds; report.min_effect sets the difference)")
    bigger = build_report(tied, statistics=ReportConfig(min_effect=3.0)).settings[0]
    wanted = max(3, math.ceil(TTestPower().solve_power(effect_size=0.03 / upper, alpha=0.05, power=0.8)))
    assert f"takes {wanted} seeds" in report_text.headline(bigger).splitlines()[1]


@pytest.mark.parametrize("effect_size", [0.3, 0.8, 1.5])
def test_planned_seeds_reach_power_0_8_by_simulation(effect_size):
    n = stats.seeds_to_detect(effect_size, 1.0)
    generator = np.random.default_rng(1)
    samples = generator.normal(effect_size, 1.0, (20_000, n))
    rejected = scipy_stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() >= 0.8 - 0.015
    fewer = generator.normal(effect_size, 1.0, (20_000, n - 1))
    if n - 1 >= 3:
        assert (scipy_stats.ttest_1samp(fewer, 0.0, axis=1).pvalue < 0.05).mean() < 0.8 + 0.015


def test_no_seed_plan_from_fewer_than_three_seeds_or_no_spread(tmp_path):
    shifted = write_runs(tmp_path / "runs" / "shifted", {
        ("constant", 4.0): [0.70, 0.72], ("constant", 8.0): [0.73, 0.75], ("none", None): [0.60, 0.61]})
    text = report_text.headline(build_report(shifted).settings[0])
    assert "not tested against T=4 (71.0%: the same difference on every seed, so no t-test)" in text
    assert text.splitlines()[1] == (
        "no seed plan: constant T=8 and T=4 share 2 seed(s); the spread a plan needs takes at least 3")
    even = write_runs(tmp_path / "runs" / "even", {
        ("constant", 4.0): [0.70, 0.72, 0.71], ("constant", 8.0): [0.73, 0.75, 0.74], ("none", None): [0.6, 0.61, 0.6]})
    assert report_text.headline(build_report(even).settings[0]).splitlines()[1] == (
        "no seed plan: every seed's difference between constant T=8 and T=4 is the same")
    single = write_runs(tmp_path / "runs" / "single", {("constant", 4.0): [0.70], ("constant", 8.0): [0.72],
                                                        ("none", None): [0.60]})
    text = report_text.headline(build_report(single).settings[0])
    assert "is not distinguishable from no-KD (+12.0 points, 95% CI n/a, p n/a: the table's one confirmatory test)" in text
    assert "not tested against T=4 (70.0%: one seed)" in text


def test_kd_hurt_is_said_only_where_a_test_says_so(tmp_path):
    worse = {("constant", 1.0): [0.60, 0.61, 0.60, 0.62], ("constant", 4.0): [0.65, 0.66, 0.64, 0.66],
             ("none", None): [0.70, 0.72, 0.71, 0.73]}
    section = build_report(write_runs(tmp_path / "runs" / "worse", worse)).settings[0]
    text = report_text.headline(section)
    percent = {key: f"{100 * np.mean(values):.1f}%" for key, values in worse.items()}
    assert text.startswith(f"best: constant T=4, {percent[('constant', 4.0)]} on test")
    assert (f"KD hurt: T=4 ({percent[('constant', 4.0)]}) and T=1 ({percent[('constant', 1.0)]}) below no-KD "
            "(Holm-adjusted p < 0.05)") in text
    texts = [tables.format_cell(cell, True) for cell in section.table.rows["constant"].values()]
    assert all(t.endswith(" †") for t in texts) and not any("*" in t for t in texts)
    # every cell below no-KD on average, none by a test: no "hurt", and the best "is not distinguishable"
    noisy = {("constant", 1.0): [0.60, 0.75, 0.62, 0.74], ("constant", 4.0): [0.69, 0.71, 0.66, 0.74],
             ("none", None): [0.70, 0.72, 0.71, 0.73]}
    text = report_text.headline(build_report(write_runs(tmp_path / "runs" / "noisy", noisy)).settings[0])
    assert "hurt" not in text and "is not distinguishable from no-KD (" in text


def test_each_metric_has_its_title_markers_and_own_report_file(tied, no_figures):
    out = tied / "report"
    written = {metric: render.write_report(build_report(tied, metric), out)
               for metric in ("test_acc", "test_loss", "test_acc_at_best_val")}
    assert written["test_acc"]["markdown"] == out / "report.md" and written["test_loss"]["html"] == out / "report-test_loss.html"
    assert "Metric `test_acc`: test_acc (%), mean ± sd (n seeds), last epoch" in (out / "report.md").read_text()
    assert ("test_acc_at_best_val (%), mean ± sd (n seeds), each run's best-validation epoch"
            in (out / "report-test_acc_at_best_val.md").read_text())
    loss = build_report(tied, "test_loss").settings[0]
    assert loss.table.heading == "test_loss, mean ± sd (n seeds), last epoch"
    constant = loss.table.rows["constant"]  # test_loss = 1.5 - test_acc: lower is better, so the same marks
    assert tables.format_cell(constant[10.0], False).endswith(" *") and tables.format_cell(constant[1.0], False).endswith(" †")
    val = f"{100 * np.mean(TIED[('constant', 10.0)]):.1f}%"
    assert report_text.headline(loss).startswith(f"best: constant T=10, 0.756 on test (chosen on validation: {val}); ")
    assert "* / † = better / worse than the no-KD baseline" in (out / "report-test_loss.md").read_text()


def test_cli_titles_the_best_validation_epoch_table_and_refuses_the_old_name(tied, no_figures, run_cli):
    assert run_cli("report", "--runs-dir", tied.parent, "--name", "tied").code == 0
    first = (tied / "report" / "report.md").read_text()
    result = run_cli("report", "--runs-dir", tied.parent, "--name", "tied", "--metric", "test_acc_at_best_val")
    assert result.code == 0, result.stderr
    flat = " ".join(result.stdout.split())
    assert "test_acc_at_best_val (%), mean ± sd (n seeds), each run's best-validation epoch" in flat and "Holm-adjusted" in flat
    assert (tied / "report" / "report.md").read_text() == first and (tied / "report" / "report-test_acc_at_best_val.html").exists()
    old = run_cli("report", "--runs-dir", tied.parent, "--name", "tied", "--metric", "best_test_acc")
    assert old.code == 2 and "Traceback" not in old.stderr
    assert old.stderr.strip().splitlines() == [
        "error: --metric best_test_acc: best_test_acc chose each run's epoch on the test set it reported; "
        "use --metric test_acc_at_best_val (test accuracy at the epoch of best validation accuracy)"]


def test_report_takes_the_sweeps_grid_options(tied, no_figures, run_cli):
    """An exploratory T=1 run stays on disk; --temps 5,10 reports the grid asked for, as status does."""
    result = run_cli("report", "--runs-dir", tied.parent, "--name", "tied", "--temps", "5,10", "--schedules", "constant")
    assert result.code == 0, result.stderr
    summary = pd.read_csv(tied / "report" / "summary.csv")
    assert set(summary["t0"].dropna()) == {5.0, 10.0} and "linear" not in set(summary["schedule"])
    assert "8 completed runs of tied lie outside the grid asked for" in " ".join(result.stdout.split())
    assert run_cli("report", "--runs-dir", tied.parent, "--name", "tied").code == 0  # no options: every run
    assert set(pd.read_csv(tied / "report" / "summary.csv")["t0"].dropna()) == {1.0, 5.0, 10.0}
