"""The options every command that reads a config shares, defined once: --config, --runs-dir, --name,
--set, and the shorthand flags of kdtemp/config/overrides.py, typed so `--help` shows <int>, <float>..."""

from __future__ import annotations

import functools
import inspect
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from kdtemp.config.loading import load_config
from kdtemp.config.overrides import EXPERIMENT, FLAGS, command_line_overrides
from kdtemp.config.schema import ExperimentConfig

CONFIG_HELP = "YAML config; keys not in it keep their defaults. Default: the built-in MNIST-1D experiment."
SET_HELP = (
    "Override any config key, e.g. --set student.lr=0.01 --set kd.temperatures=[1,3,5]; the value is YAML. "
    "Repeatable; the flags below are shorthands for it."
)
NAME_HELP = (
    "Experiment name, the folder under --runs-dir (overrides the config's `name`): keeps experiments apart. "
    "report also takes several side by side: a,b or all."
)
SHARED_OPTIONS = {
    "config": Annotated[
        Path | None, typer.Option("--config", "-c", help=CONFIG_HELP, rich_help_panel=EXPERIMENT)
    ],
    "runs_dir": Annotated[
        Path | None,
        typer.Option("--runs-dir", help="Where experiments are written.", rich_help_panel=EXPERIMENT),
    ],
    "name": Annotated[str | None, typer.Option("--name", help=NAME_HELP, rich_help_panel=EXPERIMENT)],
    "sets": Annotated[
        list[str] | None,
        typer.Option("--set", metavar="<key=value>", help=SET_HELP, rich_help_panel=EXPERIMENT),
    ],
}


@dataclass(frozen=True)
class Experiment:
    """--config, --runs-dir, --name, every --set, and the shorthand flags a command was given."""

    config: Path | None
    runs_dir: Path | None
    name: str | None
    sets: tuple[str, ...] = ()
    flags: dict[str, Any] = field(default_factory=dict)

    def settings(self, with_name: bool = True) -> ExperimentConfig:
        """The config file with the flags, then each --set, applied (a mistake is a ConfigError)."""
        location = {"runs_dir": self.runs_dir, "name": self.name if with_name else None}
        return load_config(self.config, command_line_overrides({**location, **self.flags}, self.sets))

    def options(self) -> str:
        """The options that name this experiment, for a suggested next command (without them it would
        read another)."""
        named = [("--config", self.config), ("--runs-dir", self.runs_dir), ("--name", self.name)]
        named += [
            ("--set", text) for text in self.sets if text.partition("=")[0].strip() in ("name", "runs_dir")
        ]
        return "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in named if value is not None)


def schema_checked(kind: type) -> Callable[[str], Any]:
    """A number option's parser: the number when the text is one, else the text, which the config schema
    then refuses with the same line as `--set` (`--workers: input should be a valid integer...`)."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except (TypeError, ValueError):
            return text

    parse.__name__ = kind.__name__
    return parse


def flag_option(parameter: str) -> Any:
    """The Typer option of a shorthand flag of overrides.FLAGS, of the type it is parsed to."""
    flag = FLAGS[parameter]
    if flag.kind is bool:
        declared = f"{flag.option}/--no-{flag.option[2:]}"
        return Annotated[bool | None, typer.Option(declared, help=flag.help, rich_help_panel=flag.panel)]
    checked = schema_checked(flag.kind) if flag.kind in (int, float) else None
    option = typer.Option(flag.option, help=flag.help, rich_help_panel=flag.panel, parser=checked)
    return Annotated[flag.kind | None, option]


def experiment_options(*flags: str):
    """Give a command the shared options and the shorthand `flags` (names in overrides.FLAGS), passed to it
    as one `experiment: Experiment` argument; its own options stay in its signature."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    added = {**SHARED_OPTIONS, **{parameter: flag_option(parameter) for parameter in flags}}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p.replace(kind=keyword) for p in signature.parameters.values() if p.name != "experiment"]
        shared = [
            inspect.Parameter(key, keyword, default=None, annotation=kind) for key, kind in added.items()
        ]

        @functools.wraps(command)
        def with_experiment(**values):
            location = {key: values.pop(key) for key in ("config", "runs_dir", "name")}
            chosen = Experiment(
                **location,
                sets=tuple(values.pop("sets") or ()),
                flags={parameter: values.pop(parameter) for parameter in flags},
            )
            return command(experiment=chosen, **values)

        # Typer reads the options from the signature: the shared ones first, then the command's own
        with_experiment.__signature__ = signature.replace(parameters=shared + own)
        return with_experiment

    return decorate
