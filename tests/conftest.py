"""Shared fixtures: no network, a shared MNIST-1D cache, tiny configs, and an in-process CLI runner."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import write_experiment

from kdtemp.cli.app import main


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing may reach the network at test time: any connection attempt fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One MNIST-1D cache for the whole session (generating it takes a second or two)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_config(tmp_path, data_root):
    """Write a small MNIST-1D experiment config and return its path; keyword overrides merge in."""

    def write(name: str = "tiny", **sections) -> Path:
        return write_experiment(tmp_path, data_root, name, **sections)

    return write


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `kdtemp ARGS` in this process, as the console script would, and capture its output."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["kdtemp", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
