"""The `kdtemp` command: Typer commands, options, tables and progress rendering over the library.

Exports nothing itself: the entry point is `kdtemp.cli.entry:main`, which sets what must precede torch
and hands over to `kdtemp.cli.app`.
"""
