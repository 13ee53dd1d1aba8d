"""The memberwise optimisers: torch's updates, and a member's numbers independent of its neighbours."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kdtemp.config.model_specs import MLPSpec
from kdtemp.engine.optim import (
    MemberwiseAdam,
    MemberwiseSGD,
    build_optimizer,
    learning_rate,
    use_foreach,
)

CASES = [  # ours take `foreach` (None: per device), torch's do not
    (lambda p, **kw: MemberwiseSGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, **kw),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (lambda p, **kw: MemberwiseSGD(p, lr=0.1, momentum=0.9, weight_decay=0.0, **kw),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda p, **kw: MemberwiseSGD(p, lr=0.1, **kw), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda p, **kw: MemberwiseAdam(p, lr=1e-2, weight_decay=1e-3, **kw),
     lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3)),
    (lambda p, **kw: MemberwiseAdam(p, lr=1e-2, weight_decay=1e-2, decoupled=True, **kw),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)),
]


def quadratic_steps(make, shape, steps=25, seed=0, dtype=torch.float32):
    """Minimise a random quadratic; return the parameter after `steps` updates."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(shape, generator=generator, dtype=dtype)
    param = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
    optimizer = make([param])
    for _ in range(steps):
        optimizer.zero_grad()
        ((param - target) ** 2 * torch.linspace(0.5, 2.0, param.numel(), dtype=dtype).view(shape)).sum().backward()
        optimizer.step()
    return param.detach()


def with_foreach(make, foreach):
    """`make`, with the CUDA path (torch._foreach_*) forced on or off, whatever the device."""
    return lambda params: make(params, foreach=foreach)


class OpCounter(TorchDispatchMode):
    """Counts the aten operations a block dispatches: on CUDA each is at least one kernel launch."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def stacked_params(count: int, seed: int = 0) -> list[torch.Tensor]:
    """`count` stacked parameters of 3 members, of shapes that do not fill a SIMD register."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 5 + index, 7, generator=generator).requires_grad_() for index in range(count)]


