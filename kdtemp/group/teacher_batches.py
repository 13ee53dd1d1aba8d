"""The teacher's signal for each step of a student group: its logits (and hint features) per batch.

Cached logits are gathered by the batch's indices; otherwise (augmented inputs) the teacher networks
run on every batch. Students of several seeds take a batch row per seed, (S, B), and every member
gets its seed's row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from kdtemp.engine.loop import LoopSettings, TeacherSignal, to_memory_format
from kdtemp.models.features import FeatureCapture


class TeacherBatches:
    """A step's (indices, inputs) -> (logits, features), (n, B, ...) or per member (K, n, B, ...)."""

    def __init__(
        self,
        teacher: TeacherSignal,
        settings: LoopSettings,
        seeds: Sequence[int],
        seed_rows: Sequence[int],
        member_rows: torch.Tensor | None,
        feature_captures: Callable[[], list[FeatureCapture]] | None,
    ):
        self.teacher, self.settings = teacher, settings
        self.seeds, self.seed_rows, self.member_rows = list(seeds), list(seed_rows), member_rows
        self.feature_captures = feature_captures
        """The teacher networks' hint captures, when a method wants their features; else None."""
        self._rows = torch.arange(len(self.seed_rows), device=settings.device)[:, None]

    def _gather(self, cached: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """This step's rows of a cached (n, N, ...) or per-member (K, n, N, ...) tensor: (n, B, ...) or
        (K, n, B, ...).

        With several seeds `indices` are (S, B), a row per seed, and every member gets its seed's row.
        """
        if indices.dim() == 1:
            return cached[:, :, indices] if self.teacher.per_member else cached[:, indices]
        if self.teacher.per_member:  # (S, B) seed rows -> (K, B) member rows
            # (K, B, n, ...) -> (K, n, B, ...)
            return cached[self._rows, :, indices[self.member_rows]].movedim(2, 1)
        return cached[:, indices].movedim(1, 0)[self.member_rows]  # (n, S, B, ...) -> (K, n, B, ...)

    def __call__(
        self, indices: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits (and hint features) for this step's batch: (n, B, ...), or (K, n, B, ...)
        per member.

        With several seeds the batch has a row per seed, (S, B, ...). Teachers run on every batch
        (augmented inputs): on CUDA on the S rows concatenated, (S*B, ...), one call per teacher and
        step, whose rows each member indexes by its seed; on CPU once per seed row, because a sample's
        logits can round differently inside a batch of another size (1e-7 for batches of 3, 5 or 17
        rows, measured), and a member must get exactly the targets it gets alone
        (tests/engine/test_engine.py).
        """
        if self.teacher.train_logits is not None:
            cached = self.teacher.train_features if self.feature_captures is not None else None
            features = self._gather(cached, indices) if cached is not None else None
            return self._gather(self.teacher.train_logits, indices), features
        layout = partial(to_memory_format, channels_last=self.teacher.channels_last)
        # per member: network k is member k's own teacher, on its batch: (K, B, ...) -> (K, 1, B, ...)
        if self.teacher.per_member:
            if self.member_rows is None:
                batches = [layout(inputs)] * len(self.seed_rows)
            else:
                batches = [layout(inputs[row]) for row in self.seed_rows]
            logits, features = self._run_teachers(batches)
            return logits.unsqueeze(1), None if features is None else features.unsqueeze(1)
        count = len(self.teacher.networks)
        if self.member_rows is None:
            return self._run_teachers([layout(inputs)] * count)
        if self.settings.device.type == "cpu":
            rows = [self._run_teachers([layout(row)] * count) for row in inputs]
            logits = torch.cat([row_logits for row_logits, _ in rows], dim=1)
            row_features = [features for _, features in rows if features is not None]
            features = torch.cat(row_features, dim=1) if row_features else None
        else:
            logits, features = self._run_teachers([layout(inputs.flatten(0, 1))] * count)
        return self._by_member(logits), None if features is None else self._by_member(features)

    def _run_teachers(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each teacher network on its batch, in float32 even when the students use bf16 autocast: (n, B, C)
        logits, (n, B, *F) features. The logits are the soft targets, the subject of a temperature study:
        bf16 features would move softmax(t/T) at T = 1 by up to 1.6e-1 relative (measured for a `cnn`
        teacher with CUDA's cast policy; a float32 classifier alone only brought that to 9.6e-2). On CUDA
        its matmuls and convolutions may use TF32 (device.configure_backends); one pass serves the group."""
        networks = self.teacher.networks
        # autocast off even inside a caller's autocast region (engine.loop.autocast(..., False) is a no-op)
        with torch.no_grad(), torch.autocast(self.settings.device.type, enabled=False):
            pairs = zip(networks, batches, strict=True)
            logits = torch.stack([network(batch).float() for network, batch in pairs])
        features = None
        if self.feature_captures is not None:
            features = torch.stack([capture.pop().float() for capture in self.feature_captures()])
        return logits, features

    def _by_member(self, concatenated: torch.Tensor) -> torch.Tensor:
        """(n, S*B, ...) outputs on the seed rows concatenated -> (K, n, B, ...), member k's seed's rows."""
        return concatenated.unflatten(1, (len(self.seeds), -1)).movedim(1, 0)[self.member_rows]
