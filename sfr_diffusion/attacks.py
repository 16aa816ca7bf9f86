"""Attacks on an erasure: can the forgotten concept be brought back, and how much easier than from a model that
never learned it?

* ``inversion``: *conditioning inversion*, the textual-inversion attack of Pham et al. 2023 ("Circumventing Concept
  Erasure Methods for Text-to-Image Generative Models"). Every weight stays frozen; what the denoiser is given for
  the forgotten condition is optimised with the model's own diffusion loss on images of the concept, and the
  samples drawn with it are judged. Class-conditional models: the class's row of every class-embedding table (one
  for the DDPM, one per block for DiT). Text-to-image models: the prompt's encoder hidden states, one tensor standing
  in for every prompt of the concept (stronger than inverting one input token: it is not bound to the text encoder);
  for SDXL both encoders' hidden states, concatenated, with each prompt's pooled embedding kept; for SD3 its
  ``prompt_embeds`` (CLIP states, zero padding kept, then T5 states) and for Flux T5's hidden states, the pooled
  embeddings kept.
* ``relearn``: fine-tune the erased denoiser (all its weights) on k images of the concept for n steps with its own
  loss, then judge the concept (ASR) and the other classes (RA: what the fine-tune cost).
* ``relearn_reset``: the same after resetting the forgotten class's embedding rows to the mean of the other
  classes' rows, so that an erasure living only in that row (ascent drives it far away) is seen for what it is.
  Text-to-image models have nothing to reset: the prompt's embedding comes from a text encoder erasure never trains.

The attack success rate (ASR) is FA after the attack, judged by the model's preset (the digits world's classifier) or
a given evaluator, before the attack and at evenly spaced steps; ``steps_to_half`` is the first evaluated step with
FA ≥ 50%. On the digits world *retrain* (a model trained without the digit) is the reference: an embedding
never trained on a digit can still be steered to draw it, so the honest goal of an eraser is to be no easier to
recover than retrain at equal budget. Every attack leaves the pipeline as it found it.

    >>> from sfr_diffusion import load_pipeline
    >>> from sfr_diffusion.attacks import AttackArguments, attack
    >>> record = attack(load_pipeline("outputs/digits-ddpm-erase-three"), "three", "relearn_reset")
    >>> record["ASR"], record["steps_to_half"]
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .arguments import EvaluationArguments, option
from .data import center_crop
from .families import DiffusionFamily, family_for
from .pipelines import quiet_progress
from .presets import learning_rate_for, preset_for
from .validation import check_field_values

logger = logging.getLogger(__name__)

ATTACKS = ("inversion", "relearn", "relearn_reset")
HALF = 0.5  # "recovered": FA ≥ 50%, for the steps an attack needs


@dataclass
class AttackArguments:
    """The budget of each attack, the same for every model attacked so that their ASRs compare."""

    attack_images: int = option(16, "k: images of the concept the attacker has.")
    attack_batch_size: int = option(16, "Images per attack step (drawn from the k).")
    inversion_steps: int = option(100, "Optimisation steps of the conditioning inversion.")
    inversion_learning_rate: float = option(
        5e-2, "Adam learning rate of the inverted embedding (at 1e-2 the original digits DiT needs ~4x the steps)."
    )
    relearn_steps: int = option(20, "Fine-tuning steps of the relearning attacks.")
    relearn_learning_rate: float | None = option(
        None, "Adam learning rate of relearning (default: the erasure's default learning rate for the model)."
    )
    attack_evaluations: int = option(
        5, "Judge before the attack and at this many evenly spaced steps (the last one included)."
    )
    attack_seed: int = option(0, "Seed of the images drawn, the noise and timesteps, and the judged samples.")

    def __post_init__(self):
        check_field_values(self)
        for name in ("attack_images", "attack_batch_size", "inversion_steps", "relearn_steps", "attack_evaluations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("inversion_learning_rate", "relearn_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}.")


def check_attacks(kinds: Sequence[str]) -> list[str]:
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in ATTACKS]
    if unknown or not kinds:
        raise ValueError(f"Unknown attacks {unknown}; valid attacks are {list(ATTACKS)}." if unknown else "No attack.")
    return kinds


# ----------------------------------------------------------------------------------------------------------------
# What the attacker has: images of the concept, and the conditions it is asked for with


def images_tensor(dataset, family: DiffusionFamily, image_column: str = "image") -> torch.Tensor:
    """Every image of a `datasets.Dataset` as the model's input: (n, C, H, W) in [-1, 1], centre-cropped."""
    channels, resolution, _ = family.image_shape
    mode = "L" if channels == 1 else "RGB"
    arrays = [
        np.asarray(center_crop(image.convert(mode), resolution), dtype=np.float32).reshape(resolution, resolution, -1)
        for image in dataset[image_column]
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def concept_images(pipeline, concept: str, images=None, *, count: int, seed: int) -> torch.Tensor:
    """`count` images of `concept` drawn with `seed`: from `images` (a tensor in [-1, 1] or a `datasets.Dataset`
    with an ``image`` column), else from the model's preset (the digits world: real digits of the training split)."""
    family = family_for(pipeline)
    if images is None:
        preset = preset_for(pipeline)
        if preset is None or preset.concept_images is None:
            raise ValueError("No images of the concept: pass them (--images DIR) for a model without a preset.")
        images = preset.concept_images(concept)
    if not isinstance(images, torch.Tensor):
        images = images_tensor(images, family)
    if len(images) < count:
        raise ValueError(f"The attack needs {count} images of {concept!r}; only {len(images)} were given.")
    picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return images[picks].float()


def attacked_conditions(family: DiffusionFamily, concept: str, preset) -> list[int]:
    """The conditions an attack stands in for: the class, or every prompt the evaluator samples the concept with
    (the concept text itself when no preset lists them)."""
    if not family.text_conditioned:
        return [family.resolve_class(concept)]
    prompts = preset.judged_prompts(concept, family) if preset is not None and preset.judged_prompts else [concept]
    return [family.prompt_id(p) for p in dict.fromkeys([concept, *prompts])]


# ----------------------------------------------------------------------------------------------------------------
# The attacks


@contextlib.contextmanager
def restored(module: torch.nn.Module) -> Iterator[None]:
    """Put `module`'s weights and buffers back as they were on exit (a copy is kept on the CPU meanwhile)."""
    saved = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    try:
        yield
    finally:
        module.load_state_dict(saved)


def _optimise(
    parameters,
    loss_at: Callable[[int], torch.Tensor],
    *,
    steps: int,
    learning_rate: float,
    evaluations: int,
    evaluate: Callable[[int], dict],
    description: str,
) -> list[dict]:
    """Adam on `parameters` for `steps` steps of ``loss_at(step)``, judged before and at `evaluations` evenly spaced
    steps (the last one included)."""
    judged_steps = {round(steps * (i + 1) / evaluations) for i in range(evaluations)} - {0}
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    curve = [{"step": 0, **evaluate(0)}]
    for step in tqdm(range(1, steps + 1), desc=description, leave=False):
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in judged_steps:
            curve.append({"step": step, "loss": float(loss.detach()), **evaluate(step)})
    return curve


def _loss_at(family: DiffusionFamily, model, latents: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    """The model's own diffusion loss on a batch of the attack images; batch, noise and timesteps from (seed, step)."""

    def loss_at(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randperm(len(latents), generator=generator)[: min(batch_size, len(latents))]
        draw = family.draw_noise(len(rows), generator)
        return family.diffusion_loss(model, latents[rows], labels[rows.to(labels.device)], draw).mean()

    return loss_at


def attack(
    pipeline,
    concept: str,
    kind: str,
    *,
    arguments: AttackArguments | None = None,
    images=None,
    evaluate: Callable[[object, int], dict] | None = None,
    evaluation: EvaluationArguments | None = None,
) -> dict:
    """Run one attack (`kind` in :data:`ATTACKS`) on `pipeline` for `concept`; return its record.

    `evaluate` is ``(pipeline, seed) → metrics with FA (and RA)``; by default the preset's evaluator with
    `evaluation`. The record holds the attack, its budget, seed and judge, the FA/RA curve, ``ASR`` (final FA),
    ``RA`` (final RA) and ``steps_to_half``. The pipeline is left as it was.
    """
    check_attacks([kind])
    arguments = arguments or AttackArguments()
    family = family_for(pipeline)
    preset = preset_for(pipeline)
    concept = str(concept).strip()
    conditions = attacked_conditions(family, concept, preset)
    evaluate, judge = _evaluator(pipeline, concept, preset, evaluate, evaluation or EvaluationArguments())
    images = concept_images(pipeline, concept, images, count=arguments.attack_images, seed=arguments.attack_seed)
    denoiser = family.denoiser
    device = next(denoiser.parameters()).device
    start = time.perf_counter()

    def judged(step: int) -> dict:
        was_training = denoiser.training
        denoiser.eval()
        with quiet_progress(pipeline), torch.no_grad():
            metrics = evaluate(pipeline, arguments.attack_seed + step)
        denoiser.train(was_training)
        return {k: metrics[k] for k in ("FA", "RA") if metrics.get(k) is not None}

    with restored(denoiser), family.prepared_for_training(torch.float32):
        latents = family.encode(images.to(device))
        # The images' conditions: the class, or the concept's prompts in turn.
        labels = torch.tensor([conditions[i % len(conditions)] for i in range(len(latents))], device=device)
        loss_kwargs = dict(batch_size=arguments.attack_batch_size, seed=arguments.attack_seed)
        if kind == "inversion":
            denoiser.requires_grad_(False).eval()
            embedding = family.condition_embedding(conditions[0]).to(device).requires_grad_(True)
            budget = {"steps": arguments.inversion_steps, "learning_rate": arguments.inversion_learning_rate}
            with family.condition_embedding_override(conditions, embedding):
                curve = _optimise(
                    [embedding],
                    _loss_at(family, denoiser, latents, labels, **loss_kwargs),
                    steps=arguments.inversion_steps,
                    learning_rate=arguments.inversion_learning_rate,
                    evaluations=arguments.attack_evaluations,
                    evaluate=judged,
                    description="inversion",
                )
            reset = False
        else:
            reset = _reset(family, conditions) if kind == "relearn_reset" else False
            learning_rate = arguments.relearn_learning_rate or learning_rate_for(family, preset)
            budget = {"steps": arguments.relearn_steps, "learning_rate": learning_rate}
            denoiser.requires_grad_(True).train()
            curve = _optimise(
                [p for p in denoiser.parameters() if p.requires_grad],
                _loss_at(family, denoiser, latents, labels, **loss_kwargs),
                steps=arguments.relearn_steps,
                learning_rate=learning_rate,
                evaluations=arguments.attack_evaluations,
                evaluate=judged,
                description=kind,
            )
    final = curve[-1]
    return {
        "attack": kind,
        "concept": concept,
        "family": family.name,
        "conditions": [family.condition_name(c) for c in conditions],
        "budget": {
            "images": arguments.attack_images,
            "batch_size": min(arguments.attack_batch_size, arguments.attack_images),
            "optimizer": "Adam",
            **budget,
        },
        "embedding_reset": reset,
        "seed": arguments.attack_seed,
        "judge": judge,
        "curve": curve,
        "ASR": final.get("FA"),
        "RA": final.get("RA"),
        "steps_to_half": next((p["step"] for p in curve if p.get("FA", 0) >= HALF), None),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _reset(family: DiffusionFamily, conditions: Sequence[int]) -> bool | None:
    """Reset the attacked condition's embedding: True, or None where the family has none to reset (a text encoder
    erasure never trains)."""
    done = [family.reset_condition_embedding(c) for c in conditions]
    return True if all(done) else None


def _evaluator(pipeline, concept, preset, evaluate, settings: EvaluationArguments):
    """(pipeline, seed) → metrics, and a description of the judge for the record."""
    if evaluate is not None:
        return evaluate, getattr(evaluate, "__qualname__", repr(evaluate))
    if preset is None or preset.evaluate is None:
        raise ValueError("No judge for this model: pass an evaluator (only the digits world has one bundled).")
    judge = {"name": preset.judge or preset.name, "settings": asdict(settings)}
    return (lambda pipe, seed: preset.evaluate(pipe, [concept], settings, seed)), judge


def run_attacks(
    pipeline,
    concept: str,
    kinds: Sequence[str] = ATTACKS,
    *,
    arguments: AttackArguments | None = None,
    images=None,
    evaluate=None,
    evaluation: EvaluationArguments | None = None,
) -> dict:
    """Every attack of `kinds` on the same pipeline and images: ``{"attacks": {kind: record}, ...}``.

    On a text-to-image model there is no embedding to reset, so ``relearn_reset`` is relearning at the same seed and
    budget: when both are asked for, it is run once and recorded under both names (``embedding_reset`` None).
    """
    kinds = check_attacks(kinds)
    arguments = arguments or AttackArguments()
    nothing_to_reset = family_for(pipeline).text_conditioned
    records = {}
    for kind in kinds:
        if kind == "relearn_reset" and nothing_to_reset and "relearn" in records:
            records[kind] = records["relearn"] | {"attack": kind, "embedding_reset": None}
            continue
        records[kind] = attack(
            pipeline, concept, kind, arguments=arguments, images=images, evaluate=evaluate, evaluation=evaluation
        )
    return {"concept": concept, "arguments": asdict(arguments), "attacks": records}
