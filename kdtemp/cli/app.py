"""The `kdtemp` command: parse options, call the library, render its events. No training logic here."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import typer

from kdtemp import events
from kdtemp.cli import progress, tables
from kdtemp.cli.options import Experiment, experiment_options
from kdtemp.cli.progress import fail, run_job
from kdtemp.config.overrides import LAUNCH, parse_name_list
from kdtemp.config.schema import ExperimentConfig, check_safe_name
from kdtemp.errors import KDTempError
from kdtemp.sweep.launch import run_sweep
from kdtemp.teachers.training import train_teacher

if TYPE_CHECKING:  # one definition for mypy: the installed typer's
    from typer._click import exceptions as click_errors
else:
    try:  # typer >= 0.20 vendors its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as click_errors

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help=(
        "Knowledge-distillation temperature studies: train a teacher, sweep students over temperatures, "
        "report."
    ),
)


# --- commands ----------------------------------------------------------------------------------

TRAINING_FLAGS = ("dataset", "device", "amp", "tensorboard", "threads")
GRID_FLAGS = ("temps", "seeds", "alpha", "alphas", "schedules", "dataset", "epochs")
LAUNCH_FLAGS = (
    "launcher",
    "workers",
    "devices",
    "slurm_partition",
    "slurm_gpus_per_job",
    "slurm_cpus_per_job",
    "slurm_mem_gb",
    "slurm_time",
    "slurm_array_parallelism",
)


@app.command("train-teacher", no_args_is_help=False)
@experiment_options(*TRAINING_FLAGS, "teacher_epochs")
def train_teacher_command(
    experiment: Experiment,
    force: bool = typer.Option(
        False,
        "--force",
        help="Retrain even if a finished teacher exists (overwrites it; --name NEW keeps it).",
    ),
):
    """Train, evaluate and checkpoint the teacher (or each teacher of an ensemble).

    [bold]Example:[/bold] kdtemp train-teacher --config configs/fashion-mnist.yaml
    """

    def job(interrupt, emit):
        return train_teacher(experiment.settings(), force=force, should_stop=interrupt, emit=emit)

    for result in run_job(job):
        if isinstance(result, events.TeacherResult):
            done = "imported" if result.imported else "trained"
            verb = f"already {done}" if result.already_trained else f"{done} in {result.seconds:.1f}s"
            progress.out.print(
                f"{result.label} {verb}: test accuracy [bold]{100 * result.test_acc:.2f}%[/bold] "
                f"({result.parameters:,} parameters) -> {result.path}",
                highlight=False,
            )
        elif isinstance(result, events.EnsembleResult):
            progress.out.print(
                f"ensemble of {result.teachers} ({result.mode}): "
                f"test accuracy [bold]{100 * result.test_acc:.2f}%[/bold] "
                f"-> {result.path}",
                highlight=False,
            )


@app.command("sweep")
@experiment_options(*GRID_FLAGS, "device", "amp", "tensorboard", "threads", *LAUNCH_FLAGS)
def sweep_command(
    experiment: Experiment,
    force: bool = typer.Option(False, "--force", help="Retrain every run, even completed ones."),
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="Wait for Slurm jobs, showing progress (--no-wait prints the job id).",
        rich_help_panel=LAUNCH,
    ),
):
    """Distil students over temperatures x schedules x seeds, plus a no-KD baseline per seed.

    [bold]Example:[/bold] kdtemp sweep --temps 1,3,5,10 --seeds 0,1,2 --alpha 0.9

    Finished runs are skipped and interrupted ones resume; one metrics.csv is written per run.
    """

    def job(interrupt, emit):
        return run_sweep(experiment.settings(), force=force, should_stop=interrupt, wait=wait, emit=emit)

    result = run_job(job)
    if isinstance(result, events.SweepResult):  # None: handed to Slurm without waiting, the view said where
        progress.out.print(
            f"{result.planned} runs: {result.skipped} skipped (complete), {result.resumed} resumed, "
            f"{result.started} started, {result.completed} completed, {len(result.failed)} failed "
            f"in {result.seconds:.1f}s",
            highlight=False,
        )
        for run_id in result.busy:
            progress.out.print(f"  left to another process: {run_id}", highlight=False)
        if result.failed:
            for run_id, reason in result.failed:
                progress.err.print(f"[red]failed:[/red] {run_id}: {reason}", highlight=False)
            raise typer.Exit(1)
        if result.experiment_dir is not None:
            progress.out.print(
                f"results in {result.experiment_dir}; next: kdtemp report{experiment.options()}",
                highlight=False,
            )


SEARCH_FLAGS = ("pruner", "sampler", "temp_range", "alpha_range", "trials", "storage", "confirm")


@app.command("search")
@experiment_options(*GRID_FLAGS, *SEARCH_FLAGS, "device", "amp", "threads")
def search_command(experiment: Experiment):
    """Search the grid with Optuna, training trials in lockstep and pruning the ones behind on validation.

    [bold]Example:[/bold] kdtemp search --temps 1,2,4,8,16 --schedules constant,linear,cosine --confirm

    Killed, the same command resumes; several processes running it share one study.
    """
    from kdtemp.search.runner import search

    given = {flag for flag, value in experiment.flags.items() if value is not None}
    for grid, sampled, what in (
        (("temps",), "temp_range", "t0"),
        (("alphas", "alpha"), "alpha_range", "alpha"),
    ):
        listed = [flag for flag in grid if flag in given]
        if sampled in given and listed:
            grid_flag, range_flag = f"--{listed[0]}", f"--{sampled.replace('_', '-')}"
            fail(
                f"{grid_flag} and {range_flag} both set {what}: give {grid_flag} to search those values, "
                f"or {range_flag} to sample the range"
            )

    def job(interrupt, emit):
        config = experiment.settings()
        unused = [f"--{flag}" for flag in ("trials", "sampler") if flag in given]
        if unused and not config.search.continuous:
            emit(
                events.Note(
                    f"{' and '.join(unused)} {'apply' if len(unused) > 1 else 'applies'} to a range "
                    "(--temp-range, --alpha-range): this grid is "
                    "searched one trial per cell"
                )
            )
        return search(config, should_stop=interrupt, emit=emit)

    result = run_job(job)
    states = ", ".join(f"{count} {state}" for state, count in sorted(result.trials.items()))
    progress.out.print(f"trials: {states}; {result.budget_line}; {result.seconds:.1f}s", highlight=False)
    if result.chosen is not None:
        chosen = result.chosen
        progress.out.print(
            f"chosen on validation: {chosen['schedule']} T={chosen['t0']:g} alpha {chosen['alpha']:g} "
            f"({100 * chosen['val_acc']:.1f}% mean validation accuracy)"
            + (
                f"; confirmed at fresh seeds {', '.join(map(str, result.confirm_seeds))}: kdtemp report "
                "quotes their test accuracy"
                if result.confirmed
                else "; --confirm retrains it at fresh seeds"
            ),
            highlight=False,
        )
    for number in result.busy:
        progress.out.print(f"  left to another process: trial {number}", highlight=False)
    progress.out.print(
        f"results in {result.experiment_dir}; next: kdtemp report{experiment.options()}", highlight=False
    )


REPORT_GRID_FLAGS = ("temps", "seeds", "alpha", "alphas", "schedules")
"""The sweep's grid options `report` takes: given any, it reports only the runs of that grid."""


