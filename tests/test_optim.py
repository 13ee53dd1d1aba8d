"""The memberwise optimisers: torch's updates, and a member's numbers independent of its neighbours."""

import pytest
import torch

from kdtemp.config import MLPSpec
from kdtemp.optim import MemberwiseAdam, MemberwiseSGD, build_optimizer, learning_rate

CASES = [
    (lambda p: MemberwiseSGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    (lambda p: MemberwiseSGD(p, lr=0.1, momentum=0.9, weight_decay=0.0),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda p: MemberwiseSGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda p: MemberwiseAdam(p, lr=1e-2, weight_decay=1e-3), lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3)),
    (lambda p: MemberwiseAdam(p, lr=1e-2, weight_decay=1e-2, decoupled=True),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)),
]


def quadratic_steps(make, shape, steps=25, seed=0):
    """Minimise a random quadratic; return the parameter after `steps` updates."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(shape, generator=generator)
    param = torch.randn(shape, generator=generator).requires_grad_()
    optimizer = make([param])
    for _ in range(steps):
        optimizer.zero_grad()
        ((param - target) ** 2 * torch.linspace(0.5, 2.0, param.numel()).view(shape)).sum().backward()
        optimizer.step()
    return param.detach()


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
