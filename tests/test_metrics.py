"""FA, RA and FID-digits: the formulas, and the bundled judge's behaviour on digits and on non-digits."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from sfr_diffusion.digits import bundled_path
from sfr_diffusion.digits.data import digits_tensor
from sfr_diffusion.digits.judge import DigitsClassifier, non_digit_images
from sfr_diffusion.digits.metrics import class_erasure_metrics, frechet_distance


@pytest.fixture(scope="module")
def judge():
    return DigitsClassifier.from_pretrained(bundled_path("judge"))


class ReplayPipeline:
    """Stands in for a generator: returns held-out real digits of each requested class, or a blank for `blank`."""

    device = torch.device("cpu")

    def __init__(self, blank: int | None = None):
        self.images, self.labels = digits_tensor("test")
        self.blank = blank

    def __call__(self, class_labels, generator=None, output_type="pt", **kwargs):
        out = []
        for i, label in enumerate(class_labels):
            if label == self.blank:
                out.append(torch.full((1, 8, 8), -1.0))
            else:
                pool = self.images[self.labels == label]
                out.append(pool[i % len(pool)])
        return SimpleNamespace(images=(torch.stack(out) + 1) / 2)


def test_frechet_distance_matches_the_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12))
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)
    )
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_stays_finite_with_dead_features():
    rng = np.random.default_rng(1)
    a, b = np.zeros((100, 8)), np.zeros((100, 8))
    a[:, :3], b[:, :3] = rng.normal(size=(100, 3)), rng.normal(size=(100, 3)) + 1  # five constant (ReLU-dead) dims
    distance = frechet_distance(a, b)
    assert np.isfinite(distance) and distance > 2.5


def test_judge_accuracy_on_held_out_digits(judge):
    images, labels = digits_tensor("test")
    assert (judge.predict(images) == labels).float().mean() >= 0.98


def test_judge_calls_non_digits_no_digit(judge):
    no_digit = judge.config.num_classes
    blanks = torch.full((4, 1, 8, 8), -1.0)
    assert (judge.predict(blanks) == no_digit).all()
    unseen = non_digit_images(200, torch.Generator().manual_seed(123))  # other draws than in training
    assert (judge.predict(unseen) == no_digit).float().mean() >= 0.95


def test_metrics_of_a_perfect_generator(judge):
    metrics = class_erasure_metrics(
        ReplayPipeline(), judge, [3], samples_per_class=20, guidance_scale=1.0, num_inference_steps=1
    )
    assert metrics["FA"] >= 0.95  # the class is still there
    assert metrics["RA"] >= 0.95
    assert set(metrics["per_class_accuracy"]) == set(range(10))


def test_metrics_when_the_class_is_gone(judge):
    images, labels = digits_tensor("test")
    metrics = class_erasure_metrics(
        ReplayPipeline(blank=3),
        judge,
        [3],
        real_images=images,
        real_labels=labels,
        samples_per_class=20,
        guidance_scale=1.0,
        num_inference_steps=1,
    )
    assert metrics["FA"] == 0.0
    assert metrics["per_class_accuracy"][3] == 0.0
    # The judge's label distribution per class: all of class 3's samples went to "no digit" (label 10).
    assert metrics["label_distribution"][3] == [0.0] * 10 + [1.0]
    for c, shares in metrics["label_distribution"].items():
        assert len(shares) == 11 and sum(shares) == pytest.approx(1.0)
        assert shares[c] == pytest.approx(metrics["per_class_accuracy"][c])
    assert metrics["RA"] >= 0.95
    assert np.isfinite(metrics["FID"])  # on the nine remaining classes only: unaffected by the blanks
