"""FA, RA and FID-digits: the formulas, and the bundled judge's behaviour on digits and on non-digits."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from sfr_diffusion.digits import bundled_path
from sfr_diffusion.digits.data import digits_tensor
from sfr_diffusion.digits.judge import DigitsClassifier, non_digit_images
from sfr_diffusion.digits.metrics import class_erasure_metrics, frechet_distance, generate_per_class


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


class CountingReplay(ReplayPipeline):
    """A ReplayPipeline that counts its calls."""

    calls = 0

    def __call__(self, class_labels, **kwargs):
        self.calls += 1
        return super().__call__(class_labels, **kwargs)


def test_forget_classes_get_their_own_sample_count_in_one_call(judge):
    pipeline = CountingReplay()
    metrics = class_erasure_metrics(
        pipeline, judge, [3], samples_per_class=5, forget_samples_per_class=30, num_inference_steps=1, seed=4
    )
    assert pipeline.calls == 1
    assert metrics["forget_samples"] == 30 and metrics["remain_samples_per_class"] == metrics["samples_per_class"] == 5
    assert metrics["label_distribution"][3][3] >= 0.95 and metrics["seed"] == 4
    default = class_erasure_metrics(CountingReplay(), judge, [3, 5], samples_per_class=4, num_inference_steps=1)
    assert default["forget_samples"] == 8 and default["remain_samples_per_class"] == 4  # both erased classes: 4 each


def test_text_prompts_of_forget_classes_get_proportionally_more_samples():
    seen = []

    def text_pipeline(prompts, generator=None, **kwargs):
        seen.extend(prompts)
        return SimpleNamespace(images=torch.zeros(len(prompts), 1, 8, 8))

    text_pipeline.device = torch.device("cpu")
    prompts = {3: ["a 3", "three", "III"], 4: ["a 4", "four", "IV"]}
    images, labels, _ = generate_per_class(
        text_pipeline, [3, 4], {3: 10, 4: 10}, guidance_scale=1.0, num_inference_steps=1, class_prompts=prompts,
        round_up=[3],
    )  # fmt: skip
    assert seen.count("three") == 4 and seen.count("four") == 3  # 10 samples over 3 prompts: at least 10 / at most
    assert labels.tolist() == [3] * 12 + [4] * 9 and len(images) == 21


@pytest.mark.parametrize(("alias", "default_guidance"), [("ddpm", 1.0), ("dit", 4.0)])
def test_guidance_sweep_on_the_bundled_models(judge, alias, default_guidance):
    """A few samples and two sampling steps: the sweep's bookkeeping, not the models' quality."""
    from sfr_diffusion import load_pipeline
    from sfr_diffusion.digits.metrics import guidance_sweep

    pipeline = load_pipeline(f"digits-{alias}")
    sweep = guidance_sweep(
        pipeline, [3], scales=(1.0, 3.0), samples_per_class=2, forget_samples_per_class=6, num_inference_steps=2,
        seed=5, judge=judge,
    )  # fmt: skip
    per_guidance = sweep["per_guidance"]
    assert list(per_guidance) == sorted({"1.0", "3.0", str(default_guidance)}, key=float)
    assert sweep["default_guidance"] == default_guidance
    assert sweep["FA_worst"] == max(m["FA"] for m in per_guidance.values())
    assert sweep["RA_worst"] == min(m["RA"] for m in per_guidance.values())
    assert per_guidance[str(sweep["worst_guidance"])]["FA"] == sweep["FA_worst"]
    for scale, metrics in per_guidance.items():
        assert metrics["guidance_scale"] == float(scale) and metrics["seed"] == 5 and np.isfinite(metrics["FID"])
        assert metrics["forget_samples"] == 6 and metrics["remain_samples_per_class"] == 2


def test_the_evaluate_command_sweeps_guidance(capsys):
    from sfr_diffusion.commands.evaluate import main

    argv = ["digits-ddpm", "--forget", "three", "--guidance_scales", "2", "--samples_per_class", "2"]
    metrics = main([*argv, "--forget_samples_per_class", "3", "--num_inference_steps", "2"])
    assert list(metrics["per_guidance"]) == ["1.0", "2.0"] and metrics["default_guidance"] == 1.0
    assert metrics["per_guidance"]["2.0"]["forget_samples"] == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["forget"] == [3] and printed["FA_worst"] == metrics["FA_worst"]
