"""The report on a synthetic experiment whose numbers are known: statistics, tables, files, plots, HTML."""

import html.parser
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import experiment as experiment_dir
from helpers import train_experiment, write_run
from matplotlib.image import imread
from scipy import stats as scipy_stats

from kdtemp.config.loading import load_config
from kdtemp.errors import RunsError
from kdtemp.report import render, tables
from kdtemp.report.build import build_report, problem_lines
from kdtemp.report.summary import ENTROPY_LADDER
from kdtemp.store.files import (
    atomic_torch_save,
    file_fingerprint,
    read_summary,
)
from kdtemp.store.layout import ExperimentLayout
from kdtemp.sweep.runner import sweep

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (from tables)

# last-epoch accuracies per (schedule, t0) and seed; the baseline is schedule 'none'
ACCURACY = {
    ("constant", 1.0): [0.60, 0.62, 0.61],
    ("constant", 4.0): [0.70, 0.75, 0.71],
    ("linear", 4.0): [0.66],  # n = 1: no spread, no test
    ("none", None): [0.58, 0.61, 0.59],
}


@pytest.fixture
def experiment(tmp_path):
    root = tmp_path / "runs" / "synthetic"
    for (schedule, t0), accuracies in ACCURACY.items():
        for seed, accuracy in enumerate(accuracies):
            name = f"{schedule}-T{t0}-s{seed}" if t0 else f"baseline-s{seed}"
            write_run(root, name, schedule, t0, seed, accuracy)
    write_run(root, "constant-T16-s0", "constant", 16.0, 0, 0.1, status="failed")
    truncated = write_run(root, "constant-T4-s9", "constant", 4.0, 9, 0.99)
    text = (truncated / "metrics.csv").read_text()
    (truncated / "metrics.csv").write_text(text[: len(text) - 40])  # cut mid-row, as a crash would
    unfinished = root / "students" / "constant-T8-s0"
    unfinished.mkdir()
    (root / "teacher").mkdir(parents=True)
    torch.save({"test_acc": 0.93, "test_loss": 0.2, "parameters": 20000, "num_classes": 4}, root / "teacher" / "model.pt")
    fingerprint = file_fingerprint(root / "teacher" / "model.pt")
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 4
    atomic_torch_save({"train": logits, "test": logits[:50]}, ExperimentLayout(root).teacher_logits_cache(fingerprint, "none"))
    return root


def test_statistics_match_closed_forms(experiment):
    built = build_report(experiment)
    summary = built.summary.set_index(["schedule", "t0"], drop=False)
    treated, control = np.array(ACCURACY[("constant", 4.0)]), np.array(ACCURACY[("none", None)])
    row = summary.loc[("constant", 4.0)]
    assert row["n"] == 3  # the truncated run is not averaged
    assert row["mean_test_acc"] == pytest.approx(treated.sum() / 3)
    sd = math.sqrt(((treated - treated.mean()) ** 2).sum() / 2)
    assert row["std_test_acc"] == pytest.approx(sd)
    assert row["ci95_test_acc"] == pytest.approx(T_975_DF2 * sd / math.sqrt(3))
    differences = treated - control
    assert row["delta_vs_baseline"] == pytest.approx(differences.mean())
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(3))
    assert row["p_value"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))  # two-sided, t with 2 df in closed form
    assert row["mean_test_acc_at_best_val"] == pytest.approx(row["mean_test_acc"])  # validation rose every epoch
    assert row["mean_agreement"] == pytest.approx(treated.mean() + 0.01)
    assert row["mean_kl_to_teacher"] == pytest.approx(0.5) and row["mean_ece"] == pytest.approx(0.05)


def test_single_seed_cells_have_no_spread_or_test(experiment):
    summary = build_report(experiment).summary
    single = summary[(summary["schedule"] == "linear")].iloc[0]
    assert single["n"] == 1 and single["mean_test_acc"] == pytest.approx(0.66)
    assert math.isnan(single["std_test_acc"]) and math.isnan(single["ci95_test_acc"]) and math.isnan(single["p_value"])
    assert single["delta_vs_baseline"] == pytest.approx(0.66 - 0.58)  # paired with seed 0 only


