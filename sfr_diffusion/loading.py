"""Loading a pipeline the way every entry point does: a folder, a Hub id, or a bundled model's alias."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from diffusers import DiffusionPipeline

from .adapters import LORA_WEIGHTS_FILE
from .export import read_unlearning_config
from .pipelines import OUR_PIPELINES, read_model_index
from .presets import loadable_name, resolve_model


def looks_local(path: str | Path) -> bool:
    """A path the user means as a folder on this machine rather than a Hub id ("org/name")."""
    text = str(path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


class KnownTypeWarnings(logging.Filter):
    """Drops diffusers' load-time type warnings for what is known to work: ``id2label`` read back from JSON has
    string keys (DiTPipeline converts them), and a BERT text encoder conditions StableDiffusionPipeline as CLIP does
    (the digits SD's MiniLM). Every other warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Expected types for id2label"):
            return False
        return not (message.startswith("Expected types for text_encoder") and "BertModel" in message)


@contextlib.contextmanager
def known_type_warnings_silenced() -> Iterator[None]:
    diffusers_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    known = KnownTypeWarnings()
    diffusers_logger.addFilter(known)
    try:
        yield
    finally:
        diffusers_logger.removeFilter(known)


def is_lora_export(folder: Path) -> bool:
    """Whether `folder` is an erasure exported as LoRA adapters (no pipeline of its own)."""
    return (folder / LORA_WEIGHTS_FILE).is_file() and not (folder / "model_index.json").is_file()


def load_lora_export(folder: Path, **kwargs) -> DiffusionPipeline:
    """The base pipeline its ``unlearning_config.json`` names, with the folder's adapters loaded by diffusers'
    ``load_lora_weights``."""
    config = read_unlearning_config(folder)
    if not config or not config.get("base_model"):
        raise ValueError(f"{folder} holds LoRA weights but no unlearning_config.json naming their base model.")
    base = loadable_name(config["base_model"])
    try:
        pipeline = load_pipeline(base, **kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder} holds LoRA weights for {base!r}, which does not load here: {error}") from error
    # Our exports adapt the denoiser alone; diffusers warns that the text encoders have no LoRA keys, as designed.
    text_encoder_note = logging.getLogger("diffusers.loaders.lora_base")
    no_text_encoder_keys = _MessageDropped("No LoRA keys associated to")
    text_encoder_note.addFilter(no_text_encoder_keys)
    try:
        pipeline.load_lora_weights(str(folder))
    finally:
        text_encoder_note.removeFilter(no_text_encoder_keys)
    return pipeline


class _MessageDropped(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def load_pipeline(path: str | Path, **kwargs) -> DiffusionPipeline:
    """Load any diffusers pipeline folder or Hub id, including this package's own pipeline classes, or a bundled
    model by its alias (``digits-ddpm``, ``digits-dit``, ``digits-sd``, ``digits-sd3``;
    :func:`sfr_diffusion.presets.resolve_model`). An erasure exported as LoRA adapters loads as its base pipeline with
    the adapters (``load_lora_weights``).

    A custom-pipeline folder (``_class_name`` a ``[module, class]`` list) of one of our classes loads with the
    installed class; any other custom code is refused rather than run.
    """
    path = resolve_model(path)
    folder = Path(path).expanduser()
    if looks_local(path):
        if is_lora_export(folder):
            return load_lora_export(folder, **kwargs)
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers pipeline folder: it has no model_index.json.")
        class_name = read_model_index(folder)["_class_name"]
        if isinstance(class_name, list):  # written by a custom pipeline: [module, class]
            class_name = class_name[-1] if class_name else None
            if class_name not in OUR_PIPELINES:
                raise ValueError(
                    f"{path} is a custom pipeline ({class_name}) that needs its own code to load; sfr-diffusion does "
                    "not run code from a model folder. Load it with DiffusionPipeline.from_pretrained(path, "
                    "custom_pipeline=..., trust_remote_code=True) if you trust that code."
                )
        pipeline_class = OUR_PIPELINES.get(class_name, DiffusionPipeline)
        with known_type_warnings_silenced():
            return pipeline_class.from_pretrained(folder, **kwargs)
    if "/" not in str(path):
        raise ValueError(f"{path!r} is neither a pipeline folder on this machine nor a Hub id (org/name).")
    with known_type_warnings_silenced():
        return DiffusionPipeline.from_pretrained(path, **kwargs)
