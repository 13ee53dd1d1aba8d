"""The `kdtemp` command: parse options, call the library, render its events. No training logic here."""

from __future__ import annotations

import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from kdtemp import events as E
from kdtemp.launch import run_sweep
from kdtemp.teachers import train_teacher
from kdtemp.config import ExperimentConfig, check_safe_name, load_config, parse_name_list, parse_number_list
from kdtemp.engine import StopRequested
from kdtemp.errors import KDTempError

try:  # typer >= 0.20 vendors its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors

app = typer.Typer(
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="Knowledge-distillation temperature studies: train a teacher, sweep students over temperatures, report.",
)
# Piped output gets a wide console so tables are not cropped to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

CONFIG_HELP = "YAML config; keys not in it keep their defaults. Default: the built-in MNIST-1D experiment."
EXPERIMENT = "Experiment"
GRID = "Grid"
LAUNCH = "Where it runs"


class Interrupt:
    """First Ctrl-C asks the job to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextmanager
    def installed(self):
        def handle(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            err.print("[yellow]stopping after the current step (Ctrl-C again to stop at once)...[/yellow]")

        previous = signal.signal(signal.SIGINT, handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def fail(message: str, code: int = 2) -> NoReturn:
    # escaped: "pip install 'kdtemp[tensorboard]'" is not rich markup
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def build_config(config: Optional[Path], overrides: dict[str, tuple[object, str]]) -> ExperimentConfig:
    return load_config(config, {key: value for key, value in overrides.items() if value[0] is not None})


class ProgressView:
    """Progress bars and notes for a running job: `emit` is the job's emit callback.

    The bars start with the first Progress event, so a job refused up front prints only its error.
    """

    def __init__(self):
        columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        self.progress = Progress(*columns, console=err, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def emit(self, event: E.Event) -> None:
        if isinstance(event, E.Progress):
            self._advance(event)
        elif isinstance(event, E.Note):
            style = "yellow" if event.level == "warning" else "dim"
            prefix = "warning: " if event.level == "warning" else ""
            self.progress.console.print(f"[{style}]{prefix}{event.text}[/{style}]", highlight=False, soft_wrap=True)
        elif isinstance(event, E.Submitted):
            out.print(f"submitted Slurm job array {event.array_id}: {event.tasks} tasks, {event.runs} runs; "
                      f"logs in {event.folder}; follow with `kdtemp status`", highlight=False)

    def _advance(self, event: E.Progress) -> None:
        if not self.tasks:
            self.progress.start()
        if event.task not in self.tasks:
            self.tasks[event.task] = self.progress.add_task(event.description, total=event.total)
        self.progress.update(self.tasks[event.task], description=event.description, completed=event.completed,
                             total=event.total)

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.tasks:
            self.progress.stop()


Result = TypeVar("Result")


def run_job(job: Callable[[Interrupt, E.Emit], Result]) -> Result:
    """Run `job(interrupt, emit)` with its progress shown; a refusal becomes one error line, Ctrl-C a resumable stop."""
    interrupt = Interrupt()
    try:
        with interrupt.installed(), ProgressView() as view:  # the bars stop before an error is printed
            return job(interrupt, view.emit)
    except KDTempError as exc:
        fail(str(exc))
    except (StopRequested, KeyboardInterrupt):
        err.print("[yellow]interrupted: every finished epoch is saved; run the same command again to resume.[/yellow]")
        raise typer.Exit(130)


# --- commands ----------------------------------------------------------------------------------


ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help=CONFIG_HELP, rich_help_panel=EXPERIMENT)]
DatasetOption = Annotated[Optional[str], typer.Option(help="mnist1d, fashion-mnist, mnist, cifar10, cifar100, image-folder or tensors.", rich_help_panel=EXPERIMENT)]
DeviceOption = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=EXPERIMENT)]
RunsDirOption = Annotated[Optional[Path], typer.Option("--runs-dir", help="Where experiments are written.", rich_help_panel=EXPERIMENT)]
AmpOption = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bf16 autocast for forward passes (default: on for CUDA).", rich_help_panel=EXPERIMENT)]
TensorBoardOption = Annotated[Optional[bool], typer.Option(
    "--tensorboard/--no-tensorboard", help="Also write each run's metrics and T for TensorBoard, under runs/<name>/tensorboard/.",
    rich_help_panel=EXPERIMENT)]
NameOption = Annotated[Optional[str], typer.Option("--name", help="Experiment name, the folder under --runs-dir (overrides the config's `name`): keeps experiments apart.", rich_help_panel=EXPERIMENT)]
StudentEpochsOption = Annotated[Optional[str], typer.Option("--epochs", help="Student epochs.", rich_help_panel=EXPERIMENT)]
TempsOption = Annotated[Optional[str], typer.Option("--temps", help="Grid temperatures t0, comma-separated, e.g. 1,3,5,10.", rich_help_panel=GRID)]
SeedsOption = Annotated[Optional[str], typer.Option("--seeds", help="Seeds, comma-separated, e.g. 0,1,2.", rich_help_panel=GRID)]
AlphaOption = Annotated[Optional[str], typer.Option("--alpha", help="Weight of the KD term, in [0, 1].", rich_help_panel=GRID)]
SchedulesOption = Annotated[Optional[str], typer.Option("--schedules", help="Temperature schedules, e.g. constant,linear,exp.", rich_help_panel=GRID)]


def common_overrides(dataset, device, runs_dir, amp, name=None) -> dict[str, tuple[object, str]]:
    """The overrides every training command takes, as {dotted.key: (value, option)}."""
    return {"data.dataset": (dataset, "--dataset"), "device": (device, "--device"), "train.amp": (amp, "--amp"),
            **location_overrides(runs_dir, name)}


def grid_overrides(config: Optional[Path], temps, seeds, alpha, schedules, epochs) -> dict[str, tuple[object, str]]:
    """The grid a sweep trains (and `status` checks against): --temps, --seeds, --alpha, --schedules, --epochs."""
    return {
        "kd.temperatures": (parse_number_list(temps, "--temps") if temps is not None else None, "--temps"),
        "kd.seeds": (parse_number_list(seeds, "--seeds", int) if seeds is not None else None, "--seeds"),
        "kd.alpha": (alpha, "--alpha"),
        "kd.schedules": (_schedules_override(config, schedules), "--schedules"),
        "student.epochs": (epochs, "--epochs"),
    }


def location_overrides(runs_dir: Optional[Path], name: Optional[str] = None) -> dict[str, tuple[object, str]]:
    """Where an experiment lives: --runs-dir and --name."""
    return {"runs_dir": (str(runs_dir) if runs_dir else None, "--runs-dir"), "name": (name, "--name")}


@app.command("train-teacher", no_args_is_help=False)
def train_teacher_command(
    config: ConfigOption = None, dataset: DatasetOption = None,
    epochs: Annotated[Optional[str], typer.Option(help="Teacher epochs (of every teacher of an ensemble).", rich_help_panel=EXPERIMENT)] = None,
    device: DeviceOption = None, runs_dir: RunsDirOption = None, amp: AmpOption = None, name: NameOption = None, tensorboard: TensorBoardOption = None,
    force: bool = typer.Option(False, "--force", help="Retrain even if a finished teacher exists (overwrites it; --name NEW keeps it)."),
):
    """Train, evaluate and checkpoint the teacher (or each teacher of an ensemble).

    [bold]Example:[/bold] kdtemp train-teacher --config configs/fashion-mnist.yaml
    """
    def job(interrupt, emit):
        overrides = {**common_overrides(dataset, device, runs_dir, amp, name), "teacher.epochs": (epochs, "--epochs"),
                     "logging.tensorboard": (tensorboard, "--tensorboard")}
        return train_teacher(build_config(config, overrides), force=force, should_stop=interrupt, emit=emit)

    for result in run_job(job):
        if isinstance(result, E.TeacherResult):
            done = "imported" if result.imported else "trained"
            verb = f"already {done}" if result.already_trained else f"{done} in {result.seconds:.1f}s"
            out.print(f"{result.label} {verb}: test accuracy [bold]{100 * result.test_acc:.2f}%[/bold] "
                      f"({result.parameters:,} parameters) -> {result.path}", highlight=False)
        elif isinstance(result, E.EnsembleResult):
            out.print(f"ensemble of {result.teachers} ({result.mode}): test accuracy [bold]{100 * result.test_acc:.2f}%[/bold] "
                      f"-> {result.path}", highlight=False)


@app.command("sweep")
def sweep_command(
    config: ConfigOption = None,
    temps: TempsOption = None, seeds: SeedsOption = None, alpha: AlphaOption = None, schedules: SchedulesOption = None,
    dataset: DatasetOption = None, epochs: StudentEpochsOption = None,
    device: DeviceOption = None, runs_dir: RunsDirOption = None, amp: AmpOption = None, name: NameOption = None, tensorboard: TensorBoardOption = None,
    force: bool = typer.Option(False, "--force", help="Retrain every run, even completed ones."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (default) or slurm.", rich_help_panel=LAUNCH),
    workers: Optional[str] = typer.Option(None, "--workers", help="Local worker processes (CPU cores are split between them).", rich_help_panel=LAUNCH),
    devices: Optional[str] = typer.Option(None, "--devices", help="One worker per device: cuda:0,cuda:1 or all.", rich_help_panel=LAUNCH),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", rich_help_panel=LAUNCH),
    slurm_gpus_per_job: Optional[str] = typer.Option(None, "--slurm-gpus-per-job", rich_help_panel=LAUNCH),
    slurm_cpus_per_job: Optional[str] = typer.Option(None, "--slurm-cpus-per-job", rich_help_panel=LAUNCH),
    slurm_mem_gb: Optional[str] = typer.Option(None, "--slurm-mem-gb", rich_help_panel=LAUNCH),
    slurm_time: Optional[str] = typer.Option(None, "--slurm-time", help="Minutes per job (requeued and resumed past it).", rich_help_panel=LAUNCH),
    slurm_array_parallelism: Optional[str] = typer.Option(None, "--slurm-array-parallelism", rich_help_panel=LAUNCH),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for Slurm jobs, showing progress (--no-wait prints the job id).", rich_help_panel=LAUNCH),
):
    """Distil students over temperatures x schedules x seeds, plus a no-KD baseline per seed.

    [bold]Example:[/bold] kdtemp sweep --temps 1,3,5,10 --seeds 0,1,2 --alpha 0.9

    Finished runs are skipped and interrupted ones resume; one metrics.csv is written per run.
    """
    def job(interrupt, emit):
        overrides = {
            **common_overrides(dataset, device, runs_dir, amp, name),
            **grid_overrides(config, temps, seeds, alpha, schedules, epochs),
            "logging.tensorboard": (tensorboard, "--tensorboard"),
            "launcher.name": (launcher, "--launcher"), "launcher.workers": (workers, "--workers"),
            "launcher.devices": (parse_name_list(devices, "--devices") if devices is not None else None, "--devices"),
            "launcher.slurm_partition": (slurm_partition, "--slurm-partition"),
            "launcher.slurm_gpus_per_job": (slurm_gpus_per_job, "--slurm-gpus-per-job"),
            "launcher.slurm_cpus_per_job": (slurm_cpus_per_job, "--slurm-cpus-per-job"),
            "launcher.slurm_mem_gb": (slurm_mem_gb, "--slurm-mem-gb"),
            "launcher.slurm_time": (slurm_time, "--slurm-time"),
            "launcher.slurm_array_parallelism": (slurm_array_parallelism, "--slurm-array-parallelism"),
        }
        return run_sweep(build_config(config, overrides), force=force, should_stop=interrupt, wait=wait, emit=emit)

    result = run_job(job)
    if isinstance(result, E.SweepResult):  # None: handed to Slurm without waiting, the view said where
        out.print(
            f"{result.planned} runs: {result.skipped} skipped (complete), {result.resumed} resumed, "
            f"{result.started} started, {result.completed} completed, {len(result.failed)} failed "
            f"in {result.seconds:.1f}s", highlight=False)
        for run_id in result.busy:
            out.print(f"  left to another process: {run_id}", highlight=False)
        if result.failed:
            for run_id, reason in result.failed:
                err.print(f"[red]failed:[/red] {run_id}: {reason}", highlight=False)
            raise typer.Exit(1)
        if result.experiment_dir is not None:
            out.print(f"results in {result.experiment_dir}; next: kdtemp report{same_experiment(config, runs_dir, name)}",
                      highlight=False)


def same_experiment(config: Optional[Path], runs_dir: Optional[Path], name: Optional[str]) -> str:
    """The options that name this experiment, for a suggested next command: without them it would read another."""
    options = [("--config", config), ("--runs-dir", runs_dir), ("--name", name)]
    return "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in options if value is not None)


def _schedules_override(config: Optional[Path], text: Optional[str]) -> Optional[list]:
    """--schedules names: each takes its parameters from the config's entry of that name, else defaults."""
    if text is None:
        return None
    names = parse_name_list(text, "--schedules")
    configured = {s.name: s.model_dump(mode="json", exclude_defaults=True) | {"name": s.name}
                  for s in load_config(config).kd.schedules}
    return [configured.get(name, {"name": name}) for name in names]