def test_failed_unfinished_and_unreadable_runs_are_listed_not_averaged(experiment):
    built = build_report(experiment)
    results = built.results
    assert [run for run, _ in results.failed] == ["constant-T16-s0"]
    assert results.unfinished == ["constant-T8-s0"]
    assert [run for run, _ in results.unreadable] == ["constant-T4-s9"]
    failed_row = built.summary[built.summary["t0"] == 16.0].iloc[0]
    assert failed_row["n"] == 0 and failed_row["failed"] == 1
    assert len(results.final) == 10  # 3 + 3 + 1 + 3 baselines; the broken three are left out
    lines = problem_lines(results)
    assert any("failed: constant-T16-s0: training loss became nan" in line for line in lines)
    assert any("unreadable: constant-T4-s9" in line for line in lines)


def test_baseline_and_teacher_rows(experiment):
    summary = build_report(experiment).summary
    baseline = summary[summary["schedule"] == "none"].iloc[0]
    assert baseline["mean_test_acc"] == pytest.approx(np.mean(ACCURACY[("none", None)]))
    assert math.isnan(baseline["p_value"])
    teacher = summary[summary["schedule"] == "teacher"].iloc[0]
    assert teacher["mean_test_acc"] == pytest.approx(0.93) and teacher["n"] == 1


def test_table_marks_best_and_significant_cells(experiment):
    table = build_report(experiment).table
    constant = table.rows["constant"]
    assert constant[4.0].best and not constant[1.0].best
    assert tables.format_cell(constant[4.0], True).startswith("72.0 ± 2.6 (3)")
    cell = constant[1.0]
    assert tables.format_cell(cell, True).endswith("*") == (cell.p_value < 0.05)
    assert set(table.references) == {"baseline (no KD)", "teacher"}


@pytest.mark.parametrize("metric, column", [("agreement", "agreement"), ("test_loss", "test_loss"), ("ece", "test_ece")])
def test_metric_option_switches_the_column(experiment, metric, column):
    built = build_report(experiment, metric)
    expected = np.mean([a + 0.01 for a in ACCURACY[("constant", 4.0)]]) if metric == "agreement" else None
    if expected is not None:
        assert built.table.rows["constant"][4.0].mean == pytest.approx(expected)
    assert built.table.metric == metric


def test_entropy_rises_with_temperature_and_stays_below_ln_classes(experiment):
    entropy = build_report(experiment).entropy
    assert set(ENTROPY_LADDER) | {1.0, 4.0} <= set(entropy["temperature"])
    assert entropy["mean_entropy"].is_monotonic_increasing
    assert (entropy["mean_entropy"] < math.log(4)).all()
    assert entropy["mean_max_prob"].is_monotonic_decreasing
    at_one = entropy.set_index("temperature").loc[1.0]
    assert at_one["relative_entropy"] == pytest.approx(1.0)
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)).double() * 4
    p = torch.softmax(logits / 4.0, -1)
    by_hand = float(-(p * p.log()).sum(-1).mean())
    assert entropy.set_index("temperature").loc[4.0, "mean_entropy"] == pytest.approx(by_hand, rel=1e-9)


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.tables = [], [], 0
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables += 1
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def test_files_plots_and_self_contained_html(experiment):
    paths = render.write_report(build_report(experiment))
    summary = pd.read_csv(paths["summary"])
    assert {"schedule", "alpha", "t0", "n", "mean_test_acc", "std_test_acc", "ci95_test_acc", "mean_test_acc_at_best_val", "mean_val_acc",
            "delta_vs_baseline", "p_value", "mean_test_loss", "mean_agreement", "mean_kl_to_teacher", "mean_ece",
            "failed"} <= set(summary.columns)
    assert pd.read_csv(paths["entropy"])["mean_entropy"].is_monotonic_increasing
    for key in ("accuracy_vs_temperature", "learning_curves", "temperature_schedules", "entropy_vs_temperature"):
        pixels = imread(paths[key])
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels[..., :3].std() > 0.05  # not blank
        assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20
    markdown = paths["markdown"].read_text()
    assert "| constant |" in markdown and "![Learning curves](learning_curves.png)" in markdown
    collector = _Collector()
    collector.feed(paths["html"].read_text())
    assert len(collector.images) == 4 and all(src.startswith("data:image/png;base64,") for src in collector.images)
    assert "72.0 ± 2.6 (3)" in " ".join(collector.cells)
    assert "http" not in paths["html"].read_text().replace("http-equiv", "")  # nothing fetched when opened


def test_cli_report_compares_experiments(experiment, run_cli):
    other = experiment.parent / "copy"
    shutil.copytree(experiment, other)
    result = run_cli("report", "--runs-dir", experiment.parent, "--name", "all")
    assert result.code == 0, result.stderr
    assert "synthetic: test_acc" in result.stdout and "copy: test_acc" in result.stdout
    combined = pd.read_csv(experiment.parent / "comparison" / "summary.csv")
    assert set(combined["experiment"]) == {"synthetic", "copy"}
    assert "failed: constant-T16-s0" in result.stderr


