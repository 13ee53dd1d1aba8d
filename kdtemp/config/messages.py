"""Turning pydantic's validation errors into one actionable line: the key, the file or the command-line
option that set it, what is wrong, and the nearest known key when a name is misspelt."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError

from kdtemp.config.model_specs import (
    BUILT_IN_ARCHS,
    BUILT_IN_SPECS,
    CNNSpec,
    CustomSpec,
    EmbeddingBagSpec,
    HFConfigSpec,
    HFSpec,
    MLPSpec,
    ResNetSpec,
    TransformerSpec,
)
from kdtemp.config.schema import (
    DataConfig,
    ExperimentConfig,
    FeatureLayers,
    KDConfig,
    LauncherConfig,
    LoggingConfig,
    TrainConfig,
)
from kdtemp.temperature.registry import SCHEDULES

_UNION_TAGS = {cls.__name__ for cls in (*BUILT_IN_SPECS, CustomSpec)}
_UNION_FIELDS = {"teacher", "student"}
_UNION_LISTS = {"schedules", "teachers"}


def _all_field_names() -> set[str]:
    names: set[str] = set()
    classes: list[type[BaseModel]] = [
        ExperimentConfig,
        DataConfig,
        KDConfig,
        TrainConfig,
        LauncherConfig,
        LoggingConfig,
        FeatureLayers,
        MLPSpec,
        CNNSpec,
        ResNetSpec,
        CustomSpec,
        EmbeddingBagSpec,
        TransformerSpec,
        HFSpec,
        HFConfigSpec,
        *SCHEDULES.values(),
    ]
    for cls in classes:
        names.update(cls.model_fields)
    return names


def _readable_loc(loc: tuple) -> str:
    """pydantic's location as the user's dotted key: `kd.schedules[0].t_end`, without union tags."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        prev = loc[index - 1] if index >= 1 else None
        prev2 = loc[index - 2] if index >= 2 else None
        is_tag = (
            isinstance(part, str)
            and part in _UNION_TAGS
            and (prev in _UNION_FIELDS or (isinstance(prev, int) and prev2 in _UNION_LISTS))
        )
        if is_tag:
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".")


def option_for(key: str, options: dict[str, str]) -> str | None:
    """The command-line option that set `key` (or a list it is an item of), if one did."""
    return next(
        (flag for dotted, flag in options.items() if key == dotted or key.startswith(dotted + "[")), None
    )


def describe_validation_error(exc: ValidationError, source: str, options: dict[str, str]) -> str:
    """The first error as one line, prefixed by the option that set the key, else by the file and key."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = _readable_loc(first["loc"])
    option = option_for(key, options)
    where = option if option else f"{source}: {key}" if key else source
    kind = first["type"]
    if kind == "extra_forbidden":
        # an unknown section is reported where it starts: `studnet` for `--set studnet.lr=0.01`
        option = option or next(
            (flag for dotted, flag in options.items() if dotted.startswith(key + ".")), None
        )
        message = f"{option or source}: unknown key '{key}'{_nearest_key(str(first['loc'][-1]))}"
    elif kind == "union_tag_invalid":
        ctx = first.get("ctx", {})
        field = ctx.get("discriminator", "name").strip("'")
        message = f"{where}: unknown {field} {ctx.get('tag')!r}; choose one of {ctx.get('expected_tags')}"
    elif kind == "unknown_arch":
        got = first.get("input")
        arch = got.get("arch") if isinstance(got, dict) else got
        message = (
            f"{where}: unknown arch {arch!r}; choose one of {', '.join(BUILT_IN_ARCHS)}, "
            "hf:<folder>, torchvision:NAME or module:callable"
        )
    elif kind == "missing":
        message = f"{where}: required key is missing"
    else:
        text = first["msg"]
        text = text.removeprefix("Value error, ")
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        message = f"{where}: {text[0].lower() + text[1:]}{shown}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _nearest_key(leaf: str) -> str:
    names = _all_field_names()
    if leaf in names:  # a real key, of another arch or section: suggesting it back would not help
        return f"; '{leaf}' belongs to another arch or section here (see the config reference in README.md)"
    close = difflib.get_close_matches(leaf, sorted(names), n=1)
    return f"; did you mean '{close[0]}'?" if close else "; remove it (see the config reference in README.md)"