@app.command("report")
def report_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config whose experiment to report.", rich_help_panel=EXPERIMENT),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where experiments are written.", rich_help_panel=EXPERIMENT),
    name: Optional[str] = typer.Option(None, "--name", help="Experiment to report (overrides the config's `name`), or several side by side: a,b or all.", rich_help_panel=EXPERIMENT),
    metric: str = typer.Option("test_acc", help="Metric in the table: test_acc, best_test_acc, test_loss, agreement, kl_to_teacher, ece."),
    partial: bool = typer.Option(False, "--partial", help="While a sweep runs: tabulate every run's latest completed epoch (printed only, no files written)."),
):
    """Aggregate the sweep's CSVs: accuracy-vs-temperature table, statistics, plots, report.md and report.html.

    [bold]Example:[/bold] kdtemp report --config configs/fashion-mnist.yaml --metric agreement
    """
    from kdtemp import render, report  # pandas, scipy and matplotlib load only when a report is asked for

    try:
        settings = build_config(config, location_overrides(runs_dir))
        names = _experiment_names(settings, name)
        reports = [report.build_report(settings.runs_dir / experiment, metric, partial) for experiment in names]
        if partial:
            paths = None
        elif len(reports) == 1:
            paths = render.write_report(reports[0])
        else:
            paths = render.write_comparison(reports, settings.runs_dir / "comparison")
    except KDTempError as exc:
        fail(str(exc))
    for built in reports:
        for section in built.settings:  # one table per setting: runs of different settings never mix
            title = render.titled(built.results.name, section)
            if partial:
                out.print(rich_table(title, section.table, PARTIAL_EPOCH))
                out.print(_partial_footer(section.results), highlight=False)
            else:
                out.print(rich_table(title, section.table))
                out.print(render.footer(section), highlight=False)
        for line in report.problem_lines(built.results):
            err.print(f"[yellow]{line}[/yellow]", highlight=False)
    if paths is None:
        out.print("partial: nothing written; `kdtemp report` writes the report once the sweep ends", highlight=False)
    else:
        out.print(f"wrote {paths['html']}, {paths['markdown'].name} and {paths['summary'].name}", highlight=False)


