"""The pure loss functions of SFR-on (SPEC §1, forget step)."""

import math

import pytest
import torch

from sfr_diffusion.losses import adaptive_weights, forget_weight, per_sample_mse, weighted_ascent_loss


def test_adaptive_weights_match_the_formula():
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    temperature = 0.5
    by_hand = [value ** (-temperature) for value in losses.tolist()]
    expected = torch.tensor([value / sum(by_hand) for value in by_hand])

    weights = adaptive_weights(losses, temperature)

    torch.testing.assert_close(weights.double(), expected.double(), rtol=1e-6, atol=0)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    # Well-fitted samples (small loss) get the larger push.
    assert weights[0] > weights[1] > weights[2] > weights[3]


def test_adaptive_weights_carry_no_gradient():
    losses = torch.tensor([0.3, 0.7, 1.1], requires_grad=True)

    weights = adaptive_weights(losses, 1.0)

    assert not weights.requires_grad
    assert weights.grad_fn is None


def test_adaptive_weights_with_zero_temperature_are_uniform():
    losses = torch.tensor([0.01, 0.5, 3.0, 100.0])

    torch.testing.assert_close(adaptive_weights(losses, 0.0), torch.full((4,), 0.25))


def test_adaptive_weights_normalise_over_the_global_batch_through_reduce_sum():
    losses = torch.tensor([1.0, 4.0])  # this process's share: ℓ^(-λ) = [1.0, 0.5], local sum 1.5
    other_processes = torch.tensor(8.5)  # Σ_j ℓ_j^(-λ) over the other processes' shares
    seen = []

    def reduce_sum(total):  # what accelerator.reduce(..., "sum") does across processes
        seen.append(total.item())
        return total + other_processes

    weights = adaptive_weights(losses, 0.5, reduce_sum=reduce_sum)

    assert seen == [pytest.approx(1.5)]  # the local normaliser is what gets summed
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5]) / 10.0)


def test_adaptive_weights_reject_negative_temperature():
    with pytest.raises(ValueError, match="temperature"):
        adaptive_weights(torch.ones(3), -0.1)


@pytest.mark.parametrize(
    "step, expected_fraction",
    [(0, 1.0), (50, 0.5), (100, 0.0), (25, (1 + math.cos(math.pi / 4)) / 2)],
)
def test_forget_weight_follows_the_cosine_decay(step, expected_fraction):
    alpha, total = 10.0, 100

    assert forget_weight(step, total, alpha) == pytest.approx(alpha * expected_fraction, abs=1e-12)


@pytest.mark.parametrize("step", [0, 50, 100])
def test_forget_weight_is_constant_without_decay(step):
    assert forget_weight(step, 100, 10.0, cosine_decay=False) == 10.0


def test_weighted_ascent_gradient_is_minus_alpha_weighted_sum_of_sample_gradients():
    torch.manual_seed(0)
    theta = torch.randn(3, requires_grad=True)
    inputs, targets = torch.randn(5, 3), torch.randn(5)
    alpha = 2.5

    def per_sample_losses():
        return (inputs @ theta - targets).pow(2) + 0.1

    losses = per_sample_losses()
    weights = adaptive_weights(losses, 0.5)
    (gradient,) = torch.autograd.grad(weighted_ascent_loss(losses, weights, alpha), theta)

    expected = torch.zeros(3)
    for i in range(5):
        (sample_gradient,) = torch.autograd.grad(per_sample_losses()[i], theta)
        expected -= alpha * weights[i] * sample_gradient
    torch.testing.assert_close(gradient, expected)


def test_weighted_ascent_loss_value():
    losses, weights = torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75])

    assert weighted_ascent_loss(losses, weights, 2.0).item() == pytest.approx(-2.0 * (0.25 + 2.25))


def test_per_sample_mse_is_one_value_per_sample_in_fp32():
    prediction = torch.randn(4, 1, 8, 8, dtype=torch.float16)
    target = torch.randn(4, 1, 8, 8, dtype=torch.float16)

    loss = per_sample_mse(prediction, target)

    assert loss.shape == (4,)
    assert loss.dtype == torch.float32
    expected = torch.stack([(p.float() - t.float()).pow(2).mean() for p, t in zip(prediction, target, strict=True)])
    torch.testing.assert_close(loss, expected)
