"""Reading an experiment: a YAML file, then the command line's overrides, validated as one config.

A file states only what it changes; an override is a dotted key (`student.lr`) and a value, whether it
came from `--set student.lr=0.01` or from a flag that is a shorthand for it. Every mistake is a
`ConfigError` of one line naming the file or the option that caused it (kdtemp/config/messages.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdtemp.config.messages import describe_validation_error
from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError


def read_yaml(path: Path) -> dict:
    """Parse a YAML config (safe_load only) into a dict; an empty file is an empty dict."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: cannot parse YAML{where}: {problem}; fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; pass a YAML config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, kd:, ...), "
            f"got {type(data).__name__}"
        )
    return data


def set_dotted(tree: dict, dotted_key: str, value: Any, defaults: dict | None = None) -> None:
    """tree[a][b][c] = value for 'a.b.c', creating sections the file leaves out.

    A key below a value (`kd.alpha.x`, where the file or the defaults hold a number at kd.alpha) is a
    ConfigError: it would otherwise replace the value with a section, or fail deep inside.
    """
    node: dict = tree
    default: Any = defaults or {}
    *parents, leaf = dotted_key.split(".")
    for depth, part in enumerate(parents):
        child = node.get(part)
        default = default.get(part) if isinstance(default, dict) else None
        shape = child if child is not None else default
        if shape is not None and not isinstance(shape, dict):
            above = ".".join(parents[: depth + 1])
            raise ConfigError(f"'{above}' holds a value, not a section of keys; set '{above}' itself")
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def set_override(tree: dict, dotted_key: str, value: Any, defaults: dict | None = None) -> list[str]:
    """Set one command-line override; return the dotted keys it set.

    `teacher.<key>` sets that key on every member when the file gives a `teachers:` ensemble, so
    `train-teacher --epochs` means the teachers' epochs whichever form the config takes. Schedules
    named bare in `kd.schedules` take the file's parameters for that name (`--schedules linear` sweeps
    the file's linear schedule), else their defaults. kd.alpha and kd.alphas are two forms of one axis:
    setting one drops the file's other, so `--alphas 0.5,0.9` works over a file's `alpha: 0.7`.
    """
    section, _, rest = dotted_key.partition(".")
    members = tree.get("teachers")
    if (
        section == "teacher"
        and rest
        and isinstance(members, list)
        and all(isinstance(m, dict) for m in members)
    ):
        for member in members:
            set_dotted(member, rest, value)
        return [f"teachers[{index}].{rest}" for index in range(len(members))]
    if dotted_key == "kd.schedules" and isinstance(value, list):
        value = _configured_schedules(tree, value)
    other_form = {"kd.alpha": "alphas", "kd.alphas": "alpha"}.get(dotted_key)
    if other_form is not None and isinstance(tree.get("kd"), dict):
        tree["kd"].pop(other_form, None)
    set_dotted(tree, dotted_key, value, defaults)
    return [dotted_key]


def _configured_schedules(tree: dict, entries: list) -> list:
    """Bare schedule names replaced by the file's entry of that name (the last one, if it repeats)."""
    kd = tree.get("kd")
    listed = kd.get("schedules") if isinstance(kd, dict) else None
    configured: dict[str, Any] = {}
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, str):
            configured[entry] = entry
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            configured[entry["name"]] = entry
    return [configured.get(entry, entry) if isinstance(entry, str) else entry for entry in entries]


def load_config(
    path: str | Path | None = None, overrides: dict[str, tuple[Any, str]] | None = None
) -> ExperimentConfig:
    """Read `path` (or only the defaults), apply overrides {dotted.key: (value, option)} and validate.

    The experiment name defaults to the file's stem, or 'default' without a file. A notebook may pass
    the path as a string.
    """
    path = Path(path) if path is not None else None
    tree = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if path is not None and "name" not in tree:
        tree["name"] = path.stem
    options: dict[str, str] = {}
    defaults = ExperimentConfig().model_dump(mode="json") if overrides else None
    for dotted_key, (value, option) in (overrides or {}).items():
        try:
            keys = set_override(tree, dotted_key, value, defaults)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None
        options.update(dict.fromkeys(keys, option))
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, options)) from None