PARTIAL_EPOCH = "partial: latest completed epoch"


def _partial_footer(results) -> str:
    """How many of a --partial table's runs are still training, and at which epoch each stands."""
    run_ids = list(results.final["run_id"]) if not results.final.empty else []
    training = {run_id: results.partial[run_id] for run_id in run_ids if run_id in results.partial}
    line = f"{len(run_ids) - len(training)} completed runs, {len(training)} still training (their latest completed epoch)"
    if training:
        line += ": " + ", ".join(f"{run_id} after {epochs} epoch{'s' * (epochs != 1)}" for run_id, epochs in training.items())
    return line


@app.command("status")
def status_command(
    config: ConfigOption = None,
    temps: TempsOption = None, seeds: SeedsOption = None, alpha: AlphaOption = None, schedules: SchedulesOption = None,
    dataset: DatasetOption = None, epochs: StudentEpochsOption = None,
    runs_dir: RunsDirOption = None, amp: AmpOption = None, name: NameOption = None,
):
    """List the runs on disk (completed, running and who runs them, failed, interrupted), then what the
    config plans that no sweep has started. Give it the grid options the sweep was given.

    [bold]Example:[/bold] kdtemp status --temps 1,3,5,10
    """
    from kdtemp.status import STATES, sweep_status

    try:
        overrides = {**common_overrides(dataset, None, runs_dir, amp, name),
                     **grid_overrides(config, temps, seeds, alpha, schedules, epochs)}
        settings = build_config(config, overrides)
        statuses = sweep_status(settings)
    except KDTempError as exc:
        fail(str(exc))
    swept = [status for status in statuses if status.on_disk]
    missing = [status for status in statuses if not status.on_disk]
    out.print(_status_table(f"{settings.name}: {len(swept)} runs on disk", swept))
    if missing:
        out.print(_status_table(f"planned by the config, not on disk: {len(missing)} runs", missing))
    counts = {state: sum(1 for s in statuses if s.state == state) for state in STATES}
    line = ", ".join(f"{count} {state}" for state, count in counts.items())
    if counts["pending"]:  # not unfinished work of the sweep that ran: what the config would add
        line += " (planned by the config, not on disk: `kdtemp sweep` with the same options trains them)"
    out.print(line, highlight=False)


