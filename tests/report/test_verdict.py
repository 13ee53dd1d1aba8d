"""The verdict (issue 16): paired tests against no-KD, the best cell and constant, Holm's adjustment, the
verdict sentence, markers and the seeds a tie would need, each against scipy or a hand-written reference."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from helpers import write_run

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


def power_by_scipy(effect_size, n):
    """Two-sided paired t-test power at alpha 0.05 with n pairs, from scipy's noncentral t."""
    critical = scipy_stats.t.ppf(0.975, n - 1)
    noncentrality = effect_size * math.sqrt(n)
    return scipy_stats.nct.sf(critical, n - 1, noncentrality) + scipy_stats.nct.cdf(-critical, n - 1, noncentrality)


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


def test_verdict_names_the_tie_the_no_kd_test_and_where_kd_hurt(tied):
    section = build_report(tied).settings[0]
    grid = [key for key in TIED if key[0] != "none"]
    holm = dict(zip(grid, holm_by_hand([expected_p(TIED, key, ("none", None)) for key in grid])))
    assert holm[("constant", 10.0)] < 0.05 and holm[("constant", 5.0)] < 0.05 and holm[("constant", 1.0)] < 0.05
    tie = expected_p(TIED, ("constant", 5.0), ("constant", 10.0))
    assert tie > 0.05
    percent = {key: f"{100 * np.mean(values):.1f}%" for key, values in TIED.items()}
    verdict_line = report_text.headline(section).splitlines()[0]
    assert verdict_line == (f"best: constant T=10, {percent[('constant', 10.0)]}; tied with constant T=5 ({percent[('constant', 5.0)]}, "
                            f"p = {tie:.2g}); both beat no-KD (adjusted p < 0.05); KD hurt: constant T=1 ({percent[('constant', 1.0)]}) "
                            f"below no-KD's {percent[('none', None)]} (adjusted p < 0.05)")
    constant = section.table.rows["constant"]
    assert tables.format_cell(constant[10.0], True).endswith(" *") and tables.format_cell(constant[5.0], True).endswith(" *")
    assert tables.format_cell(constant[1.0], True).endswith(" †")  # worse than no-KD: not the better-mark


def test_the_tie_says_how_many_more_seeds_would_separate_the_top_two(tied):
    section = build_report(tied).settings[0]
    differences = np.subtract(TIED[("constant", 10.0)], TIED[("constant", 5.0)])
    effect_size = differences.mean() / differences.std(ddof=1)
    needed = next(n for n in range(2, 10_000) if power_by_scipy(effect_size, n) >= 0.8)
    assert report_text.headline(section).splitlines()[1].startswith(
        f"{needed - 4} more seeds would separate constant T=10 from constant T=5 at the observed spread")


@pytest.mark.parametrize("effect_size", [0.3, 0.8, 1.5])
def test_seeds_needed_reaches_power_0_8_by_scipy_and_by_simulation(effect_size):
    differences = [effect_size + x for x in (-1.0, 0.0, 1.0)]  # mean effect_size, sd 1
    n = stats.seeds_needed(differences)
    assert power_by_scipy(effect_size, n) >= 0.8 > power_by_scipy(effect_size, n - 1)
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert (z / effect_size) ** 2 <= n <= (z / effect_size) ** 2 + 3  # the normal approximation, plus the t's tails
    generator = np.random.default_rng(1)
    samples = generator.normal(effect_size, 1.0, (20_000, n))
    rejected = scipy_stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(power_by_scipy(effect_size, n), abs=0.015)


