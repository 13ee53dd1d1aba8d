"""Experiment configuration: one pydantic model per YAML section.

Every key has its default here and nowhere else, so a YAML file states only what it changes. Reading
a file and the command line's overrides is kdtemp/config/loading.py; turning a validation error into
one line naming the key and the file (or the option that set it) is kdtemp/config/messages.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from kdtemp.config.model_specs import CNNSpec, MLPSpec, ModelSpec, with_default_arch
from kdtemp.plugins import CALLABLE_REFERENCE
from kdtemp.strict import StrictModel
from kdtemp.temperature.registry import ScheduleSpec
from kdtemp.temperature.schedules import ConstantSchedule

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_safe_name(value: str, what: str) -> str:
    """A name that becomes a directory: letters, digits, '.', '_', '-'; no separators, no '..'."""
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe directory name: use letters, digits, '.', '_' and '-' "
            "(no '/', no '..', at most 100 characters)"
        )
    return value


# --- data ------------------------------------------------------------------------------------


class DataConfig(StrictModel):
    dataset: Literal[
        "mnist1d", "fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder", "tensors", "text"
    ] = "mnist1d"
    root: Path = Path("data")
    """Where generated, cached or downloaded datasets live; for image-folder the folder holding train/ and
    val/, for tensors the .npz or .pt file, for text the folder holding train.csv and test.csv (or .jsonl,
    .parquet)."""
    image_size: PositiveInt = 32
    """image-folder only: every image is resized (shorter side) and center-cropped to this square size."""
    batch_size: PositiveInt = 128
    """Training batch size, unless teacher/student set their own."""
    eval_batch_size: PositiveInt = 1000
    augment: bool = False
    """Random crop (padding 4) and horizontal flip of training images, drawn on the device."""
    download: bool = True
    """Let torchvision download mnist, fashion-mnist and CIFAR when no local copy exists."""
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of the training set held out, stratified by class, as the validation split every choice is
    made on (the best cell, epoch and exported run); neither the teacher nor any student trains on it. A
    dataset's own split wins (x_val/y_val in a tensors file, val/ beside train/ and test/ in an image
    folder). 0: no validation split, choices are made on the test set, and the report says so."""
    split_seed: NonNegativeInt = 0
    """Seed of the validation split; kd.seeds vary the students, never the split or the teacher."""
    channels: PositiveInt | None = None
    """Images only: repeat one-channel (gray) images to this many channels, e.g. 3 for a torchvision model
    or a pretrained RGB teacher; None keeps the data's own channels."""
    tokenizer: Path | None = None
    """text only: a tokenizer.json (the `tokenizers` library) or a local transformers model folder; None
    trains a WordPiece tokenizer on the training texts, saved beside the data and reused."""
    vocab_size: Annotated[int, Field(ge=16)] = 8000
    """text only: the vocabulary of the WordPiece tokenizer kdtemp trains (without data.tokenizer)."""
    max_length: Annotated[int, Field(ge=2)] = 128
    """text only: texts are cut to this many tokens (with [CLS] and [SEP]) and padded to the longest text
    of the data, at most this."""


# --- distillation ------------------------------------------------------------------------------


class FeatureLayers(StrictModel):
    """Named modules whose outputs a hint matches (names as in model.named_modules())."""

    student: str
    teacher: str


