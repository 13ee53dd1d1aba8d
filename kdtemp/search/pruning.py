"""Which trials stop: the pruner and sampler of a search, by name (search.pruner, search.sampler).

`halving` is synchronous successive halving, written on Optuna's pruner interface. Optuna's own
SuccessiveHalvingPruner is asynchronous (ASHA): a trial is judged against the trials that reached the
rung before it, so the first trial of a rung always continues. The trials of a lockstep batch reach a
rung together and report before any is judged, so here each is judged against all of them.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from kdtemp.config.schema import SearchConfig


def rung_epochs(min_epochs: int, factor: int, epochs: int) -> list[int]:
    """Epochs (completed, 1-based) at which a trial can be pruned: min_epochs x factor^k below `epochs`."""
    rungs, rung = [], min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= factor
    return rungs


class LockstepHalving(BasePruner):
    """At each rung, a trial continues when its value is among the best ceil(n / factor) of the n
    results reported at that epoch (its own batch included, as a batch reports before it is judged);
    ties with the last kept value continue. Trials whose curves are equal up to the rung are one
    result: at epoch granularity constant, linear and cosine of one t0 train epoch 1 identically (one
    member trains it for all, kdtemp.search.shared_prefix), so 13 trials are 5 results at epoch 1.
    A search stores with each value a digest of the rows behind it (user attr trained_as_<step>), so
    only trials that trained identically are one result, never two whose means merely tie; without
    it, equal curves are.
    Pure: the decision reads only the study's intermediate values, so a resumed search decides again
    exactly as before."""

    def __init__(self, min_epochs: int = 1, reduction_factor: int = 3):
        self.min_epochs, self.reduction_factor = min_epochs, reduction_factor

    def is_rung(self, step: int) -> bool:
        rung = self.min_epochs
        while rung < step:
            rung *= self.reduction_factor
        return rung == step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.is_rung(step):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        results = {
            result_at(t, step)
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
        }
        results.add(result_at(trial, step))
        values = [value for _, value in results if not math.isnan(value)]
        # ceil, not floor: at 13 results 5 go on, not 4 (benchmarks/search_speed.py: MNIST-1D's answer)
        keep = max(1, math.ceil(len(values) / self.reduction_factor))
        maximize = study.direction == StudyDirection.MAXIMIZE
        threshold = sorted(values, reverse=maximize)[keep - 1]
        return value < threshold if maximize else value > threshold


TRAINED_AS = "trained_as_"
"""User attr prefix: trained_as_<step> is a digest of what the trial's runs recorded up to that step."""


def result_at(trial: FrozenTrial, step: int) -> tuple:
    """What makes two trials one result at `step`, and the value: the stored digest of their rows, else
    their reported values at steps 1..step."""
    value = trial.intermediate_values[step]
    digest = trial.user_attrs.get(f"{TRAINED_AS}{step}")
    if digest is not None:
        return (digest, value), value
    return tuple(trial.intermediate_values.get(s) for s in range(1, step + 1)), value


def build_pruner(search: SearchConfig, epochs: int) -> BasePruner:
    if search.pruner == "halving":
        return LockstepHalving(search.first_rung(epochs), search.reduction_factor)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=search.first_rung(epochs),
            max_resource=epochs,
            reduction_factor=search.reduction_factor,
        )
    if search.pruner == "median":
        # its warm-up counts steps before the first it may prune at; our steps are epochs done, from 1
        return optuna.pruners.MedianPruner(n_warmup_steps=search.first_rung(epochs))
    return optuna.pruners.NopPruner()


def build_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """The sampler of a continuous space; a finite grid's trials are enqueued, so any sampler serves it."""
    seed = search.sampler_seed
    if not search.continuous or search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # several trials of a batch are asked before any is told: the liar keeps them apart
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