def test_separation_cannot_be_estimated_for_identical_means_or_one_seed(tmp_path):
    same = write_runs(tmp_path / "runs" / "same", {
        ("constant", 4.0): [0.70, 0.72, 0.71, 0.73], ("constant", 8.0): [0.72, 0.70, 0.73, 0.71],
        ("none", None): [0.60, 0.61, 0.60, 0.62]})
    line = report_text.headline(build_report(same).settings[0]).splitlines()[1]
    assert line.endswith(": identical means") and "separate constant T=" in line
    shifted = write_runs(tmp_path / "runs" / "shifted", {
        ("constant", 4.0): [0.70, 0.72], ("constant", 8.0): [0.73, 0.75], ("none", None): [0.60, 0.61]})
    assert "not tested against T=4 (71.0%: the same difference on every seed, so no t-test)" in report_text.headline(
        build_report(shifted).settings[0])
    single = write_runs(tmp_path / "runs" / "single", {("constant", 4.0): [0.70], ("constant", 8.0): [0.72],
                                                        ("none", None): [0.60]})
    text = report_text.headline(build_report(single).settings[0])
    assert "not tested against T=4 (70.0%: one seed); not distinguishable from no-KD (adjusted p n/a)" in text
    assert text.splitlines()[1].endswith("a spread needs at least 2 seeds they share")


def test_kd_hurt_everywhere_is_said_in_words_and_marked_worse(tmp_path):
    worse = {("constant", 1.0): [0.60, 0.61, 0.60, 0.62], ("constant", 4.0): [0.65, 0.66, 0.64, 0.66],
             ("none", None): [0.70, 0.72, 0.71, 0.73]}
    section = build_report(write_runs(tmp_path / "runs" / "worse", worse)).settings[0]
    text = report_text.headline(section)
    percent = {key: f"{100 * np.mean(values):.1f}%" for key, values in worse.items()}
    assert text.startswith(f"best: constant T=4, {percent[('constant', 4.0)]}")
    assert (f"KD hurt: every cell falls short of no-KD's {percent[('none', None)]}; significantly below it (adjusted p < 0.05): "
            f"T=4 ({percent[('constant', 4.0)]}) and T=1 ({percent[('constant', 1.0)]})") in text
    texts = [tables.format_cell(cell, True) for cell in section.table.rows["constant"].values()]
    assert all(t.endswith(" †") for t in texts) and not any("*" in t for t in texts)


def test_each_metric_has_its_title_markers_and_own_report_file(tied, no_figures):
    out = tied / "report"
    written = {metric: render.write_report(build_report(tied, metric), out) for metric in ("test_acc", "test_loss", "best_test_acc")}
    assert written["test_acc"]["markdown"] == out / "report.md" and written["test_loss"]["html"] == out / "report-test_loss.html"
    assert "Metric `test_acc`: test_acc (%), mean ± sd (n seeds), last epoch" in (out / "report.md").read_text()
    assert "best_test_acc (%), mean ± sd (n seeds), each run's best epoch" in (out / "report-best_test_acc.md").read_text()
    loss = build_report(tied, "test_loss").settings[0]
    assert loss.table.heading == "test_loss, mean ± sd (n seeds), last epoch"
    constant = loss.table.rows["constant"]  # test_loss = 1.5 - test_acc: lower is better, so the same marks
    assert tables.format_cell(constant[10.0], False).endswith(" *") and tables.format_cell(constant[1.0], False).endswith(" †")
    assert report_text.headline(loss).startswith("best: constant T=10, 0.756; tied with constant T=5 (0.760")
    assert "* / † = better / worse than the no-KD baseline" in (out / "report-test_loss.md").read_text()


def test_cli_titles_the_best_epoch_table_and_keeps_report_md(tied, no_figures, run_cli):
    assert run_cli("report", "--runs-dir", tied.parent, "--name", "tied").code == 0
    first = (tied / "report" / "report.md").read_text()
    result = run_cli("report", "--runs-dir", tied.parent, "--name", "tied", "--metric", "best_test_acc")
    assert result.code == 0, result.stderr
    flat = " ".join(result.stdout.split())
    assert "best_test_acc (%), mean ± sd (n seeds), each run's best epoch" in flat and "Holm-adjusted" in flat
    assert (tied / "report" / "report.md").read_text() == first and (tied / "report" / "report-best_test_acc.html").exists()