class KDConfig(StrictModel):
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    """Weight of the distillation term: (1 - alpha) * CE + alpha * T^2 * KL. (torchdistill's alpha is the CE
    weight.)"""
    alphas: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=1)] | None = None
    """Several alphas as a grid axis (like temperatures, alpha only enters the loss, so one batch and one
    teacher pass serve every pair); None: the one `alpha`."""
    temperatures: Annotated[list[PositiveFloat], Field(min_length=1)] = [1.0, 2.0, 4.0, 8.0]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)] = [0, 1, 2, 3, 4]
    """Student seeds (initial weights, batch order); students of all seeds train as one stacked group. Three
    seeds cannot give a sign-flip p below 0.25."""
    schedules: Annotated[list[ScheduleSpec], Field(min_length=1)] = [ConstantSchedule()]
    """Registered names with their parameters (kdtemp/temperature/schedules.py), or your own
    module:function."""
    baseline: bool = True
    """Also train one no-KD student per seed (schedule 'none', alpha 0)."""
    ensemble: Literal["mean_probs", "mean_logits", "weighted"] = "mean_probs"
    """How several teachers' soft targets combine: mean of softmax(t_i/T), softmax(mean t_i / T), or
    weighted mean."""
    teacher_weights: list[PositiveFloat] | None = None
    """One weight per teacher, for ensemble: weighted."""
    feature_weight: NonNegativeFloat = 0.0
    """Weight of the FitNets hint term MSE(regressor(student feature), teacher feature); 0 = off."""
    feature_layers: FeatureLayers | None = None
    """Layers the hint matches; default: the penultimate features (the input of `classifier`, else of the
    last nn.Linear)."""
    generations: PositiveInt = 1
    """Born-again generations: generation k+1 is distilled from generation k's student."""
    methods: list[Annotated[str, Field(pattern=CALLABLE_REFERENCE.pattern)]] = []
    """Your own KD methods (`module:Class`, a kdtemp.methods.KDMethod subclass) every distilled run also
    trains with; kdtemp imports and registers each (kdtemp.methods.registry.resolve_methods)."""

    @field_validator("schedules", mode="before")
    @classmethod
    def _bare_names(cls, value):
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("temperatures", "seeds", "alphas")
    @classmethod
    def _unique(cls, values):
        return None if values is None else list(dict.fromkeys(values))

    @model_validator(mode="after")
    def _one_alpha_form(self):
        if self.alphas is not None and "alpha" in self.model_fields_set:
            raise ValueError("give kd.alpha or kd.alphas, not both")
        return self

    def alpha_grid(self) -> list[float]:
        """The grid's alphas: kd.alphas, else the one kd.alpha."""
        return list(self.alphas) if self.alphas is not None else [self.alpha]


# --- the sweep engine ----------------------------------------------------------------------------


class TrainConfig(StrictModel):
    max_group_size: PositiveInt | None = None
    """Most student runs trained at once in one stacked model; None = as many as fit in half the device's
    free memory (kdtemp.engine.device.MEMORY_SHARE)."""
    amp: bool | None = None
    """bf16 autocast for the students' and the teacher-training forward passes (a trained teacher's
    logits stay float32); None = on for CUDA, off for CPU."""
    clip_grad_norm: PositiveFloat | None = None
    threads: PositiveInt | None = None
    """CPU threads per process; None: the CPUs the process may use (affinity, cgroup quota,
    SLURM_CPUS_PER_TASK), split among local workers (kdtemp.engine.threads)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: repeated CUDA runs on the same GPU and software are meant to
    give the same bits, more slowly (no cuDNN autotuning); not yet run on a GPU."""


# --- where the sweep runs ----------------------------------------------------------------------


class LauncherConfig(StrictModel):
    """How a sweep is spread: one process (local, the default), local workers, or a Slurm job array."""

    name: Literal["local", "slurm"] = "local"
    workers: PositiveInt | None = None
    """Local worker processes; on CPU they split the cores. None: one per --devices entry, else one."""
    devices: list[str] | None = None
    """Local devices, one worker each: ["cuda:0", "cuda:1"] or ["all"]."""
    slurm_partition: str | None = None
    slurm_gpus_per_job: NonNegativeInt = 0
    slurm_cpus_per_job: PositiveInt = 2
    slurm_mem_gb: PositiveInt | None = None
    slurm_time: PositiveInt = 120
    """Minutes per job; a job cut off at its limit is requeued and resumes."""
    slurm_array_parallelism: PositiveInt = 16

    @field_validator("devices")
    @classmethod
    def _devices(cls, value):
        if value is None:
            return value
        for device in value:
            if device != "all" and not DEVICE.match(device):
                raise ValueError(f"devices must be cpu, cuda, cuda:N or all, got {device!r}")
        return value


