"""Option dataclasses shared by the library and the command line: each field has its one default and help text.

The command line is generated from these fields (:mod:`sfr_diffusion.cli`), as ``HfArgumentParser`` does for
transformers and TRL; ``metadata`` may add ``aliases`` (other flag names), ``choices``, and for a boolean that is on
by default a ``negative`` flag that turns it off (``--no_mask`` for ``use_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validation import check_field_values


def option(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 - the dataclass metadata key is "help"
    """A dataclass field with its default and help text (and any extra metadata) for the generated command line."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class DataArguments:
    """Where the forget and remain images come from, when :func:`sfr_diffusion.erase` is not given them directly.

    Class-conditional models take a labelled image data set (`dataset_name` or `train_data_dir`); text-to-image
    models take a captioned one, or generate their images themselves from forget and remain prompts (a list, or a
    .txt / .csv file). What is left unset is decided by the model's preset (the digits world's own data and prompts)
    or, for text-to-image models, by generic prompts around the concept.
    """

    dataset_name: str | None = option(None, "A `datasets` name or script with the training images.")
    dataset_config_name: str | None = option(None, "Its configuration.")
    dataset_split: str = option("train", "Its split.")
    train_data_dir: str | None = option(None, "An imagefolder with one sub-folder per class.")
    image_column: str = option("image", "The image column.")
    label_column: str = option("label", "Class erasure: the class-id column.")
    caption_column: str = option("text", "Text-to-image with a data set: the caption column.")
    cache_dir: str | None = option(None, "Where `datasets` caches downloads.")
    forget_prompts: str | list[str] | None = option(
        None, "Text-to-image: prompts to generate forget images from; a .txt (one per line) or .csv (`prompt` column)."
    )
    remain_prompts: str | list[str] | None = option(
        None, "Same formats; default: the preset's remain prompts, else generic everyday prompts."
    )
    images_per_prompt: int = option(8, "Generated images per prompt.")
    generation_batch_size: int = option(64, "Prompts per batch when generating images.")
    generation_guidance_scale: float = option(
        1.0,
        "Guidance of the generated training images (1: the model's own conditional distribution). Flux has no "
        "classifier-free guidance: its images are drawn at the guidance value its training gives the model (3.5).",
    )
    generation_inference_steps: int = option(20, "Sampling steps of the generated training images.")

    def __post_init__(self):
        check_field_values(self)
        for name in ("images_per_prompt", "generation_batch_size", "generation_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.generation_guidance_scale < 0:
            raise ValueError(f"generation_guidance_scale must be >= 0, got {self.generation_guidance_scale}.")
        if self.dataset_name and self.train_data_dir:
            raise ValueError("Pass either dataset_name or train_data_dir, not both.")
        for name in ("forget_prompts", "remain_prompts"):  # a missing file is an error now, not after loading a model
            path = getattr(self, name)
            if isinstance(path, str) and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: prompt file {path} does not exist.")

    @property
    def has_dataset(self) -> bool:
        return bool(self.dataset_name or self.train_data_dir)


@dataclass
class EvaluationArguments:
    """How an erasure is measured, where the model's preset has an evaluator (the digits world's judge).

    FA, RA and FID-digits are measured before and after; with `eval_every` (a training option) also along the way.
    FA is judged on at least `MIN_FORGET_SAMPLES` samples of each erased class by default, whatever
    `eval_samples_per_class` is: "FA ≤ 1%" on 10 samples would only say that none of 10 showed the class.
    """

    MIN_FORGET_SAMPLES = 50  # the default floor of `resolved_forget_samples_per_class`

    eval_samples_per_class: int = option(
        50, "Samples generated per class (per digit, over its prompts) to judge.", aliases=("--samples_per_class",)
    )
    forget_samples_per_class: int | None = option(
        None,
        "Samples generated per erased class to judge FA (spread over its prompts, rounded up to a whole number per "
        "prompt); default: max(50, eval_samples_per_class).",
    )
    guidance_scale: float = option(2.0, "Guidance scale of the judged samples.")
    num_inference_steps: int = option(20, "Sampling steps of the judged samples.")

    def __post_init__(self):
        check_field_values(self)
        if self.eval_samples_per_class < 1 or self.num_inference_steps < 1:
            raise ValueError("eval_samples_per_class and num_inference_steps must be >= 1.")
        if self.forget_samples_per_class is not None and self.forget_samples_per_class < 1:
            raise ValueError(f"forget_samples_per_class must be >= 1 or None, got {self.forget_samples_per_class}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}.")

    @property
    def resolved_forget_samples_per_class(self) -> int:
        """Samples judged per erased class: `forget_samples_per_class`, else max(50, `eval_samples_per_class`)."""
        if self.forget_samples_per_class is not None:
            return self.forget_samples_per_class
        return max(self.MIN_FORGET_SAMPLES, self.eval_samples_per_class)
