"""The kept class a class-conditional remap goes to when the user names none.

A remap ties the forgotten class's prediction to the frozen original's prediction for another class, so the erased
model draws that class when asked for the forgotten one. Which class matters (BENCHMARKS.md, "SFR-on's forget loss"):
the null class is no target on class models (its prediction is the average of all classes; asked for the forgotten
class with guidance, the erased model then draws the data's average, which the judge reads as a digit), and a class
close to the forgotten one leaves samples in between (FA 1–2% at guidance 1 on the digits DiT). The default is the
kept class whose prediction on the forgotten class's own noisy images is *farthest* from the forgotten class's: the
erased model then draws an unambiguous other class at every guidance scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import ANCHOR_STREAM, BatchSampler, LabelledImages
from .losses import per_sample_mse


@torch.no_grad()
def prediction_distances(
    family, forget: LabelledImages, candidates: Sequence[int], *, samples: int = 16, seed: int = 0
) -> torch.Tensor:
    """Mean squared distance, per candidate class, between the original denoiser's prediction under that class and
    under each image's own (forgotten) class, on `samples` forget images noised at uniformly drawn timesteps."""
    model = family.denoiser
    device = next(model.parameters()).device
    batch = BatchSampler(forget, family, samples, seed=seed, stream=ANCHOR_STREAM).batch(0)
    x0 = family.encode(batch.images.to(device))
    x_t, timesteps = family.noisy(x0, batch.draw), batch.draw.timesteps.to(device)
    own = family.predict(model, x_t, timesteps, batch.labels.to(device)).float()
    distances = [
        per_sample_mse(family.predict(model, x_t, timesteps, torch.full_like(timesteps, c)).float(), own).mean()
        for c in candidates
    ]
    return torch.stack(distances).cpu()


def farthest_kept_class(family, forget: LabelledImages, erased: Sequence[int], *, seed: int = 0) -> int:
    """The default remap target of a class-conditional erasure: the kept class (not erased, not the null class) whose
    original prediction on the forget images is farthest from the erased classes' (:func:`prediction_distances`).
    Deterministic for a seed; one forward pass of the forget batch per class."""
    candidates = [c for c in range(family.num_classes()) if c not in set(erased) and c != family.null_class_id]
    if not candidates:
        raise ValueError("Every class is erased: there is no kept class to remap onto.")
    distances = prediction_distances(family, forget, candidates, seed=seed)
    return candidates[int(distances.argmax())]