@app.command("report")
@experiment_options(*REPORT_GRID_FLAGS)
def report_command(
    experiment: Experiment,
    metric: str = typer.Option(
        "test_acc",
        help=(
            "Metric in the table: test_acc, val_acc, test_acc_at_best_val, test_loss, agreement, "
            "kl_to_teacher, ece."
        ),
    ),
    partial: bool = typer.Option(
        False,
        "--partial",
        help=(
            "While a sweep runs: tabulate every run's latest completed epoch "
            "(printed only, no files written)."
        ),
    ),
):
    """Aggregate the sweep's CSVs: accuracy-vs-temperature table, statistics, plots, report.md and report.html.

    [bold]Example:[/bold] kdtemp report --config configs/fashion-mnist.yaml --metric agreement
    """  # noqa: E501 - the first line is the command's one-line summary in `kdtemp --help`: kept whole
    # pandas, scipy and matplotlib load only when a report is asked for
    from kdtemp.report.build import build_report, problem_lines
    from kdtemp.report.render import write_comparison, write_report
    from kdtemp.report.selection import GridSelection
    from kdtemp.report.text import footer, titled

    try:
        settings = experiment.settings(with_name=False)  # --name here may list several experiments
        names = _experiment_names(settings, experiment.name)
        asked = any(experiment.flags.get(flag) is not None for flag in REPORT_GRID_FLAGS)
        selection = GridSelection.of(settings) if asked else None
        reports = [
            build_report(settings.runs_dir / folder, metric, partial, settings.report, selection)
            for folder in names
        ]
        if partial:
            paths = None
        elif len(reports) == 1:
            paths = write_report(reports[0])
        else:
            paths = write_comparison(reports, settings.runs_dir / "comparison")
    except KDTempError as exc:
        fail(str(exc))
    for built in reports:
        for section in built.settings:  # one table per setting: runs of different settings never mix
            title = titled(built.results.name, section)
            if partial:
                progress.out.print(tables.temperature_table(title, section.table, tables.PARTIAL_EPOCH))
                progress.out.print(tables.partial_footer(section.results), highlight=False)
            else:
                progress.out.print(tables.temperature_table(title, section.table))
                progress.out.print(footer(section), highlight=False)
        for line in problem_lines(built.results):
            progress.err.print(f"[yellow]{line}[/yellow]", highlight=False)
        if built.left_out:
            grid = settings.kd
            progress.out.print(
                f"{built.left_out} completed runs of {built.results.name} lie outside the grid asked for and "
                f"are left out (temperatures {', '.join(f'{t:g}' for t in grid.temperatures)}; seeds "
                f"{', '.join(map(str, grid.seeds))}; alpha {', '.join(f'{a:g}' for a in grid.alpha_grid())}; "
                "the config's schedules)",
                highlight=False,
            )
    if paths is None:
        progress.out.print(
            "partial: nothing written; `kdtemp report` writes the report once the sweep ends", highlight=False
        )
    else:
        progress.out.print(
            f"wrote {paths['html']}, {paths['markdown'].name} and {paths['summary'].name}", highlight=False
        )