@pytest.mark.parametrize("ours, theirs", CASES)
def test_same_updates_as_torch(ours, theirs):
    assert torch.allclose(quadratic_steps(ours, (7, 13)), quadratic_steps(theirs, (7, 13)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours, _", CASES)
def test_a_member_does_not_depend_on_its_neighbours(ours, _):
    """Member 0 alone (1, 10) and inside a stack of 3 (3, 10): bitwise the same, for tails that do not fill a SIMD register."""
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(3, 10, generator=generator)
    gradients = [torch.randn(3, 10, generator=generator) for _ in range(20)]
    results = []
    for width in (1, 3):
        param = start[:width].clone().requires_grad_()
        optimizer = ours([param])
        for step, gradient in enumerate(gradients):
            param.grad = gradient[:width].clone()
            for group in optimizer.param_groups:
                group["lr"] *= 0.97  # a changing schedule, as in training
            optimizer.step()
        results.append(param.detach()[0])
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("ours, theirs", CASES)
def test_foreach_path_makes_torchs_updates_in_float64(ours, theirs):
    """The CUDA path, run here on CPU in float64: torch's optimisers to rounding, over 25 steps."""
    mine = quadratic_steps(with_foreach(ours, True), (7, 13), dtype=torch.float64)
    assert torch.allclose(mine, quadratic_steps(theirs, (7, 13), dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours, _", CASES)
def test_foreach_path_gives_the_memberwise_bits(ours, _):
    """Same operations in the same order: on CPU the foreach path reproduces the per-parameter path exactly,
    including a parameter whose gradient appears only from the third step (its buffers start late)."""
    results = []
    for foreach in (False, True):
        params = stacked_params(4)
        optimizer = with_foreach(ours, foreach)(params)
        generator = torch.Generator().manual_seed(2)
        for step in range(6):
            for index, param in enumerate(params):
                param.grad = None if index == 3 and step < 2 else torch.randn(param.shape, generator=generator)
            optimizer.step()
        results.append([param.detach().clone() for param in params])
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("ours, _", CASES)
def test_foreach_step_dispatches_a_few_ops_for_all_parameters(ours, _):
    """The launch count that made the memberwise step slow on CUDA: ~9 ops per parameter, against a fixed few."""
    counts = {}
    for foreach in (False, True):
        for count in (8, 32):
            params = stacked_params(count)
            optimizer = with_foreach(ours, foreach)(params)
            for _ in range(2):  # the second step is the steady state (momentum buffers exist)
                for param in params:
                    param.grad = torch.ones_like(param)
                with OpCounter() as counter:
                    optimizer.step()
            counts[foreach, count] = counter.count
    assert counts[False, 32] >= 3 * 32  # grows with the parameters...
    assert counts[True, 32] == counts[True, 8] <= 20  # ...the foreach step does not


def test_foreach_is_on_for_cuda_parameters_only():
    cpu = [torch.zeros(2, requires_grad=True)]
    assert not use_foreach(None, cpu) and use_foreach(True, cpu) and not use_foreach(False, cpu)
    assert MemberwiseSGD(cpu, lr=0.1).foreach is None  # decided from the parameters' device at each step


def test_build_optimizer_picks_memberwise_for_students():
    param = [torch.zeros(2, requires_grad=True)]
    assert isinstance(build_optimizer(MLPSpec(optimizer="sgd"), [{"params": param}], memberwise=True), MemberwiseSGD)
    adamw = build_optimizer(MLPSpec(optimizer="adamw"), [{"params": param}], memberwise=True)
    assert isinstance(adamw, MemberwiseAdam) and adamw.param_groups[0]["decoupled"]
    assert isinstance(build_optimizer(MLPSpec(optimizer="sgd"), [{"params": param}]), torch.optim.SGD)


def heavy_ball_reference(start, gradients, lr, momentum, weight_decay):
    """Plain (not Nesterov) momentum SGD in float64, written out: b = mu * b + (g + wd * w), w -= lr * b,
    with b = g + wd * w at the first step (Sutskever et al. 2013's heavy ball, torch's convention)."""
    weight, buffer, trajectory = start.double().clone(), None, []
    for gradient in gradients:
        update = gradient.double() + weight_decay * weight
        buffer = update if buffer is None else momentum * buffer + update
        weight = weight - lr * buffer
        trajectory.append(weight.clone())
    return trajectory


@pytest.mark.parametrize("memberwise", [True, False])
def test_sgd_without_nesterov_is_plain_momentum(memberwise):
    # issue 12.11: RepDistiller's recipe is SGD momentum 0.9, weight decay 5e-4, no Nesterov
    settings = MLPSpec(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=False)
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(4, 9, generator=generator)
    gradients = [torch.randn(4, 9, generator=generator) for _ in range(12)]
    param = start.clone().requires_grad_()
    optimizer = build_optimizer(settings, [{"params": [param]}], memberwise=memberwise)
    plain = torch.optim.SGD([torch.nn.Parameter(start.clone())], lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=False)
    nesterov = torch.optim.SGD([torch.nn.Parameter(start.clone())], lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for gradient, expected in zip(gradients, heavy_ball_reference(start, gradients, 0.05, 0.9, 5e-4)):
        for other in (plain, nesterov):
            other.param_groups[0]["params"][0].grad = gradient.clone()
            other.step()
        param.grad = gradient.clone()
        optimizer.step()
        assert torch.allclose(param.detach().double(), expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(plain.param_groups[0]["params"][0].detach().double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(nesterov.param_groups[0]["params"][0].detach().double(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("memberwise", [True, False])
def test_sgd_is_nesterov_by_default(memberwise):
    param = [torch.zeros(2, requires_grad=True)]
    assert build_optimizer(MLPSpec(), [{"params": param}], memberwise=memberwise).param_groups[0]["nesterov"] is True
    without_momentum = build_optimizer(MLPSpec(momentum=0.0), [{"params": param}], memberwise=memberwise)
    assert without_momentum.param_groups[0]["nesterov"] is False  # torch refuses Nesterov without momentum


def test_learning_rate_schedules():
    cosine = MLPSpec(lr=0.1, epochs=2, lr_schedule="cosine")
    assert learning_rate(cosine, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 10, 10) == pytest.approx(0.05)
    steps = MLPSpec(lr=0.1, epochs=10, lr_schedule="multistep", lr_milestones=[2, 5], lr_gamma=0.1)
    assert [learning_rate(steps, e * 4, 4) for e in (0, 2, 5)] == pytest.approx([0.1, 0.01, 0.001])
    assert learning_rate(MLPSpec(lr=0.3, lr_schedule="constant"), 99, 10) == 0.3