def test_cli_report_rejects_unknown_metric(experiment, run_cli):
    result = run_cli("report", "--runs-dir", experiment.parent, "--name", "synthetic", "--metric", "f1")
    assert result.code == 2 and "unknown metric 'f1'" in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(experiment, tmp_path):
    paths = render.write_report(build_report(experiment))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", paths["html"].as_uri()], capture_output=True, text=True, timeout=60)
    assert "72.0 ± 2.6 (3)" in dom.stdout and "temperature-table" in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,900", f"--screenshot={shot}", paths["html"].as_uri()],
                   capture_output=True, timeout=60)
    pixels = imread(shot)
    assert pixels[..., :3].std() > 0.05  # the page shows something, not a blank window


# --- settings, pairing and p-values (issue 12) ------------------------------------------------------


def last_epochs(root) -> pd.DataFrame:
    """Each completed run's last metrics row, read straight from its CSV, with its recorded identity."""
    rows = []
    for run_dir in ExperimentLayout(root).run_dirs():
        if getattr(read_summary(run_dir), "status", None) != "completed":
            continue
        row = pd.read_csv(run_dir / "metrics.csv").iloc[-1].to_dict()
        config = run_dir / "config.yaml"
        identity = yaml.safe_load(config.read_text())["identity"] if config.exists() else {}
        rows.append({**row, "epochs": identity.get("student", {}).get("epochs"), "hint": "hint" in identity})
    return pd.DataFrame(rows)


def expected_versus_baseline(cell: pd.DataFrame, baseline: pd.DataFrame, teacher: float) -> dict:
    """delta, p and gap_closed recomputed with pandas and scipy over the seeds both sides have."""
    paired = cell.merge(baseline, on="seed", suffixes=("", "_base"))
    base = paired["test_acc_base"].mean()
    # a teacher no better than no-KD leaves no gap to close
    gap = (paired["test_acc"].mean() - base) / (teacher - base) if teacher > base else float("nan")
    return {"n_paired": len(paired), "delta": (paired["test_acc"] - paired["test_acc_base"]).mean(),
            "p": scipy_stats.ttest_rel(paired["test_acc"], paired["test_acc_base"]).pvalue, "gap": gap}


def test_gap_closed_delta_and_p_use_only_the_paired_seeds(tmp_path):
    root = tmp_path / "runs" / "one-failed"
    for seed, accuracy in enumerate([0.58, 0.61, 0.50]):
        write_run(root, f"baseline-s{seed}", "none", None, seed, accuracy)
    for seed, accuracy in enumerate([0.70, 0.74]):
        write_run(root, f"constant-T4-s{seed}", "constant", 4.0, seed, accuracy)
    write_run(root, "constant-T4-s2", "constant", 4.0, 2, 0.1, status="failed")
    (root / "teacher").mkdir()
    torch.save({"test_acc": 0.93, "test_loss": 0.2}, root / "teacher" / "model.pt")
    row = build_report(root).summary.set_index("schedule").loc["constant"]
    runs = last_epochs(root)
    expected = expected_versus_baseline(runs[runs["schedule"] == "constant"], runs[runs["schedule"] == "none"], 0.93)
    assert row["n"] == 2 and row["failed"] == 1 and expected["n_paired"] == 2
    assert row["delta_vs_baseline"] == pytest.approx(expected["delta"], rel=1e-9)
    assert row["p_value"] == pytest.approx(expected["p"], rel=1e-9)
    assert row["gap_closed"] == pytest.approx(expected["gap"], rel=1e-9)


def test_a_grid_cell_without_a_p_value_shows_n_a(experiment):
    built = build_report(experiment)
    lines = render.summary_markdown(built.summary).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    p_values = {row["schedule"]: row["p_value"] for row in rows if row["t0"] in ("", "4")}
    assert p_values["linear"] == "n/a"  # one seed: no test
    assert p_values["none"] == "" and p_values["teacher"] == ""  # nothing to test them against
    assert p_values["constant"] == f"{built.summary.set_index(['schedule', 't0']).loc[('constant', 4.0), 'p_value']:.3g}"
    collector = _Collector()
    collector.feed(render.html_section(built, {}))
    assert "n/a" in collector.cells