def _status_table(title: str, statuses: list) -> Table:
    table = Table(title=title)
    for column, justify in (("run", "left"), ("state", "left"), ("epochs", "right"), ("test acc", "right"), ("detail", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "run")
    colours = {"completed": "green", "running": "cyan", "failed": "red", "interrupted": "yellow", "pending": "dim"}
    for status in statuses:
        accuracy = f"{100 * status.test_acc:.1f}%" if status.test_acc is not None else ""
        table.add_row(status.run_id, f"[{colours[status.state]}]{status.state}[/]", f"{status.epochs_done}/{status.epochs}",
                      accuracy, status.detail)
    return table


@app.command("export")
def export_command(
    run_id: Optional[str] = typer.Argument(None, help="Run to export (default: the best completed run)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config whose experiment holds the run.", rich_help_panel=EXPERIMENT),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Where experiments are written.", rich_help_panel=EXPERIMENT),
    name: NameOption = None,
    format: str = typer.Option("pt2", "--format", help="pt2 (torch.export.load) or torchscript (torch.jit.load, deprecated by PyTorch)."),
):
    """Export a student for use without kdtemp.

    [bold]Example:[/bold] kdtemp export --format pt2
    """
    from kdtemp.export import FILE_NAMES, export_student
    from kdtemp.runs import ExperimentLayout, read_summary

    if format not in FILE_NAMES:
        fail(f"--format: {format!r} is not a format; choose pt2 or torchscript")
    try:
        settings = build_config(config, location_overrides(runs_dir, name))
        chosen, path = export_student(ExperimentLayout.of(settings.runs_dir, settings.name), run_id, format)
    except KDTempError as exc:
        fail(str(exc))
    loader = "torch.jit.load(path)" if format == "torchscript" else "torch.export.load(path).module()"
    out.print(f"exported {chosen} -> {path}  (load it with {loader})", highlight=False)
    if run_id is None:  # one run, where the report's cells average seeds: say which and why
        layout = ExperimentLayout.of(settings.runs_dir, settings.name)
        summary = read_summary(layout.run_dir(chosen))
        accuracy = summary.test_acc if summary is not None else None
        shown = f", {100 * accuracy:.1f}%" if accuracy is not None else ""
        out.print(f"chosen as the completed run with the highest last-epoch test accuracy{shown}; the report's cells "
                  "average seeds: give a RUN_ID to export another", highlight=False)


def _experiment_names(settings: ExperimentConfig, names: Optional[str]) -> list[str]:
    if names is None:
        return [settings.name]
    if names.strip() == "all":
        found = sorted(d.parent.name for d in settings.runs_dir.glob("*/students") if d.is_dir())
        if not found:
            fail(f"no experiments with runs under {settings.runs_dir}; run `kdtemp sweep` first")
        return found
    chosen = parse_name_list(names, "--name")
    for experiment in chosen:
        try:
            check_safe_name(experiment, "--name")
        except ValueError as exc:
            fail(str(exc))
    return chosen


def rich_table(title: str, table, epoch: str | None = None) -> Table:
    """The accuracy-versus-temperature table (a report.TemperatureTable) for the terminal."""
    from kdtemp.report import LEGEND, table_rows

    heading = table.heading if epoch is None else f"{table.heading.rsplit(', ', 1)[0]}, {epoch}"
    grid = Table(title=f"{title}: {heading}", caption=LEGEND)
    grid.add_column("schedule", no_wrap=True)
    for t in table.temperatures:
        grid.add_column(f"T={t:g}", justify="right")
    for label, cells, reference in table_rows(table):
        texts = [f"[bold green]{text}[/bold green]" if best else text for text, best in cells]
        grid.add_row(f"[dim]{label}[/dim]" if reference else label, *texts)
    return grid


def main() -> None:
    """Entry point: one line for usage errors too, never click's multi-line box."""
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help(), highlight=False)
        raise SystemExit(0)
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "kdtemp"
        err.print(f"[bold red]error:[/bold red] {exc.format_message()} (see `{command} --help`)", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code)
    except typer.Abort:
        err.print("[yellow]aborted[/yellow]")
        raise SystemExit(130)
    raise SystemExit(code if isinstance(code, int) else 0)
