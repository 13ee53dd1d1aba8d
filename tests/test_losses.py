"""The KD loss against a float64 reference, its closed-form gradient, and its edge cases."""

import math

import numpy as np
import pytest
import torch

from kdtemp.losses import (
    combine_terms, hint_loss, kd_loss, kd_terms, soft_target_log_probs, standardize_logits, standardized_logit_std,
)


def reference_kd_loss(student, teacher, targets, temperature, alpha):
    """Hinton et al. 2015, written out in float64 numpy, one sample at a time."""
    student = np.asarray(student, dtype=np.float64)
    teacher = np.asarray(teacher, dtype=np.float64)
    total_ce, total_kl = 0.0, 0.0
    for s, t, y in zip(student, teacher, targets):
        log_q1 = s - np.log(np.sum(np.exp(s - s.max()))) - s.max()
        total_ce += -log_q1[y]
        st, tt = s / temperature, t / temperature
        log_q = st - st.max() - np.log(np.sum(np.exp(st - st.max())))
        log_p = tt - tt.max() - np.log(np.sum(np.exp(tt - tt.max())))
        total_kl += np.sum(np.exp(log_p) * (log_p - log_q))
    batch = len(targets)
    return (1 - alpha) * total_ce / batch + alpha * temperature**2 * total_kl / batch


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_matches_float64_reference(temperature, alpha):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=generator) * 3
    teacher = torch.randn(16, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (16,), generator=generator)
    ours = kd_loss(student, teacher, targets, temperature, alpha)
    expected = reference_kd_loss(student.numpy(), teacher.numpy(), targets.numpy(), temperature, alpha)
    assert float(ours) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_gradient_matches_closed_form():
    """d/ds = (1-alpha) * (softmax(s) - onehot(y)) / B + alpha * T * (softmax(s/T) - softmax(t/T)) / B."""
    generator = torch.Generator().manual_seed(1)
    batch, classes, temperature, alpha = 8, 5, 3.0, 0.7
    student = (torch.randn(batch, classes, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, classes, (batch,), generator=generator)
    kd_loss(student, teacher, targets, temperature, alpha).backward()
    onehot = torch.nn.functional.one_hot(targets, classes).double()
    s = student.detach()
    expected = (1 - alpha) * (torch.softmax(s, -1) - onehot) / batch \
        + alpha * temperature * (torch.softmax(s / temperature, -1) - torch.softmax(teacher / temperature, -1)) / batch
    assert torch.allclose(student.grad, expected, atol=1e-12)


def test_kd_part_is_zero_when_student_equals_teacher():
    logits = torch.randn(32, 10)
    terms = kd_terms(logits, soft_target_log_probs(logits, 4.0), torch.zeros(32, dtype=torch.long), 4.0)
    assert abs(float(terms["kd"])) < 1e-6
    assert float(terms["ce"]) > 0


def test_alpha_weights_the_distillation_term():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    targets = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(student, targets)
    assert float(kd_loss(student, teacher, targets, 2.0, 0.0)) == pytest.approx(float(ce))
    pure_kd = kd_loss(student, teacher, targets, 2.0, 1.0)
    terms = kd_terms(student, soft_target_log_probs(teacher, 2.0), targets, 2.0)
    assert float(pure_kd) == pytest.approx(float(terms["kd"]))
    mixed = kd_loss(student, teacher, targets, 2.0, 0.9)
    assert float(mixed) == pytest.approx(0.1 * float(ce) + 0.9 * float(terms["kd"]), rel=1e-6)


def test_no_underflow_with_extreme_logits():
    """A probability that underflows to 0 in float32 must not produce inf or nan."""
    student = torch.tensor([[0.0, -200.0, 300.0]])
    teacher = torch.tensor([[400.0, -400.0, 0.0]])
    loss = kd_loss(student, teacher, torch.tensor([0]), 1.0, 1.0)
    expected = reference_kd_loss(student.numpy(), teacher.numpy(), [0], 1.0, 1.0)
    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_temperature_as_tensor_equals_float():
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    targets = torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(kd_loss(student, teacher, targets, torch.tensor(3.0), torch.tensor(0.5)),
                          kd_loss(student, teacher, targets, 3.0, 0.5))


def test_vmapped_loss_equals_per_member_losses():
    """The engine batches members with vmap: each member must get exactly its own loss."""
    generator = torch.Generator().manual_seed(4)
    students = torch.randn(3, 8, 5, generator=generator)
    teacher = torch.randn(8, 5, generator=generator)
    targets = torch.randint(0, 5, (8,), generator=generator)
    temperatures = torch.tensor([1.0, 2.0, 8.0])
    alphas = torch.tensor([0.0, 0.5, 0.9])
    batched = torch.func.vmap(kd_loss, in_dims=(0, None, None, 0, 0))(students, teacher, targets, temperatures, alphas)
    for k in range(3):
        single = kd_loss(students[k], teacher, targets, float(temperatures[k]), float(alphas[k]))
        assert float(batched[k]) == pytest.approx(float(single), rel=1e-6)


def test_standardize_logits_matches_float64_reference():
    logits = torch.randn(6, 10) * 5 + 3
    ours = standardize_logits(logits).double()
    reference = logits.double()
    reference = (reference - reference.mean(-1, keepdim=True)) / (reference.std(-1, keepdim=True) + 1e-7)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_ensemble_soft_targets_by_hand():
    teacher_a = torch.tensor([[2.0, 0.0, -1.0]])
    teacher_b = torch.tensor([[0.0, 1.0, 0.5]])
    stacked = torch.stack([teacher_a, teacher_b])
    temperature = 2.0
    pa, pb = torch.softmax(teacher_a / temperature, -1), torch.softmax(teacher_b / temperature, -1)
    mean_probs = soft_target_log_probs(stacked, temperature, ensemble="mean_probs").exp()
    assert torch.allclose(mean_probs, (pa + pb) / 2, atol=1e-6)
    weighted = soft_target_log_probs(stacked, temperature, ensemble="weighted", weights=torch.tensor([3.0, 1.0])).exp()
    assert torch.allclose(weighted, 0.75 * pa + 0.25 * pb, atol=1e-6)
    mean_logits = soft_target_log_probs(stacked, temperature, ensemble="mean_logits").exp()
    assert torch.allclose(mean_logits, torch.softmax((teacher_a + teacher_b) / 2 / temperature, -1), atol=1e-6)


@pytest.mark.parametrize("ensemble, weights", [("mean_logits", None), ("weighted", [1.0, 2.0, 5.0]), ("mean_probs", None)])
def test_standardized_logit_std_per_member_by_hand(ensemble, weights):
    """(K, n, B, C) per-member ensembles of 3 teachers: each member's per-sample std, written out in float64."""
    generator = torch.Generator().manual_seed(11)
    teachers = torch.randn(2, 3, 5, 7, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 3.0, 8.0],
                                                                                                 dtype=torch.float64).view(3, 1, 1)
    ours = standardized_logit_std(teachers, ensemble=ensemble, weights=None if weights is None else torch.tensor(weights))
    shares = np.array(weights) / sum(weights) if weights else np.full(3, 1 / 3)
    for k in range(2):
        for b in range(5):
            each = teachers[k, :, b].numpy()
            expected = np.std(each.mean(0), ddof=1) if ensemble == "mean_logits" else shares @ np.std(each, axis=1, ddof=1)
            assert float(ours[k, b]) == pytest.approx(expected, rel=1e-12)


