"""The tables the CLI prints: the accuracy-versus-temperature grid and the runs of `kdtemp status`.

They are rich Tables built from the library's records; the CLI decides where they are printed.
"""

from __future__ import annotations

from rich.console import JustifyMethod
from rich.table import Table

from kdtemp.store.records import Status

PARTIAL_EPOCH = "partial: latest completed epoch"
STATE_COLOURS = {
    Status.COMPLETED: "green",
    Status.RUNNING: "cyan",
    Status.FAILED: "red",
    Status.PRUNED: "magenta",
    Status.INTERRUPTED: "yellow",
    Status.PENDING: "dim",
}
"""One colour per state a run can be in (a search's pruned runs included)."""


def temperature_table(title: str, table, epoch: str | None = None) -> Table:
    """The accuracy-versus-temperature table (a report.tables.TemperatureTable) for the terminal."""
    from kdtemp.report.tables import table_rows

    heading = table.heading if epoch is None else f"{table.heading.rsplit(', ', 1)[0]}, {epoch}"
    grid = Table(title=f"{title}: {heading}", caption=table.legend)
    grid.add_column("schedule", no_wrap=True)
    for t in table.temperatures:
        grid.add_column(f"T={t:g}", justify="right")
    for label, cells, reference in table_rows(table):
        texts = [f"[bold green]{text}[/bold green]" if best else text for text, best in cells]
        grid.add_row(f"[dim]{label}[/dim]" if reference else label, *texts)
    return grid


def partial_footer(results) -> str:
    """How many of a --partial table's runs are still training, and at which epoch each stands."""
    run_ids = list(results.final["run_id"]) if not results.final.empty else []
    training = {run_id: results.partial[run_id] for run_id in run_ids if run_id in results.partial}
    line = (
        f"{len(run_ids) - len(training)} completed runs, {len(training)} still training "
        "(their latest completed epoch)"
    )
    if training:
        line += ": " + ", ".join(
            f"{run_id} after {epochs} epoch{'s' * (epochs != 1)}" for run_id, epochs in training.items()
        )
    return line


def status_table(title: str, statuses: list) -> Table:
    """One row per run of `kdtemp status`: its state, epochs done, last test accuracy and why."""
    table = Table(title=title)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("run", "left"),
        ("state", "left"),
        ("epochs", "right"),
        ("test acc", "right"),
        ("detail", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=column == "run")
    for status in statuses:
        accuracy = f"{100 * status.test_acc:.1f}%" if status.test_acc is not None else ""
        state = f"[{STATE_COLOURS[status.state]}]{status.state}[/]"
        table.add_row(status.run_id, state, f"{status.epochs_done}/{status.epochs}", accuracy, status.detail)
    return table


def status_line(statuses: list, states) -> str:
    """`2 completed, 0 running, ...`, saying what the pending ones are."""
    counts = {state: sum(1 for s in statuses if s.state == state) for state in states}
    # pruned only where a search ran: a sweep's line stays as it was
    line = ", ".join(f"{count} {state}" for state, count in counts.items() if count or state != "pruned")
    if counts["pending"]:  # not unfinished work of the sweep that ran: what the config would add
        line += " (planned by the config, not on disk: `kdtemp sweep` with the same options trains them)"
    return line
