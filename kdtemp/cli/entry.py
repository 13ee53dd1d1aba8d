"""The `kdtemp` command's entry point: what must be set before torch loads its OpenMP runtime, then the
commands (kdtemp.cli.app). Kept free of torch imports, so the setting comes first."""

from __future__ import annotations

import os

from kdtemp.engine.threads import wait_environment


def main() -> None:
    os.environ.update(wait_environment(os.environ))
    from kdtemp.cli.app import main as run_app

    run_app()
