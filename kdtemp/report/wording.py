"""The verdict in words: the best cell, chosen on validation and reported on test, how every other cell
stands against it, its one confirmatory test against no-KD, and how many seeds a next study should plan.

Words follow the tests of kdtemp.report.verdict and nothing else: "behind" and "ahead" need paired
p < 0.05, "not distinguishable from" says only that the test could not tell (each such cell carries its
paired difference and 95% CI, so a reader sees how wide "could not tell" is), "tied" needs an equivalence
test (TOST) within a margin the user set, and "KD hurt" needs a Holm-adjusted test that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pandas as pd

from kdtemp.report import stats, verdict
from kdtemp.report.verdict import GRID_KEYS, SIGNIFICANCE, cell_key, paired_values, pairing, ranked

MORE_NAMES = 4
"""Cells named in one clause before the rest are counted ("and 3 more")."""
PLANNING_POWER = 0.8
SD_CONFIDENCE = 0.8
"""The planning line assumes the sd of per-seed differences is at most its 80% upper confidence bound."""


@dataclass
class Wording:
    """How the verdict names cells and numbers for one table."""

    percent: bool
    higher_better: bool
    several_alphas: bool = False
    generations: bool = False
    several_schedules: bool = False
    reported_on: str = "test"
    """The split the table's metric is measured on: "test", or "validation" for val_acc."""

    def value(self, value: float) -> str:
        return f"{100 * value:.1f}%" if self.percent else f"{value:.3f}"

    def difference(self, value: float) -> str:
        """A difference of two means: `+1.2 points` (of percent), else `+0.012`."""
        return f"{100 * value:+.1f} points" if self.percent else f"{value:+.3f}"

    def interval(self, low: float, high: float) -> str:
        if pd.isna(low) or pd.isna(high):
            return "95% CI n/a"
        scale, digits = (100, 1) if self.percent else (1, 3)
        return f"95% CI {scale * low:+.{digits}f} to {scale * high:+.{digits}f}"

    def name(self, row, relative_to=None) -> str:
        """`constant T=10`; just `T=5` beside a best cell of the same schedule, alpha and generation, when the
        table has one schedule (with several, `T=2` alone would not say whose)."""
        temperature = "" if pd.isna(row["t0"]) else f"T={row['t0']:g}"
        same = (
            relative_to is not None
            and not self.several_schedules
            and all(row[k] == relative_to[k] for k in ("schedule", "alpha", "generation"))
        )
        parts = [] if same and temperature else [str(row["schedule"])]
        parts.append(temperature)
        if self.several_alphas and not same:
            parts.append(f"alpha {row['alpha']:g}")
        if self.generations and not same:
            parts.append(f"gen {int(row['generation'])}")
        return " ".join(part for part in parts if part)


def p_text(p: float, label: str = "p") -> str:
    return f"{label} n/a" if pd.isna(p) else f"{label} = {p:.2g}"


