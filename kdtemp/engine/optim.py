"""Optimisers and learning-rate schedules, shared by the teacher loop and the student engine.

A student group keeps K students in one stacked tensor per parameter. torch's optimisers are
elementwise, but their vectorised kernels fuse multiply-adds in SIMD lanes and not in the scalar
tail, so an element's rounding depends on where it sits in the tensor: a student would train
very slightly differently in a group of 3 than alone, and over tens of epochs that drift reaches
the test accuracy (a one-off measurement: docs/concepts/engine.md). `MemberwiseSGD` and
`MemberwiseAdam` make the same updates from correctly rounded operations only (add, sub, mul, div,
sqrt), so each element's result depends on its own inputs alone: a student's numbers are the same
in any group, in any worker, under any launcher.

That reason is a CPU matter. On CUDA one kernel per operation per parameter makes the step
launch-bound (~9 launches per stacked parameter), so there the same operations run as
`torch._foreach_*` calls, a handful of launches for all parameters. Each is still one correctly
rounded operation per element (no fused multiply-add, no `alpha=` arguments), so the updates and the
group-independence are the same; on CPU the foreach path gives the memberwise path's bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch

from kdtemp.config.model_specs import TrainingSettings


def use_foreach(foreach: bool | None, params: list[torch.Tensor]) -> bool:
    """`foreach` as given, else on when the parameters live on CUDA (see the module docstring)."""
    if foreach is not None:
        return foreach
    return params[0].is_cuda


class _MemberwiseOptimizer(torch.optim.Optimizer):
    """The step both memberwise optimisers share: per-parameter operations, or foreach ones on CUDA."""

    foreach: bool | None = None

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            self._init_state(params)
            if params and use_foreach(self.foreach, params):
                self._foreach_step(group, params)
            else:
                for param in params:
                    self._param_step(group, param)

    def _init_state(self, params: list[torch.Tensor]) -> None:
        """Create what a parameter's first step needs (nothing for SGD: its momentum starts from the
        gradient)."""

    def _param_step(self, group: dict, param: torch.Tensor) -> None:
        raise NotImplementedError

    def _foreach_step(self, group: dict, params: list[torch.Tensor]) -> None:
        raise NotImplementedError


class MemberwiseSGD(_MemberwiseOptimizer):
    """SGD with momentum (Nesterov when asked) and L2 weight decay, as torch.optim.SGD computes it.

    `foreach` None: torch._foreach_* on CUDA, one operation per parameter elsewhere.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        foreach: bool | None = None,
    ):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        )
        self.foreach = foreach

    def _param_step(self, group: dict, param: torch.Tensor) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        update = cast(torch.Tensor, param.grad).clone()  # step() passes only parameters with a gradient
        if decay:
            update.add_(param * decay)
        if momentum:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = update.clone()
            else:
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(update)
            buffer = state["momentum_buffer"]
            update = update.add_(buffer * momentum) if group["nesterov"] else buffer.clone()
        param.sub_(update.mul_(lr))

    def _foreach_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """`_param_step`'s operations, in its order, each over every parameter at once."""
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        grads = [cast(torch.Tensor, param.grad) for param in params]  # step() passes only those with one
        updates: list[torch.Tensor] | tuple[torch.Tensor, ...] = grads
        if decay:
            updates = torch._foreach_mul(params, decay)
            torch._foreach_add_(updates, grads)  # grad + param * decay, as above
        if momentum:
            states = [self.state[param] for param in params]
            started = [index for index, state in enumerate(states) if "momentum_buffer" in state]
            if started:
                buffers = [states[index]["momentum_buffer"] for index in started]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, [updates[index] for index in started])
            for state, update in zip(states, updates, strict=False):
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
            buffers = [state["momentum_buffer"] for state in states]
            if group["nesterov"]:
                updates = torch._foreach_add(updates, torch._foreach_mul(buffers, momentum))
            else:
                updates = buffers
        torch._foreach_sub_(params, torch._foreach_mul(updates, lr))