def test_two_baselines_of_one_setting_and_seed_are_an_error_naming_both(tmp_path):
    root = tmp_path / "runs" / "twice"
    identity = {"student": {"epochs": 3}, "teacher": "abc"}
    write_run(root, "baseline-s0-aaaa", "none", None, 0, 0.6, identity=identity)
    write_run(root, "baseline-s0-bbbb", "none", None, 0, 0.7, identity=identity)
    write_run(root, "constant-T4-s0", "constant", 4.0, 0, 0.8, identity=identity)
    with pytest.raises(RunsError, match="baseline-s0-aaaa and baseline-s0-bbbb are no-KD baselines"):
        build_report(root)


def test_hint_and_plain_kd_are_two_settings_sharing_one_baseline(tmp_path):
    root = tmp_path / "runs" / "hints"
    plain = {"format": 1, "student": {"epochs": 3}, "teacher": "abc"}
    hinted = {**plain, "hint": {"weight": 0.5, "layers": None}}
    accuracies = {"none": [0.50, 0.55, 0.53], "plain": [0.60, 0.58, 0.64], "hinted": [0.66, 0.69, 0.65]}
    for seed in range(3):
        write_run(root, f"baseline-s{seed}", "none", None, seed, accuracies["none"][seed], identity=plain)
        write_run(root, f"constant-s{seed}", "constant", 4.0, seed, accuracies["plain"][seed], identity=plain)
        write_run(root, f"hinted-s{seed}", "constant", 4.0, seed, accuracies["hinted"][seed], identity=hinted)
    built = build_report(root)
    assert [s.label for s in built.settings] == ["kd.feature_weight = 0.5", "kd.feature_weight = off"]
    runs = last_epochs(root)
    baseline = runs[runs["schedule"] == "none"]
    for section in built.settings:
        row = section.summary.set_index("schedule").loc["constant"]
        cell = runs[(runs["schedule"] == "constant") & (runs["hint"] == ("0.5" in section.label))]
        expected = expected_versus_baseline(cell, baseline, 1.0)
        assert row["n"] == 3 and section.table.references["baseline (no KD)"].n == 3
        assert row["delta_vs_baseline"] == pytest.approx(expected["delta"], rel=1e-9)
        assert row["p_value"] == pytest.approx(expected["p"], rel=1e-9)


def test_two_sweeps_with_different_epochs_report_two_settings(tiny_config, run_cli):
    """The issue's example, scaled down: one experiment, a sweep at 1 student epoch, then one at 2."""
    grid = {"temperatures": [2], "seeds": [0, 1]}
    config = train_experiment(tiny_config("mixed", teacher={"channels": [8, 16], "hidden": 32, "epochs": 1},
                                          student={"hidden": [32], "epochs": 1}, kd=grid))
    sweep(load_config(config, {"student.epochs": (2, "--epochs")}))
    root = experiment_dir(config)
    built = build_report(root)
    assert built.summary.loc[built.summary["schedule"] == "constant", "n"].tolist() == [2, 2]  # never 4 mixed runs
    assert [section.label for section in built.settings] == ["student.epochs = 1", "student.epochs = 2"]
    runs = last_epochs(root)
    for section, epochs in zip(built.settings, (1, 2)):
        mine = runs[runs["epochs"] == epochs]
        cell, baseline = mine[mine["schedule"] == "constant"], mine[mine["schedule"] == "none"]
        expected = expected_versus_baseline(cell, baseline, built.results.teacher["test_acc"])
        row = section.summary.set_index("schedule").loc["constant"]
        assert row["n"] == 2 and expected["n_paired"] == 2
        assert row["mean_test_acc"] == pytest.approx(cell["test_acc"].mean(), rel=1e-9)
        assert row["delta_vs_baseline"] == pytest.approx(expected["delta"], rel=1e-9)
        assert row["p_value"] == pytest.approx(expected["p"], rel=1e-9, nan_ok=True)
        assert row["gap_closed"] == pytest.approx(expected["gap"], rel=1e-9, nan_ok=True)
    result = run_cli("report", "--config", config)
    assert result.code == 0, result.stderr
    assert "mixed (student.epochs = 1): test_acc" in result.stdout and "mixed (student.epochs = 2): test_acc" in result.stdout
    assert result.stdout.count("best: constant T=2") == 2
    summary = pd.read_csv(root / "report" / "summary.csv")
    assert summary.groupby("setting")["schedule"].apply(sorted).to_dict() == {
        "student.epochs = 1": ["constant", "none", "teacher"], "student.epochs = 2": ["constant", "none", "teacher"]}
    assert (root / "report" / "learning_curves-2.png").exists() and not (root / "report" / "learning_curves.png").exists()
