"""The output layout: the one place that decides where an experiment's and a run's files are.

    runs/<name>/teacher/            model.pt, metrics.csv, config.yaml, checkpoint.pt (while training)
    runs/<name>/students/<run_id>/  config.yaml, metrics.csv, checkpoint.pt (while training), owner.json,
                                    model.pt, summary.json (written last); RunFiles names each
    runs/<name>/cache/              teacher logits, keyed by checkpoint + dataset + transform
    runs/<name>/locks/              one lock per run, so two sweeps never train the same run
    runs/<name>/report/             what `kdtemp report` writes
    runs/<name>/tensorboard/<run>/  TensorBoard event files (logging.tensorboard), <run> = a run id or teacher

kdtemp/store/records.py says what the files hold; kdtemp/store/files.py writes and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths of one experiment; ask it rather than joining paths elsewhere."""

    root: Path

    @classmethod
    def of(cls, runs_dir: Path, name: str) -> ExperimentLayout:
        return cls(Path(runs_dir) / name)

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_model(self) -> Path:
        return self.teacher_files(0, 1).model

    def teacher_dir_of(self, index: int, count: int) -> Path:
        """teacher/ for a single teacher; teacher/teacher-<i>/ for each member of an ensemble."""
        return self.teacher_dir if count == 1 else self.teacher_dir / f"teacher-{index}"

    def teacher_files(self, index: int, count: int) -> RunFiles:
        """The files of one teacher: model.pt, metrics.csv, config.yaml, checkpoint.pt while it trains."""
        return RunFiles(self.teacher_dir_of(index, count))

    def teacher_models(self, count: int) -> list[Path]:
        return [self.teacher_files(index, count).model for index in range(count)]

    @property
    def ensemble_record(self) -> Path:
        """teacher/ensemble.json: the teachers of an ensemble, their accuracies and the ensemble's."""
        return self.teacher_dir / "ensemble.json"

    @property
    def students_dir(self) -> Path:
        return self.root / "students"

    def run_dir(self, run_id: str) -> Path:
        return self.students_dir / run_id

    def run_files(self, run_id: str) -> RunFiles:
        return RunFiles(self.run_dir(run_id))

    def lock_path(self, run_id: str) -> Path:
        return self.root / "locks" / f"{run_id}.lock"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def teacher_logits_cache(self, teacher_fingerprint: str, transform: str) -> Path:
        """Cached teacher logits: keyed by the checkpoint's content and the input transform."""
        return self.cache_dir / f"teacher-logits-{teacher_fingerprint}-{transform}.pt"

    def tensorboard_dir(self, run: str) -> Path:
        """TensorBoard events of `run`: a student's run id, or teacher (teacher-<i> in an ensemble)."""
        return self.root / "tensorboard" / run

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def same_curves(self) -> Path:
        """Grid cells trained once for several schedule labels (kdtemp.sweep.plan.grid_cells' same_as)."""
        return self.root / "same_curves.json"

    @property
    def tokenizer(self) -> Path:
        """Text data: the tokenizer (tokenizers' JSON) the experiment's token ids came from, for export."""
        return self.root / "tokenizer.json"

    @property
    def search_dir(self) -> Path:
        """`kdtemp search`'s study (Optuna journal) and its record."""
        return self.root / "search"

    def run_dirs(self) -> list[Path]:
        if not self.students_dir.is_dir():
            return []
        return sorted(p for p in self.students_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class RunFiles:
    """The files of one run, a student's (students/<run_id>/) or a teacher's (teacher/): ask it for paths."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @property
    def config(self) -> Path:
        """config.yaml: the run, its identity, the experiment's config and the environment."""
        return self.dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        """metrics.csv: one row per finished epoch (records.StudentRow or TeacherRow)."""
        return self.dir / "metrics.csv"

    @property
    def checkpoint(self) -> Path:
        """checkpoint.pt: where an interrupted run resumes; deleted once it completes."""
        return self.dir / "checkpoint.pt"

    @property
    def model(self) -> Path:
        """model.pt: the trained network's weights, written at the last epoch."""
        return self.dir / "model.pt"

    @property
    def summary(self) -> Path:
        """summary.json (records.RunSummary), written last: its presence marks a finished student run."""
        return self.dir / "summary.json"

    @property
    def shared_epochs(self) -> Path:
        """shared_epochs.json: the epochs recorded from another run's group member while the two trained
        identically (a search's, kdtemp.search.shared_prefix); absent when it trained every epoch itself."""
        return self.dir / "shared_epochs.json"

    @property
    def owner(self) -> Path:
        """owner.json: who trains the run (host, pid, worker or Slurm job), for `kdtemp status`."""
        return self.dir / "owner.json"

    @property
    def lock(self) -> Path:
        """A student run's lock (students/<run_id>/ only), held by the one process that trains it, under
        the experiment's locks/."""
        return ExperimentLayout(self.dir.parent.parent).lock_path(self.dir.name)