class MemberwiseAdam(_MemberwiseOptimizer):
    """Adam (L2 weight decay) or, with `decoupled`, AdamW, as torch.optim.Adam/AdamW compute them.

    `foreach` None: torch._foreach_* on CUDA, one operation per parameter elsewhere.
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        foreach: bool | None = None,
    ):
        super().__init__(
            params,
            {"lr": lr, "weight_decay": weight_decay, "decoupled": decoupled, "betas": betas, "eps": eps},
        )
        self.foreach = foreach

    def _init_state(self, params: list[torch.Tensor]) -> None:
        for param in params:
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)

    def _param_step(self, group: dict, param: torch.Tensor) -> None:
        lr, decay, (beta1, beta2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
        gradient, state = cast(torch.Tensor, param.grad), self.state[param]
        state["step"] += 1
        step = float(state["step"])
        if decay and group["decoupled"]:
            param.mul_(1 - lr * decay)
        elif decay:
            gradient = gradient + param * decay
        state["exp_avg"].mul_(beta1).add_(gradient * (1 - beta1))
        state["exp_avg_sq"].mul_(beta2).add_(gradient * gradient * (1 - beta2))
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(eps)
        param.sub_(state["exp_avg"] / (1 - beta1**step) / denominator * lr)

    def _foreach_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """`_param_step`'s operations, in its order, each over every parameter at once."""
        lr, decay, (beta1, beta2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
        states = [self.state[param] for param in params]
        counters = [state["step"] for state in states]  # on the CPU, as torch's Adam keeps them
        torch._foreach_add_(counters, 1)
        steps = torch.stack(counters).tolist()
        gradients: list[torch.Tensor] | tuple[torch.Tensor, ...]
        gradients = [cast(torch.Tensor, param.grad) for param in params]
        if decay and group["decoupled"]:
            torch._foreach_mul_(params, 1 - lr * decay)
        elif decay:
            gradients = torch._foreach_add(gradients, torch._foreach_mul(params, decay))
        exp_avgs, exp_avg_sqs = (
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
        )
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, torch._foreach_mul(gradients, 1 - beta1))
        squares = torch._foreach_mul(gradients, gradients)
        torch._foreach_mul_(squares, 1 - beta2)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_add_(exp_avg_sqs, squares)
        denominators = torch._foreach_div(exp_avg_sqs, [1 - beta2**step for step in steps])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, eps)
        updates = torch._foreach_div(exp_avgs, [1 - beta1**step for step in steps])
        torch._foreach_div_(updates, denominators)
        torch._foreach_mul_(updates, lr)
        torch._foreach_sub_(params, updates)


def build_optimizer(
    settings: TrainingSettings, param_groups: Iterable, memberwise: bool = False
) -> torch.optim.Optimizer:
    """The configured optimiser; param groups may set their own weight_decay (temperatures take none).

    `memberwise` for stacked students (see the module docstring). A single network (a teacher)
    gets torch's fused kernels, one pass per parameter, falling back to the plain loop.
    """
    groups = list(param_groups)
    nesterov = settings.nesterov and settings.momentum > 0  # torch refuses Nesterov without momentum
    if memberwise:
        if settings.optimizer == "sgd":
            return MemberwiseSGD(groups, settings.lr, settings.momentum, settings.weight_decay, nesterov)
        return MemberwiseAdam(
            groups, settings.lr, settings.weight_decay, decoupled=settings.optimizer == "adamw"
        )
    kinds = {
        "sgd": (torch.optim.SGD, {"momentum": settings.momentum, "nesterov": nesterov}),
        "adam": (torch.optim.Adam, {}),
        "adamw": (torch.optim.AdamW, {}),
    }
    optimizer_class, extra = kinds[settings.optimizer]
    kwargs = {"lr": settings.lr, "weight_decay": settings.weight_decay, **extra}
    try:
        return optimizer_class(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return optimizer_class(groups, **kwargs)


def learning_rate(settings: TrainingSettings, step: int, steps_per_epoch: int) -> float:
    """The learning rate for optimisation step `step` (0-based) of `settings.epochs` epochs."""
    if settings.lr_schedule == "cosine":
        total = settings.epochs * steps_per_epoch
        return settings.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if settings.lr_schedule == "multistep":
        epoch = step // steps_per_epoch
        return settings.lr * settings.lr_gamma ** sum(1 for m in settings.lr_milestones if m <= epoch)
    return settings.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
