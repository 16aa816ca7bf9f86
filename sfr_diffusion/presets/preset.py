"""What a preset is: the defaults one model world gives an erasure (its plug-ins import this, not the lookup)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """Defaults for the pipelines of one world.

    Attributes:
        name: shown in logs and exports ("digits world").
        class_dataset: () → a `datasets.Dataset` with ``image`` and ``label`` columns, for class erasure.
        prompts: concept → (forget prompts, remain prompts), for concept erasure in text-to-image models.
        anchor: the prompt a text concept is remapped to by default.
        evaluate: (pipeline, erased concepts, EvaluationArguments, seed) → metrics ({"FA": ..., "RA": ..., ...}).
        judge: what `evaluate` judges with, as attack and benchmark records name it.
        concept_images: concept → a `datasets.Dataset` of its images (``image`` column), what an attacker holds.
        judged_prompts: (concept, family) → every prompt `evaluate` samples it with on a text-to-image model of
            that family, what an attack stands in for.
        learning_rates: family name ("ddpm", "sd", ...) → the learning rate measured best for that family's models
            in this world (a family missing here keeps its own default, meant for real checkpoints).
    """

    name: str
    class_dataset: Callable[[], object] | None = None
    prompts: Callable[[str], tuple[list[str], list[str]]] | None = None
    anchor: str | None = None
    evaluate: Callable[..., dict] | None = None
    judge: str | None = None
    concept_images: Callable[[str], object] | None = None
    judged_prompts: Callable[[str, object], list[str]] | None = None
    learning_rates: Mapping[str, float] = field(default_factory=dict)
