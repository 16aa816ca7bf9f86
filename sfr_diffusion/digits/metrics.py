"""Digits-world metrics (SPEC §2): FA, RA and FID-digits, judged by the bundled classifier.

FA  forgetting accuracy: share of samples generated for the erased class that the judge assigns to it (lower is
    better; UA = 1 - FA).
RA  remaining accuracy: judge accuracy on samples generated for every other class.
FID-digits: Fréchet distance between judge features of generated remaining-class samples and real images of those
    classes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..families import family_for
from ..forgetting import default_guidance_scale, sweep_guidance
from ..pipelines import quiet_progress
from . import is_digits_world
from .data import DIGIT_NAMES, digits_tensor
from .judge import DigitsClassifier
from .prompts import digit_prompts
from .registry import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS, judged_captions, shipped_path


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    ``tr sqrt(Σ_a Σ_b)`` is computed as ``tr sqrt(Σ_a^½ Σ_b Σ_a^½)`` (same eigenvalues, but symmetric PSD), which
    stays exact where ReLU features leave the covariances singular.
    """
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


@torch.no_grad()
def generate_per_class(
    pipeline,
    classes: Sequence[int],
    samples_per_class: int | Mapping[int, int],
    *,
    guidance_scale: float,
    num_inference_steps: int,
    seed: int = 0,
    class_prompts: Mapping[int, Sequence[str]] | None = None,
    round_up: Collection[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Samples in [-1, 1] for each class, in one seeded batch; returns (images, their class ids, their conditions).

    `samples_per_class` is one count for every class or a count per class. Class-conditional pipelines get the class
    ids, that many each. Text-to-image pipelines get `class_prompts[c]`, the class's prompts, with
    ``count // len(prompts)`` samples each (at least one), or ``ceil(count / len(prompts))`` for the classes in
    `round_up` (so that they get at least `count` samples).
    """
    conditions, labels = [], []
    for c in classes:
        count = samples_per_class[c] if isinstance(samples_per_class, Mapping) else samples_per_class
        if class_prompts is None:
            conditions += [c] * count
            labels += [c] * count
        else:
            prompts = list(class_prompts[c])
            each = -(-count // len(prompts)) if c in round_up else max(1, count // len(prompts))
            conditions += [p for p in prompts for _ in range(each)]
            labels += [c] * (each * len(prompts))
    images = pipeline(
        conditions,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator(pipeline.device).manual_seed(seed),
        output_type="pt",
    ).images
    return images.mul(2).sub(1).cpu().float(), torch.tensor(labels), conditions


@torch.no_grad()
def class_erasure_metrics(
    pipeline,
    judge: DigitsClassifier,
    forget_classes: Sequence[int],
    *,
    real_images: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    samples_per_class: int = 50,
    forget_samples_per_class: int | None = None,
    guidance_scale: float = 2.0,
    num_inference_steps: int = 20,
    seed: int = 0,
    class_prompts: Mapping[int, Sequence[str]] | None = None,
    paraphrases: Sequence[str] = (),
) -> dict:
    """FA on `forget_classes`, RA on the other classes and, given real images, FID-digits on the other classes.

    Each forget class gets `forget_samples_per_class` samples (default: `samples_per_class`), each other class
    `samples_per_class`, all in one pipeline call. For text-to-image pipelines `class_prompts` gives each class's
    prompts (see :func:`generate_per_class`: a forget class's count is rounded up to whole samples per prompt, the
    others' down); FA then covers all prompts of the forget classes and ``FA_paraphrases`` only those in
    `paraphrases` (phrasings never used during erasure).

    Besides the metrics, the result records what was judged: ``forget_samples`` (all samples FA is measured on),
    ``remain_samples_per_class`` (also as ``samples_per_class``, its older name) and the ``seed``.
    """
    num_classes = judge.config.num_classes
    forget = sorted(set(forget_classes))
    remain = [c for c in range(num_classes) if c not in forget]
    forget_count = samples_per_class if forget_samples_per_class is None else forget_samples_per_class
    images, labels, conditions = generate_per_class(
        pipeline,
        forget + remain,
        {**dict.fromkeys(forget, forget_count), **dict.fromkeys(remain, samples_per_class)},
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        seed=seed,
        class_prompts=class_prompts,
        round_up=forget,
    )
    predictions = judge.predict(images)
    is_forget = torch.isin(labels, torch.tensor(forget)) if forget else torch.zeros_like(labels, dtype=torch.bool)
    correct = predictions == labels
    remain_count = int((labels == remain[0]).sum()) if remain else 0
    metrics = {
        "forget_classes": forget,
        "FA": float(correct[is_forget].float().mean()) if forget else None,
        "RA": float(correct[~is_forget].float().mean()),
        "per_class_accuracy": {int(c): float(correct[labels == c].float().mean()) for c in forget + remain},
        # What the judge saw for each class: shares of its samples per judged label (the last one is "no digit").
        "label_distribution": {
            int(c): (
                torch.bincount(predictions[labels == c], minlength=num_classes + 1) / (labels == c).sum()
            ).tolist()
            for c in forget + remain
        },
        "forget_samples": int(is_forget.sum()),
        "remain_samples_per_class": remain_count,
        "samples_per_class": remain_count,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "seed": seed,
    }
    if forget and paraphrases:
        is_paraphrase = torch.tensor([c in set(paraphrases) for c in conditions]) & is_forget
        metrics["FA_paraphrases"] = float(correct[is_paraphrase].float().mean()) if is_paraphrase.any() else None
    if real_images is not None:
        real = real_images[torch.isin(real_labels, torch.tensor(remain))]
        generated_features = judge.features(images[~is_forget].to(judge.device)).cpu().numpy().astype(np.float64)
        real_features = judge.features(real.to(judge.device)).cpu().numpy().astype(np.float64)
        metrics["FID"] = frechet_distance(generated_features, real_features)
    return metrics


def digits_world_metrics(
    pipeline,
    forget_classes,
    *,
    samples_per_class: int = 50,
    forget_samples_per_class: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    seed: int = 0,
    judge=None,
    prompts: str | None = None,
) -> dict:
    """FA, RA and FID-digits of a digits-world pipeline, judged by the bundled classifier on held-out images.

    Each forget class gets `forget_samples_per_class` samples (default: `samples_per_class`), see
    :func:`class_erasure_metrics`. Text-to-image pipelines are prompted with each digit's training captions and
    held-out phrasings (`prompts`: "all", "train" or "held_out"; default: the sets the model carries,
    `registry.judged_captions`: both for the SD, training captions for the SD3); ``FA_paraphrases`` is FA on the
    held-out phrasings alone.
    """
    if not is_digits_world(pipeline):
        raise ValueError("digits_world_metrics needs a digits-world pipeline (classes 'zero'..'nine').")
    judge = judge or DigitsClassifier.from_pretrained(shipped_path("judge"))
    real_images, real_labels = digits_tensor("test")
    text_kwargs = {}
    family = family_for(pipeline)
    if family.text_conditioned:
        kinds = {"all": ("train", "held_out"), "train": ("train",), "held_out": ("held_out",), None: None}[prompts]
        kinds = kinds or judged_captions(family)
        text_kwargs = {
            "class_prompts": {d: [p for k in kinds for p in digit_prompts(d, k)] for d in range(len(DIGIT_NAMES))},
            "paraphrases": [p for d in range(len(DIGIT_NAMES)) for p in digit_prompts(d, "held_out")],
        }
    with quiet_progress(pipeline):
        return class_erasure_metrics(
            pipeline,
            judge.to(pipeline.device),
            list(forget_classes),
            real_images=real_images,
            real_labels=real_labels,
            samples_per_class=samples_per_class,
            forget_samples_per_class=forget_samples_per_class,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
            **text_kwargs,
        )


def guidance_sweep(
    pipeline,
    forget_classes,
    *,
    scales: Iterable[float] = (1.0, 2.0, 4.0, 7.5),
    samples_per_class: int = 50,
    forget_samples_per_class: int | None = None,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    seed: int = 0,
    judge=None,
    prompts: str | None = None,
) -> dict:
    """FA, RA and FID-digits (at every scale) of a digits-world pipeline at each guidance scale in `scales` and at
    the pipeline's own default (DiT 4.0, Stable Diffusion 7.5, our class-conditional DDPM 1.0); the worst case.

    Every scale is judged on the same seed, so the scales differ by guidance alone. Returns
    ``{"per_guidance": {"1.0": metrics, ...}, "default_guidance", "FA_worst", "RA_worst", "worst_guidance"}``
    (see :func:`sfr_diffusion.forgetting.sweep_guidance`); the other arguments are :func:`digits_world_metrics`'s.
    """
    judge = judge or DigitsClassifier.from_pretrained(shipped_path("judge"))

    def measure(guidance_scale: float) -> dict:
        return digits_world_metrics(
            pipeline,
            forget_classes,
            samples_per_class=samples_per_class,
            forget_samples_per_class=forget_samples_per_class,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
            judge=judge,
            prompts=prompts,
        )

    return sweep_guidance(measure, scales, default_guidance_scale(pipeline))