def test_mean_logits_soft_targets_have_temperature_t0_times_that_std():
    """logit-std's soft targets at t0 are the averaged logits' softmax at T = t0 * std (mean shift aside)."""
    teachers = torch.randn(3, 4, 6, dtype=torch.float64) * 4
    t0 = 2.0
    ours = soft_target_log_probs(teachers, t0, ensemble="mean_logits", standardize=True).exp()
    effective = t0 * standardized_logit_std(teachers, ensemble="mean_logits")
    mean = teachers.mean(0)
    assert torch.allclose(ours, torch.softmax(mean / effective[:, None], -1), atol=1e-6)


def test_extra_terms_add_at_weight_one():
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(4.0), "feature": torch.tensor(0.5)}
    assert float(combine_terms(terms, 0.25)) == pytest.approx(0.75 * 2 + 0.25 * 4 + 0.5)


def test_hint_loss_is_mean_squared_error():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert float(hint_loss(a, b)) == pytest.approx((0 + 4 + 9 + 0) / 4)
    assert float(hint_loss(a, a)) == 0.0
    # a stacked group: one mean per member, each what the member's own hint_loss gives
    members = torch.stack([a, b, a + 1])
    per_member = hint_loss(members, b, member_dims=1)
    assert per_member.shape == (3,)
    assert per_member.tolist() == [float(hint_loss(m, b)) for m in members]