def names_text(names: list[str]) -> str:
    shown = names[:MORE_NAMES] + ([f"{len(names) - MORE_NAMES} more"] if len(names) > MORE_NAMES else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def untested_reason(row) -> str:
    """Why a cell has no paired test against the best. With the same difference on every seed the t-test is
    undefined (zero spread), though every seed agrees on the direction; no test over so few seeds could reach
    p < 0.05 anyway (a sign-flip test over n seeds cannot go below 2 / 2^n)."""
    if row["n"] < 2:
        return "one seed"
    return "the same difference on every seed, so no t-test"


def best_text(best, wording: Wording) -> str:
    """`constant T=5, 74.0% on test (chosen on validation: 71.3%)`: what the cell gives, then what it was
    chosen on."""
    text = f"{wording.name(best)}, {wording.value(best['mean'])}"
    if not best["chosen_on_val"]:
        return f"{text} (chosen on this test set: no validation split)"
    if wording.reported_on == "validation":
        return f"{text} on validation (chosen on it too)"
    return f"{text} on test (chosen on validation: {100 * best['val_mean']:.1f}%)"


def clauses(
    tests: pd.DataFrame, has_baseline: bool, wording: Wording, margin: float | None = None
) -> list[str]:
    """After "best: ...": the best cell against no-KD, then every other cell against the best, then where KD
    hurt."""
    best = tests[tests["best"]].iloc[0]
    parts = [versus_no_kd(best, wording)] if has_baseline else []
    groups: dict[str, list] = {}
    for _, row in ranked(tests[~tests["best"]], wording.higher_better).iterrows():
        groups.setdefault(verdict.compared_with_best(row, wording.higher_better, margin), []).append(row)

    def listed(rows: list, with_difference: bool) -> str:
        return names_text(
            [
                f"{wording.name(row, best)} ({wording.value(row['mean'])}"
                + (
                    f", {wording.difference(row['diff_vs_best'])}, "
                    f"{wording.interval(row['diff_vs_best_low'], row['diff_vs_best_high'])})"
                    if with_difference
                    else ")"
                )
                for row in rows
            ]
        )

    if "tied" in groups:
        assert margin is not None  # "tied" needs one
        parts.append(
            f"tied within ±{wording.difference(margin).lstrip('+')} with {listed(groups['tied'], True)} "
            f"(equivalence test, TOST p < {SIGNIFICANCE:g})"
        )
    if "indistinguishable" in groups:
        parts.append(f"not distinguishable from {listed(groups['indistinguishable'], True)}")
    if "behind" in groups:
        parts.append(f"ahead of {listed(groups['behind'], False)} (paired p < {SIGNIFICANCE:g})")
    if "ahead" in groups:
        parts.append(f"behind {listed(groups['ahead'], True)} on test (paired p < {SIGNIFICANCE:g})")
    if "untested" in groups:
        parts.append(
            "not tested against "
            + names_text(
                [
                    f"{wording.name(row, best)} ({wording.value(row['mean'])}: {untested_reason(row)})"
                    for row in groups["untested"]
                ]
            )
        )
    hurt = _hurt(tests, best, wording)
    if has_baseline and hurt:
        parts.append(hurt)
    return parts


def versus_no_kd(best, wording: Wording) -> str:
    """The chosen cell against no-KD: its paired difference, 95% CI and p; the table's one confirmatory
    test when the cell was chosen on validation."""
    outcome = verdict.confirmed(best, wording.higher_better)
    verb = {"better": "beats no-KD", "worse": "is below no-KD", "": "is not distinguishable from no-KD"}[
        outcome
    ]
    difference = wording.difference(best["delta_vs_baseline"])
    interval = wording.interval(best["delta_low"], best["delta_high"])
    if best["confirmatory"]:
        return (
            f"{verb} ({difference}, {interval}, {p_text(best['p_value'])}: the table's one confirmatory test)"
        )
    # the p is adjusted over the table's cells, the interval is not: say so, or a CI clear of 0 beside
    # "not distinguishable" reads as a contradiction
    return f"{verb} ({difference}, unadjusted {interval}, {p_text(best['holm_p_value'], 'Holm-adjusted p')})"


def _hurt(tests: pd.DataFrame, best, wording: Wording) -> str | None:
    """ "KD hurt: ..." for the cells a Holm-adjusted test puts below no-KD, and only those."""
    worse = [
        row
        for _, row in ranked(tests, wording.higher_better).iterrows()
        if verdict.significant(row, wording.higher_better) == "worse"
    ]
    if not worse:
        return None
    named = names_text([f"{wording.name(row, best)} ({wording.value(row['mean'])})" for row in worse])
    return f"KD hurt: {named} below no-KD (Holm-adjusted p < {SIGNIFICANCE:g})"


def planning_line(
    final: pd.DataFrame, column: str, tests: pd.DataFrame, wording: Wording, min_effect: float
) -> str | None:
    """How many seeds a study needs to detect `min_effect` (in the table's units: points for percent)
    between the best cell and its runner-up with power 0.8 (paired t-test, alpha 0.05).

    A plan, not post-hoc power: the effect is the smallest one worth detecting, given in advance, and the
    sd of the per-seed differences is its 80% upper confidence bound from the seeds run
    (`stats.sd_upper_bound`), so the plan errs towards more seeds. None for a table of one cell."""
    best = tests[tests["best"]]
    second = verdict.runner_up(tests, wording.higher_better)
    if best.empty or second is None:
        return None
    first = best.iloc[0]
    cells = {cell_key(*key): part for key, part in final.groupby(GRID_KEYS, dropna=False, sort=False)}
    a, b = paired_values(
        cells[cell_key(*first[GRID_KEYS])], cells[cell_key(*second[GRID_KEYS])], column, pairing(final)
    )
    differences = [x - y for x, y in zip(a, b, strict=False)]
    pair = f"{wording.name(first)} and {wording.name(second, first)}"
    effect = cast(float, verdict.in_table_units(min_effect, wording.percent))
    effect_text = f"{min_effect:g}-point" if wording.percent else f"{min_effect:g}"
    if len(differences) < 3:
        return (
            f"no seed plan: {pair} share {len(differences)} seed(s); the spread a plan needs takes at least 3"
        )
    if verdict.no_spread(differences):
        return f"no seed plan: every seed's difference between {pair} is the same"
    upper = stats.sd_upper_bound(stats.std(differences), len(differences) - 1, SD_CONFIDENCE)
    needed = stats.seeds_to_detect(effect, upper, PLANNING_POWER, SIGNIFICANCE)
    spread = f"{100 * upper:.2f} points" if wording.percent else f"{upper:.3g}"
    how_many = f"{needed} seeds" if needed is not None else "more than 10,000 seeds"
    return (
        f"seed plan: detecting a {effect_text} difference between {pair} with power {PLANNING_POWER:g} "
        f"(paired t-test, alpha {SIGNIFICANCE:g}) takes {how_many}, if the sd of per-seed differences is at "
        f"most {spread} (its {100 * SD_CONFIDENCE:.0f}% upper bound from {len(differences)} seeds; "
        "report.min_effect sets the difference)"
    )
