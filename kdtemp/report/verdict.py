"""Which temperature, and which schedule: every grid cell of one setting tested against the no-KD
baseline, the best cell and constant at its t0, and the answer put in words.

Every test is the paired t-test over seeds (`stats.paired_t_test`): students of one seed share their
initial weights and batch order, and a cell pairs with the baseline of its own setting and seed.
The p-values against the baseline are Holm-adjusted over the table (`stats.holm`), since a table of
20 cells stars one by chance at p < 0.05 more often than not. The comparisons with the best cell and
with constant are reported unadjusted: they say which cells a reader cannot tell apart, and an
adjustment would only make more of them look tied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from kdtemp.report import stats
from kdtemp.store.records import BASELINE

GRID_KEYS = ["schedule", "alpha", "t0", "generation"]
CONSTANT = "constant"
SIGNIFICANCE = 0.05
TEST_COLUMNS = [
    *GRID_KEYS,
    "n",
    "mean",
    "delta_vs_baseline",
    "p_value",
    "holm_p_value",
    "p_vs_best",
    "p_vs_constant",
    "best",
]
SUMMARY_TEST_COLUMNS = ("delta_vs_baseline", "p_value", "holm_p_value", "p_vs_best", "p_vs_constant")
"""What summary.csv takes from cell_tests, so each test is computed once."""
MORE_NAMES = 4
"""Cells named in one clause before the rest are counted ("and 3 more")."""


def cell_key(schedule, alpha, t0, generation) -> tuple:
    """(schedule, alpha, t0 or None, generation) with plain Python numbers, as summary rows are keyed."""
    return schedule, float(alpha), None if pd.isna(t0) else float(t0), int(generation)


def paired_values(cell: pd.DataFrame, other: pd.DataFrame, column: str, on: list[str]) -> tuple[list, list]:
    """`column` of `cell` and of `other` over exactly the seeds both have (matched on `on`), in seed order."""
    left, right = cell[[*on, column]].dropna(), other[[*on, column]].dropna()
    paired = left.merge(right, on=on, suffixes=("", "_other"), validate="many_to_one").sort_values(on)
    return paired[column].tolist(), paired[f"{column}_other"].tolist()


def _pairing(frame: pd.DataFrame) -> list[str]:
    """Cells of one setting pair by seed; with the setting column present, never across settings."""
    return ["setting", "seed"] if "setting" in frame else ["seed"]


def baseline_pairing(frame: pd.DataFrame) -> list[str]:
    """A cell pairs with the no-KD runs of its own baseline setting, seed by seed."""
    return ["baseline_setting", "seed"] if "baseline_setting" in frame else ["seed"]


def cell_tests(final: pd.DataFrame, column: str, higher_better: bool) -> pd.DataFrame:
    """One row per grid cell of one setting: n, mean, delta_vs_baseline, p_value (paired, against no-KD),
    holm_p_value (over the table), p_vs_best, p_vs_constant (same alpha, t0 and generation) and `best`."""
    if final.empty or column not in final:
        return pd.DataFrame(columns=TEST_COLUMNS)
    grid = final[(final["schedule"] != BASELINE) & final[column].notna()]
    baseline = final[(final["schedule"] == BASELINE) & final[column].notna()]
    cells = {cell_key(*key): part for key, part in grid.groupby(GRID_KEYS, dropna=False, sort=False)}
    if not cells:
        return pd.DataFrame(columns=TEST_COLUMNS)
    means = {key: stats.mean(part[column].tolist()) for key, part in cells.items()}
    best = (max if higher_better else min)(means, key=means.__getitem__)
    rows = [_cell_row(key, part, cells, best, baseline, column) for key, part in cells.items()]
    frame = pd.DataFrame(rows, columns=TEST_COLUMNS)
    frame["holm_p_value"] = stats.holm(frame["p_value"].tolist())
    frame["best"] = [cell_key(*key) == best for key in frame[GRID_KEYS].itertuples(index=False)]
    return frame


def _cell_row(
    key: tuple, part: pd.DataFrame, cells: dict, best: tuple, baseline: pd.DataFrame, column: str
) -> dict:
    row = dict(zip(GRID_KEYS, key, strict=False), n=len(part), mean=stats.mean(part[column].tolist()))
    if not baseline.empty:
        treated, control = paired_values(part, baseline, column, baseline_pairing(part))
        row["delta_vs_baseline"] = stats.mean([a - b for a, b in zip(treated, control, strict=False)])
        row["p_value"] = stats.paired_t_test(treated, control)
    if key != best:
        row["p_vs_best"] = stats.paired_t_test(*paired_values(part, cells[best], column, _pairing(part)))
    constant = (CONSTANT, *key[1:])
    if key[0] != CONSTANT and constant in cells:
        row["p_vs_constant"] = stats.paired_t_test(
            *paired_values(part, cells[constant], column, _pairing(part))
        )
    return row


def significant(row, higher_better: bool) -> str:
    """ "better" or "worse" than no-KD at Holm-adjusted p < 0.05, else ""."""
    p, delta = row["holm_p_value"], row["delta_vs_baseline"]
    if pd.isna(p) or p >= SIGNIFICANCE or pd.isna(delta) or delta == 0:
        return ""
    return "better" if (delta > 0) == higher_better else "worse"


# --- the verdict in words ------------------------------------------------------------------------


@dataclass
class Wording:
    """How the verdict names cells and numbers for one table."""

    percent: bool
    higher_better: bool
    several_alphas: bool = False
    generations: bool = False
    several_schedules: bool = False

    def value(self, value: float) -> str:
        return f"{100 * value:.1f}%" if self.percent else f"{value:.3f}"

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


def untested_reason(row) -> str:
    """Why a cell has no paired test against the best. With the same difference on every seed the t-test is
    undefined (zero spread), though every seed agrees on the direction; no test over so few seeds could reach
    p < 0.05 anyway (a sign-flip test over n seeds cannot go below 2 / 2^n)."""
    if row["n"] < 2:
        return "one seed"
    return "the same difference on every seed, so no t-test"


def names_text(names: list[str]) -> str:
    shown = names[:MORE_NAMES] + ([f"{len(names) - MORE_NAMES} more"] if len(names) > MORE_NAMES else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def ranked(tests: pd.DataFrame, wording: Wording) -> pd.DataFrame:
    """Grid cells from best to worst."""
    return tests.sort_values("mean", ascending=not wording.higher_better, kind="stable")


def ties(tests: pd.DataFrame, wording: Wording) -> pd.DataFrame:
    """Cells the paired test cannot tell from the best: p_vs_best >= 0.05."""
    others = ranked(tests, wording)
    others = others[~others["best"]]
    return others[others["p_vs_best"] >= SIGNIFICANCE]


def untested(tests: pd.DataFrame, wording: Wording) -> pd.DataFrame:
    """Cells with no paired test against the best: one seed, or the same difference on every seed
    (t undefined)."""
    others = ranked(tests, wording)
    return others[~others["best"] & others["p_vs_best"].isna()]


def clauses(tests: pd.DataFrame, baseline_mean: float, wording: Wording) -> list[str]:
    """After "best: ...": which cells tie with it, whether they beat no-KD after adjustment, where KD hurt."""
    best = tests[tests["best"]].iloc[0]
    tied = ties(tests, wording)
    parts = []
    unknown = untested(tests, wording)
    if len(tied):
        parts.append(
            "tied with "
            + names_text(
                [
                    f"{wording.name(row, best)} ({wording.value(row['mean'])}, {p_text(row['p_vs_best'])})"
                    for _, row in tied.iterrows()
                ]
            )
        )
    elif len(tests) > len(unknown) + 1:
        parts.append(f"ahead of every other cell tested (paired p < {SIGNIFICANCE:g} against each)")
    if len(unknown):
        parts.append(
            "not tested against "
            + names_text(
                [
                    f"{wording.name(row, best)} ({wording.value(row['mean'])}: {untested_reason(row)})"
                    for _, row in unknown.iterrows()
                ]
            )
        )
    if not math.isnan(baseline_mean):
        parts.append(_versus_no_kd(pd.concat([best.to_frame().T, tied]), best, wording))
        hurt = _hurt(tests, best, baseline_mean, wording)
        if hurt:
            parts.append(hurt)
    return parts


def _versus_no_kd(group: pd.DataFrame, best, wording: Wording) -> str:
    """Whether the best cell and its ties beat no-KD at Holm-adjusted p < 0.05, grouped by outcome."""
    plural = {"better": "beat no-KD", "": "are not distinguishable from no-KD", "worse": "are below no-KD"}
    singular = {"better": "beats no-KD", "": "is not distinguishable from no-KD", "worse": "is below no-KD"}
    if len(group) == 1:
        outcome = singular[significant(best, wording.higher_better)].removeprefix("is ")
        return f"{outcome} ({p_text(best['holm_p_value'], 'adjusted p')})"
    by_outcome: dict[str, list] = {}
    for _, row in group.iterrows():
        by_outcome.setdefault(significant(row, wording.higher_better), []).append(row)
    if len(by_outcome) == 1:
        return _all_alike(next(iter(by_outcome)), group)
    return "; ".join(
        f"{names_text([wording.name(row, best) for row in rows])} "
        f"{(singular if len(rows) == 1 else plural)[outcome]} "
        f"({', '.join(p_text(row['holm_p_value'], 'adjusted p') for row in rows)})"
        for outcome, rows in by_outcome.items()
    )


def _all_alike(outcome: str, group: pd.DataFrame) -> str:
    """ "both beat no-KD (adjusted p < 0.05)", "neither is distinguishable from no-KD (adjusted p n/a)",
    ..."""
    untested = group["holm_p_value"].isna()
    if not outcome:
        threshold = (
            "adjusted p n/a"
            if untested.all()
            else f"adjusted p >= {SIGNIFICANCE:g}" + (" or n/a" if untested.any() else "")
        )
        every = "neither is" if len(group) == 2 else f"none of the {len(group)} is"
        return f"{every} distinguishable from no-KD ({threshold})"
    every = "both" if len(group) == 2 else f"all {len(group)}"
    return f"{every} {'beat' if outcome == 'better' else 'are below'} no-KD (adjusted p < {SIGNIFICANCE:g})"


def _hurt(tests: pd.DataFrame, best, baseline_mean: float, wording: Wording) -> str | None:
    """ "KD hurt: ..." when even the best cell falls short of no-KD, or some cells fall significantly below
    it."""
    worse = [
        row
        for _, row in ranked(tests, wording).iterrows()
        if significant(row, wording.higher_better) == "worse"
    ]
    named = (
        names_text([f"{wording.name(row, best)} ({wording.value(row['mean'])})" for row in worse])
        if worse
        else ""
    )
    if (best["mean"] < baseline_mean) == wording.higher_better and best["mean"] != baseline_mean:
        below = f"; significantly below it (adjusted p < {SIGNIFICANCE:g}): {named}" if worse else ""
        return f"KD hurt: every cell falls short of no-KD's {wording.value(baseline_mean)}{below}"
    if worse:
        return (
            f"KD hurt: {named} below no-KD's {wording.value(baseline_mean)} (adjusted p < {SIGNIFICANCE:g})"
        )
    return None


def separation_line(final: pd.DataFrame, column: str, tests: pd.DataFrame, wording: Wording) -> str | None:
    """How many more seeds would separate the top two cells at the observed spread, when the test does not.

    From the per-seed differences d of the top two (mean m, sd s): the fewest pairs at which the two-sided
    paired t-test at alpha 0.05 has power 0.8 with effect size m / s, solved exactly with the noncentral t
    (`stats.seeds_needed`)."""
    order = ranked(tests, wording)
    if len(order) < 2:
        return None
    first, second = order.iloc[0], order.iloc[1]
    if not pd.isna(second["p_vs_best"]) and second["p_vs_best"] < SIGNIFICANCE:
        return None
    cells = {cell_key(*key): part for key, part in final.groupby(GRID_KEYS, dropna=False, sort=False)}
    a, b = paired_values(
        cells[cell_key(*first[GRID_KEYS])], cells[cell_key(*second[GRID_KEYS])], column, _pairing(final)
    )
    differences = [x - y for x, y in zip(a, b, strict=False)]
    pair = f"{wording.name(first)} from {wording.name(second, first)}"
    needed = stats.seeds_needed(differences)
    if needed is not None:
        if needed <= len(differences):
            return (
                f"{len(differences)} seeds should already separate {pair} at the observed spread "
                "(power 0.8), "
                "so their tie may be chance; more seeds would tell"
            )
        return (
            f"{needed - len(differences)} more seeds would separate {pair} at the observed spread "
            "(paired t-test, alpha 0.05, power 0.8, noncentral t)"
        )
    if len(differences) < 2:
        return f"cannot say how many seeds would separate {pair}: a spread needs at least 2 seeds they share"
    if abs(stats.mean(differences)) <= stats.TIE_TOLERANCE:
        return f"no number of seeds would separate {pair}: identical means"
    if max(differences) - min(differences) <= stats.TIE_TOLERANCE:
        return f"cannot say how many seeds would separate {pair}: every seed's difference is the same"
    return f"more than a million seeds would separate {pair} at the observed spread"