# --- experiment trackers ------------------------------------------------------------------------


class LoggingConfig(StrictModel):
    """Viewers a run's metrics are also sent to (kdtemp/store/loggers.py); metrics.csv is written
    either way."""

    tensorboard: bool = False
    """Scalars under runs/<name>/tensorboard/<run_id>/; needs the tensorboard extra (pip install
    'kdtemp[tensorboard]')."""


# --- the report's statistics ---------------------------------------------------------------------


class ReportConfig(StrictModel):
    """What `kdtemp report` tests against: differences in the table's units, points for accuracy (1 = one
    percentage point)."""

    min_effect: PositiveFloat = 1.0
    """The smallest difference worth detecting: the seed plan under the verdict says how many seeds detect
    it between the best cell and its runner-up (power 0.8, paired t-test, alpha 0.05)."""
    equivalence_margin: PositiveFloat | None = None
    """Call a cell "tied" with the best only when an equivalence test (TOST, alpha 0.05) puts their
    difference within ± this margin; None: no cell is called tied, only "not distinguishable"."""


# --- kdtemp search --------------------------------------------------------------------------------


class SearchConfig(StrictModel):
    """`kdtemp search`: the sweep's grid (or ranges) searched with Optuna, trials pruned in lockstep."""

    pruner: Literal["halving", "hyperband", "median", "none"] = "halving"
    """halving: synchronous successive halving (trials asked together are judged together at each rung);
    hyperband and median: Optuna's HyperbandPruner and MedianPruner; none: every trial to the last epoch."""
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    """halving and hyperband keep about 1 in this many trials at each rung."""
    min_epochs: PositiveInt | None = None
    """The first rung: epochs a trial trains before it can be pruned; later rungs at min_epochs x factor^k.
    None: a factor^2-th of student.epochs (at least 1), so rungs fall at a ninth and a third of the budget."""
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    """Optuna's sampler for a continuous space (temp_range or alpha_range); a finite grid tries every cell."""
    temp_range: tuple[PositiveFloat, PositiveFloat] | None = None
    """[low, high] of t0, sampled on a log scale; None: the grid's temperatures."""
    alpha_range: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] | None = None
    """[low, high] of alpha; None: the grid's alphas."""
    trials: PositiveInt | None = None
    """Trials of a continuous space (default 20); a finite grid has one per cell."""
    batch: PositiveInt | None = None
    """Trials asked together and trained as one lockstep group; None: every cell of a finite grid, 8 of a
    continuous space (fewer when train.max_group_size holds fewer)."""
    sampler_seed: NonNegativeInt = 0
    storage: str | None = None
    """An Optuna RDB URL (sqlite:///search.db, postgresql://...); None: a journal file under
    runs/<name>/search/, safe for several workers on one filesystem."""
    confirm: bool = False
    """After the search, retrain the chosen configuration and no-KD with fresh seeds, to the full budget:
    the test accuracy the report's verdict quotes."""
    confirm_seeds: list[NonNegativeInt] | None = None
    """Seeds of the confirmation (giving them asks for one); None: as many as kd.seeds, after the largest."""

    @field_validator("temp_range", "alpha_range")
    @classmethod
    def _ordered(cls, value):
        if value is not None and value[0] >= value[1]:
            raise ValueError(f"a range is low:high with low below high, got {value[0]:g}:{value[1]:g}")
        return value

    @field_validator("confirm_seeds")
    @classmethod
    def _unique_seeds(cls, values):
        return None if values is None else list(dict.fromkeys(values))

    @property
    def continuous(self) -> bool:
        return self.temp_range is not None or self.alpha_range is not None

    def first_rung(self, epochs: int) -> int:
        """min_epochs, else epochs // factor^2 (at least 1)."""
        return self.min_epochs or max(1, epochs // self.reduction_factor**2)


# --- the whole experiment ----------------------------------------------------------------------


class ExperimentConfig(StrictModel):
    name: str = "default"
    runs_dir: Path = Path("runs")
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    data: DataConfig = DataConfig()
    teacher: ModelSpec = CNNSpec()
    teachers: Annotated[list[ModelSpec], Field(min_length=1)] | None = None
    """Several teachers (an ensemble), instead of `teacher`; each one's seed defaults to its index."""
    student: ModelSpec = MLPSpec()
    kd: KDConfig = KDConfig()
    train: TrainConfig = TrainConfig()
    launcher: LauncherConfig = LauncherConfig()
    logging: LoggingConfig = LoggingConfig()
    report: ReportConfig = ReportConfig()
    search: SearchConfig = SearchConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value):
        return check_safe_name(value, "name")

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if not DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_arch(cls, value):
        return with_default_arch(value, "cnn")

    @field_validator("teachers", mode="before")
    @classmethod
    def _teachers_arch(cls, value):
        if isinstance(value, list):
            return [with_default_arch(item, "cnn") for item in value]
        return value

    @model_validator(mode="after")
    def _teachers_consistent(self):
        if self.teachers is not None and "teacher" in self.model_fields_set:
            raise ValueError("give teacher or teachers, not both")
        count = len(self.teacher_specs())
        weights = self.kd.teacher_weights
        if self.kd.ensemble == "weighted" and (weights is None or len(weights) != count):
            raise ValueError(
                f"kd.ensemble: weighted needs kd.teacher_weights with one weight per teacher ({count})"
            )
        if weights is not None and self.kd.ensemble != "weighted":
            raise ValueError("kd.teacher_weights only apply with kd.ensemble: weighted")
        confirm = self.search.confirm_seeds
        reused = sorted(set(confirm or []) & set(self.kd.seeds))
        if reused:
            raise ValueError(f"search.confirm_seeds must be fresh: {reused} are in kd.seeds")
        return self

    @field_validator("student", mode="before")
    @classmethod
    def _student_arch(cls, value):
        value = with_default_arch(value, "mlp")
        if isinstance(value, dict) and "seed" in value:
            raise ValueError("students take their seeds from kd.seeds; remove student.seed")
        if isinstance(value, dict) and value.get("checkpoint") is not None:
            raise ValueError(
                "the sweep trains the students; remove student.checkpoint "
                "(a trained teacher goes in teacher.checkpoint)"
            )
        return value

    @property
    def experiment_dir(self) -> Path:
        return self.runs_dir / self.name

    def teacher_specs(self) -> list[ModelSpec]:
        """The teacher, or every teacher of the ensemble (seed = index unless set)."""
        if self.teachers is None:
            return [self.teacher]
        return [
            spec if "seed" in spec.model_fields_set else spec.model_copy(update={"seed": index})
            for index, spec in enumerate(self.teachers)
        ]

    def batch_size(self, spec: ModelSpec) -> int:
        """A network's training batch: its own batch_size, else data.batch_size."""
        return spec.batch_size or self.data.batch_size

    def student_batch_size(self) -> int:
        return self.batch_size(self.student)


# --- writing ------------------------------------------------------------------------------------


def config_to_dict(config: ExperimentConfig) -> dict:
    """Plain-data form (paths as strings) that validates back to the same experiment.

    Students take their seeds from kd.seeds, so student.seed is left out; an ensemble's teachers
    are written with their effective seeds.
    """
    tree = config.model_dump(mode="json", exclude={"student": {"seed", "checkpoint"}})
    if config.teachers is None:
        del tree["teachers"]
    else:
        del tree["teacher"]
        tree["teachers"] = [spec.model_dump(mode="json") for spec in config.teacher_specs()]
    return tree
