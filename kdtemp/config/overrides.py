"""The command line's overrides: `--set KEY=VALUE`, and the flags that are shorthands for it.

Every override is a dotted config key, a value and the option the user typed, so a flag and its
`--set` form go through the same validation (kdtemp/config/loading.py) and an error names what was
typed: `--set student.lrr=0.01: unknown key 'student.lrr'; did you mean 'lr'?`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kdtemp.errors import ConfigError

Overrides = dict[str, tuple[Any, str]]
"""{dotted.key: (value, option as typed)}, what kdtemp.config.loading.load_config applies."""


def parse_range(text: str, option: str) -> list[float]:
    """'0.5:32' -> [0.5, 32.0]; the order is checked by the config (search.temp_range)."""
    low, colon, high = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return [float(low), float(high)]
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a range; give low:high, e.g. 0.5:32") from None


def parse_number_list(text: str, option: str, kind: type = float) -> list:
    """'1,3,5' -> [1.0, 3.0, 5.0], with errors that say which item is wrong and what to type."""
    example = "1,3,5,10" if kind is float else "0,1,2"
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(item == "" for item in items):
        raise ConfigError(f"{option}: empty list {text!r}; give comma-separated numbers like {example}")
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            noun = "a number" if kind is float else "a whole number"
            raise ConfigError(
                f"{option}: {item!r} is not {noun}; give comma-separated numbers like {example}"
            ) from None
    return values


def parse_whole_number_list(text: str, option: str) -> list[int]:
    return parse_number_list(text, option, int)


def parse_name_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(item == "" for item in items):
        raise ConfigError(f"{option}: empty list {text!r}; give comma-separated names")
    return items


EXPERIMENT, GRID, LAUNCH, SEARCH = "Experiment", "Grid", "Where it runs", "Search"
"""The help panels the flags are shown in."""


@dataclass(frozen=True)
class Flag:
    """A flag that is a shorthand for `--set key=VALUE`: its option, key, type and help line."""

    option: str
    key: str
    kind: type = str
    """What the command line parses the text to (shown in --help as <int>, <float>...); bool flags also
    get their --no- form."""
    help: str = ""
    panel: str = EXPERIMENT
    parse: Callable[[str, str], Any] | None = None
    """For list flags, (text, option) -> value: `--temps 1,3,5` -> [1.0, 3.0, 5.0]."""


FLAGS: dict[str, Flag] = {
    "dataset": Flag(
        "--dataset",
        "data.dataset",
        help="mnist1d, fashion-mnist, mnist, cifar10, cifar100, image-folder or tensors.",
    ),
    "device": Flag("--device", "device", help="auto, cpu, cuda or cuda:N."),
    "threads": Flag(
        "--threads", "train.threads", int, "CPU threads per process (default: the CPUs this process may use)."
    ),
    "amp": Flag("--amp", "train.amp", bool, "bf16 autocast for forward passes (default: on for CUDA)."),
    "tensorboard": Flag(
        "--tensorboard",
        "logging.tensorboard",
        bool,
        "Also write each run's metrics and T for TensorBoard, under runs/<name>/tensorboard/.",
    ),
    "teacher_epochs": Flag(
        "--epochs", "teacher.epochs", int, "Teacher epochs (of every teacher of an ensemble)."
    ),
    "epochs": Flag("--epochs", "student.epochs", int, "Student epochs."),
    "temps": Flag(
        "--temps",
        "kd.temperatures",
        help="Grid temperatures t0, comma-separated, e.g. 1,3,5,10.",
        panel=GRID,
        parse=parse_number_list,
    ),
    "seeds": Flag(
        "--seeds",
        "kd.seeds",
        help="Seeds, comma-separated, e.g. 0,1,2.",
        panel=GRID,
        parse=parse_whole_number_list,
    ),
    "alpha": Flag("--alpha", "kd.alpha", float, "Weight of the KD term, in [0, 1].", GRID),
    "alphas": Flag(
        "--alphas",
        "kd.alphas",
        help="Several KD weights as a grid axis, comma-separated, e.g. 0.5,0.9.",
        panel=GRID,
        parse=parse_number_list,
    ),
    "schedules": Flag(
        "--schedules",
        "kd.schedules",
        help="Temperature schedules, e.g. constant,linear,exp.",
        panel=GRID,
        parse=parse_name_list,
    ),
    "pruner": Flag(
        "--pruner", "search.pruner", help="halving (default), hyperband, median or none.", panel=SEARCH
    ),
    "sampler": Flag(
        "--sampler", "search.sampler", help="tpe (default), gp or random, for ranges.", panel=SEARCH
    ),
    "temp_range": Flag(
        "--temp-range",
        "search.temp_range",
        help="Search t0 in low:high on a log scale, e.g. 0.5:32.",
        panel=SEARCH,
        parse=parse_range,
    ),
    "alpha_range": Flag(
        "--alpha-range",
        "search.alpha_range",
        help="Search alpha in low:high, e.g. 0.1:0.99.",
        panel=SEARCH,
        parse=parse_range,
    ),
    "trials": Flag("--trials", "search.trials", int, "Trials of a continuous space (default 20).", SEARCH),
    "storage": Flag(
        "--storage",
        "search.storage",
        help="Optuna RDB URL; default: a journal file in runs/<name>/search/.",
        panel=SEARCH,
    ),
    "confirm": Flag(
        "--confirm",
        "search.confirm",
        bool,
        "Retrain the chosen configuration and no-KD with fresh seeds to the full budget.",
        SEARCH,
    ),
    "launcher": Flag("--launcher", "launcher.name", help="local (default) or slurm.", panel=LAUNCH),
    "workers": Flag(
        "--workers",
        "launcher.workers",
        int,
        "Local worker processes (CPU cores are split between them).",
        LAUNCH,
    ),
    "devices": Flag(
        "--devices",
        "launcher.devices",
        help="One worker per device: cuda:0,cuda:1 or all.",
        panel=LAUNCH,
        parse=parse_name_list,
    ),
    "slurm_partition": Flag("--slurm-partition", "launcher.slurm_partition", panel=LAUNCH),
    "slurm_gpus_per_job": Flag("--slurm-gpus-per-job", "launcher.slurm_gpus_per_job", int, panel=LAUNCH),
    "slurm_cpus_per_job": Flag("--slurm-cpus-per-job", "launcher.slurm_cpus_per_job", int, panel=LAUNCH),
    "slurm_mem_gb": Flag("--slurm-mem-gb", "launcher.slurm_mem_gb", int, panel=LAUNCH),
    "slurm_time": Flag(
        "--slurm-time", "launcher.slurm_time", int, "Minutes per job (requeued and resumed past it).", LAUNCH
    ),
    "slurm_array_parallelism": Flag(
        "--slurm-array-parallelism", "launcher.slurm_array_parallelism", int, panel=LAUNCH
    ),
}
"""Each shorthand flag by the name of the command parameter that receives it (--epochs is the teacher's
epochs for train-teacher, the students' for sweep and status). --runs-dir and --name, which every command
takes, are `LOCATION`."""

LOCATION = {"runs_dir": Flag("--runs-dir", "runs_dir"), "name": Flag("--name", "name")}

SET_EXAMPLE = "--set student.lr=0.01"


def parse_set(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (dotted key, value); VALUE is read as YAML: `0.01`, `null`, `[1,3,5]`, `{a: 1}`."""
    key, equals, raw = text.partition("=")
    key = key.strip()
    if not equals:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. {SET_EXAMPLE}")
    if not key or any(part == "" for part in key.split(".")):
        raise ConfigError(f"--set {text}: empty key or key part; give a dotted key, e.g. {SET_EXAMPLE}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"--set {text}: cannot read the value as YAML: {problem}; quote it or fix it"
        ) from None
    return key, value


def command_line_overrides(flags: Mapping[str, Any], sets: Iterable[str] = ()) -> Overrides:
    """The flags given (None = not given) as overrides, then every `--set` in order (a later one wins)."""
    overrides: Overrides = {}
    for parameter, value in flags.items():
        if value is None:
            continue
        flag = FLAGS.get(parameter) or LOCATION[parameter]
        overrides[flag.key] = (flag.parse(value, flag.option) if flag.parse else value, flag.option)
    for text in sets:
        key, value = parse_set(text)
        overrides.pop(key, None)
        overrides[key] = (value, f"--set {text}")
    return overrides