@app.command("status")
@experiment_options(*GRID_FLAGS, "amp")
def status_command(experiment: Experiment):
    """List the runs on disk (completed, running and who runs them, failed, interrupted), then what the
    config plans that no sweep has started. Give it the grid options the sweep was given.

    [bold]Example:[/bold] kdtemp status --temps 1,3,5,10
    """
    from kdtemp.sweep.status import STATES, sweep_status

    try:
        settings = experiment.settings()
        statuses = sweep_status(settings)
    except KDTempError as exc:
        fail(str(exc))
    swept = [status for status in statuses if status.on_disk]
    missing = [status for status in statuses if not status.on_disk]
    progress.out.print(tables.status_table(f"{settings.name}: {len(swept)} runs on disk", swept))
    if missing:
        progress.out.print(
            tables.status_table(f"planned by the config, not on disk: {len(missing)} runs", missing)
        )
    progress.out.print(tables.status_line(statuses, STATES), highlight=False)


@app.command("export")
@experiment_options()
def export_command(
    experiment: Experiment,
    run_id: str | None = typer.Argument(None, help="Run to export (default: the best completed run)."),
    format: str = typer.Option(
        "pt2",
        "--format",
        help="pt2 (torch.export.load) or torchscript (torch.jit.load, deprecated by PyTorch).",
    ),
):
    """Export a student for use without kdtemp.

    [bold]Example:[/bold] kdtemp export --format pt2
    """
    from kdtemp.models.export import FILE_NAMES, Format, export_student
    from kdtemp.store.files import read_summary
    from kdtemp.store.layout import ExperimentLayout

    if format not in FILE_NAMES:
        fail(f"--format: {format!r} is not a format; choose pt2 or torchscript")
    try:
        settings = experiment.settings()
        chosen, path = export_student(
            ExperimentLayout.of(settings.runs_dir, settings.name), run_id, cast(Format, format)
        )
    except KDTempError as exc:
        fail(str(exc))
    loader = "torch.jit.load(path)" if format == "torchscript" else "torch.export.load(path).module()"
    progress.out.print(f"exported {chosen} -> {path}  (load it with {loader})", highlight=False)
    if run_id is None:  # one run, where the report's cells average seeds: say which and why
        layout = ExperimentLayout.of(settings.runs_dir, settings.name)
        summary = read_summary(layout.run_dir(chosen))
        val = summary.final.get("val_acc") if summary is not None else None
        test = summary.test_acc if summary is not None else None
        on_val = summary is not None and val is not None and summary.val_is_test is False
        shown = f", {100 * test:.1f}% on test" if test is not None else ""
        chosen_on = (
            f"validation accuracy ({100 * val:.1f}%{shown})"
            if on_val and val is not None
            else f"test accuracy, no validation split{shown}"
        )
        progress.out.print(
            f"chosen as the completed run with the highest last-epoch {chosen_on}; "
            "the report's cells average seeds: give a RUN_ID to export another",
            highlight=False,
        )


def _experiment_names(settings: ExperimentConfig, names: str | None) -> list[str]:
    if names is None:
        return [settings.name]
    if names.strip() == "all":
        found = sorted(d.parent.name for d in settings.runs_dir.glob("*/students") if d.is_dir())
        if not found:
            fail(
                f"no experiments with runs under {settings.runs_dir}; "
                "run `kdtemp sweep` or `kdtemp search` first"
            )
        return found
    chosen = parse_name_list(names, "--name")
    for experiment in chosen:
        try:
            check_safe_name(experiment, "--name")
        except ValueError as exc:
            fail(str(exc))
    return chosen


def main() -> None:
    """Entry point: one line for usage errors too, never click's multi-line box."""
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        progress.out.print(exc.ctx.get_help(), highlight=False)
        raise SystemExit(0) from None
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "kdtemp"
        progress.err.print(
            f"[bold red]error:[/bold red] {exc.format_message()} (see `{command} --help`)",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(2) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        progress.err.print("[yellow]aborted[/yellow]")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
