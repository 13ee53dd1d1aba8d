"""Optimisers and learning-rate schedules, shared by the teacher loop and the student engine.

A student group keeps K students in one stacked tensor per parameter. torch's optimisers are
elementwise, but their vectorised kernels fuse multiply-adds in SIMD lanes and not in the scalar
tail, so an element's rounding depends on where it sits in the tensor: a student would train
very slightly differently in a group of 3 than alone, and over 30 epochs that drift reached 0.8%
test accuracy. `MemberwiseSGD` and `MemberwiseAdam` make the same updates from correctly rounded
operations only (add, sub, mul, div, sqrt), so each element's result depends on its own inputs
alone: a student's numbers are the same in any group, in any worker, under any launcher.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from kdtemp.config import TrainingSettings


class MemberwiseSGD(torch.optim.Optimizer):
    """SGD with momentum (Nesterov when asked) and L2 weight decay, as torch.optim.SGD computes it."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.clone()
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


class MemberwiseAdam(torch.optim.Optimizer):
    """Adam (L2 weight decay) or, with `decoupled`, AdamW, as torch.optim.Adam/AdamW compute them."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "decoupled": decoupled, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, decay, (beta1, beta2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                gradient = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                if decay and group["decoupled"]:
                    param.mul_(1 - lr * decay)
                elif decay:
                    gradient = gradient + param * decay
                state["exp_avg"].mul_(beta1).add_(gradient * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).add_(gradient * gradient * (1 - beta2))
                denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(eps)
                param.sub_(state["exp_avg"] / (1 - beta1 ** step) / denominator * lr)


def build_optimizer(settings: TrainingSettings, param_groups: Iterable, memberwise: bool = False) -> torch.optim.Optimizer:
    """The configured optimiser; param groups may set their own weight_decay (temperatures take none).

    `memberwise` for stacked students (see the module docstring). A single network (a teacher)
    gets torch's fused kernels, one pass per parameter, falling back to the plain loop.
    """
    groups = list(param_groups)
    nesterov = settings.nesterov and settings.momentum > 0  # torch refuses Nesterov without momentum
    if memberwise:
        if settings.optimizer == "sgd":
            return MemberwiseSGD(groups, settings.lr, settings.momentum, settings.weight_decay, nesterov)
        return MemberwiseAdam(groups, settings.lr, settings.weight_decay, decoupled=settings.optimizer == "adamw")
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
