"""How a job runs under the CLI: its progress bars and notes, Ctrl-C as a resumable stop, and a
refusal as one red line with a non-zero exit.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from kdtemp import events
from kdtemp.engine.loop import StopRequested
from kdtemp.errors import KDTempError

# Piped output gets a wide console so tables are not cropped to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


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


class ProgressView:
    """Progress bars and notes for a running job: `emit` is the job's emit callback.

    The bars start with the first Progress event, so a job refused up front prints only its error.
    """

    def __init__(self) -> None:
        columns = [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        self.progress = Progress(*columns, console=err, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def emit(self, event: events.Event) -> None:
        if isinstance(event, events.Progress):
            self._advance(event)
        elif isinstance(event, events.Note):
            style = "yellow" if event.level == "warning" else "dim"
            prefix = "warning: " if event.level == "warning" else ""
            self.progress.console.print(
                f"[{style}]{prefix}{event.text}[/{style}]", highlight=False, soft_wrap=True
            )
        elif isinstance(event, events.Submitted):
            out.print(
                f"submitted Slurm job array {event.array_id}: {event.tasks} tasks, {event.runs} runs; "
                f"logs in {event.folder}; follow with `kdtemp status`",
                highlight=False,
            )

    def _advance(self, event: events.Progress) -> None:
        if not self.tasks:
            self.progress.start()
        if event.task not in self.tasks:
            self.tasks[event.task] = self.progress.add_task(event.description, total=event.total)
        self.progress.update(
            self.tasks[event.task],
            description=event.description,
            completed=event.completed,
            total=event.total,
        )

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.tasks:
            self.progress.stop()


Result = TypeVar("Result")


def run_job(job: Callable[[Interrupt, events.Emit], Result]) -> Result:
    """Run `job(interrupt, emit)` with its progress shown; a refusal becomes one error line, Ctrl-C a
    resumable stop."""
    interrupt = Interrupt()
    try:
        with interrupt.installed(), ProgressView() as view:  # the bars stop before an error is printed
            return job(interrupt, view.emit)
    except KDTempError as exc:
        fail(str(exc))
    except (StopRequested, KeyboardInterrupt):
        err.print(
            "[yellow]interrupted: every finished epoch is saved; "
            "run the same command again to resume.[/yellow]"
        )
        raise typer.Exit(130) from None
