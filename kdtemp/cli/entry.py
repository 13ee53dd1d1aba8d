"""The `kdtemp` command's entry point: what must be set before torch loads its OpenMP runtime, then the
commands (kdtemp.cli.app). Kept free of torch imports, so the setting comes first."""

from __future__ import annotations

import os
import sys

from kdtemp.engine.threads import busy_cpus, wait_environment

TRAINING_COMMANDS = ("train-teacher", "sweep", "search")
"""Commands whose speed the wait policy decides: only they pay the quarter second of measuring."""


def main() -> None:
    if any(command in sys.argv[1:] for command in TRAINING_COMMANDS):
        os.environ.update(wait_environment(os.environ, busy_cpus()))
    from kdtemp.cli.app import main as run_app

    run_app()
