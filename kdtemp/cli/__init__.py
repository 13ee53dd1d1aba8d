"""The `kdtemp` command: Typer commands, options, tables and progress rendering over the library.

Exports nothing itself: the entry point is `kdtemp.cli.app:main`.
"""
