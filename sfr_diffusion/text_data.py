"""Forget and remain data for concept erasure in text-to-image models: prompts, and images with their captions.

Images come from the original pipeline itself (what the SFR-on paper does for Stable Diffusion), generated once from
the forget and remain prompts and cached on disk under a key of the model, the prompts and the sampling settings, or
from a captioned `datasets` data set (an image column and a text column). Either way the result is a data set with
``image``, ``text`` and ``prompt_id`` columns, the last indexing the family's prompt table, so the trainer draws
batches from it exactly as it does from a class-labelled data set.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .files import write_once
from .pipelines import quiet_progress

# Prompts around a concept, in the spirit of the official SD scripts ("a photo of {concept}", ...).
CONCEPT_TEMPLATES = (
    "{concept}",
    "a photo of {concept}",
    "a painting of {concept}",
    "an image of {concept}",
    "a close-up photo of {concept}",
    "a drawing of {concept}",
    "{concept}, high quality",
    "a picture of {concept}",
)
# Generic remain prompts for models with no remain set of their own: everyday subjects the erasure must not touch.
GENERIC_REMAIN_PROMPTS = (
    "a photo of a dog",
    "a photo of a cat",
    "a city street at night",
    "a bowl of fruit on a table",
    "a mountain landscape at sunrise",
    "a portrait of a woman",
    "a portrait of a man",
    "a red car parked on the road",
    "a living room with a sofa",
    "a plate of pasta",
    "a sailing boat on the sea",
    "a forest in autumn",
    "a bird on a branch",
    "a bicycle leaning on a wall",
    "an oil painting of flowers",
    "a house with a garden",
)
PROMPT_ID_COLUMN = "prompt_id"


def concept_prompts(concept: str, templates: Sequence[str] = CONCEPT_TEMPLATES) -> list[str]:
    if not concept.strip():
        raise ValueError("The concept to erase is empty.")
    return [t.format(concept=concept.strip()) for t in templates]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a CSV file with a ``prompt`` column (e.g. I2P's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist.")
    try:
        return _read_prompts(path)
    except UnicodeDecodeError as error:
        raise ValueError(f"Prompt file {path} is not UTF-8 text ({error.reason} at byte {error.start}).") from error


def _read_prompts(path: Path) -> list[str]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{path} has no 'prompt' column; its columns are {reader.fieldnames}.")
            prompts = [row["prompt"].strip() for row in reader]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path} holds no prompt.")
    return prompts


def mentions(caption: str, concept: str) -> bool:
    """Whether `caption` names `concept` as whole words, case-insensitively ("cat" matches "a cat", not "catalog")."""
    return re.search(rf"(?<!\w){re.escape(concept.strip().lower())}(?!\w)", caption.lower()) is not None


def model_fingerprint(pipeline) -> dict:
    """What identifies the model the images come from: its path, its denoiser's config (the UNet's or the
    transformer's) and its weight files' stamps."""
    component = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    denoiser = getattr(pipeline, component)
    path = str(getattr(pipeline, "name_or_path", "") or pipeline.config.get("_name_or_path", ""))
    files = []
    if path and Path(path).is_dir():
        for file in sorted(Path(path).glob("*/*.safetensors")) + sorted(Path(path).glob("*/*.bin")):
            stat = file.stat()
            files.append([str(file.relative_to(path)), stat.st_size, int(stat.st_mtime)])
    if not files:  # an in-memory model: hash the denoiser's weights
        digest = hashlib.sha256()
        for tensor in denoiser.state_dict().values():
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        files = [[component, digest.hexdigest()]]
    return {"path": path, component: dict(denoiser.config), "files": files}


def generated_cache_key(fingerprint: dict, prompts: Sequence[str], **settings) -> str:
    key = {"model": fingerprint, "prompts": list(prompts), **settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def generate_images(
    pipeline,
    prompts: Sequence[str],
    *,
    images_per_prompt: int,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
    cache_root: str | Path,
    description: str = "generating",
    fingerprint: dict | None = None,
    pipeline_kwargs: dict | None = None,
):
    """``images_per_prompt`` images per prompt from `pipeline`, as a data set with ``image`` and ``text`` columns.

    Cached under `cache_root` by a key of the model, the prompts, the seed and the sampling settings; the cache is
    written to a staging folder and renamed, so an interrupted generation leaves nothing that looks complete. Batch
    ``i`` uses the seed ``seed + i``, so the result does not depend on how often it was interrupted. Pass the
    model's `fingerprint` (:func:`model_fingerprint`) when generating several sets, so that it is taken once.
    `pipeline_kwargs` are further arguments of the pipeline call (the family's
    :meth:`~sfr_diffusion.families.DiffusionFamily.sampling_kwargs`: Flux's height and width), part of the key too.
    """
    from datasets import Dataset, Features, Image, Value, load_from_disk

    if images_per_prompt < 1 or batch_size < 1:
        raise ValueError("images_per_prompt and batch_size must be >= 1.")
    settings = dict(images_per_prompt=images_per_prompt, seed=seed, steps=num_inference_steps, guidance=guidance_scale)
    pipeline_kwargs = dict(pipeline_kwargs or {})
    if pipeline_kwargs:  # only then, so that the keys of the images generated without any stay as they were
        settings["pipeline_kwargs"] = pipeline_kwargs
    fingerprint = model_fingerprint(pipeline) if fingerprint is None else fingerprint
    folder = Path(cache_root) / generated_cache_key(fingerprint, prompts, **settings)
    if (folder / "dataset_info.json").exists():
        return load_from_disk(str(folder))
    texts = [p for p in prompts for _ in range(images_per_prompt)]
    images = []
    with quiet_progress(pipeline):
        for i, start in enumerate(tqdm(range(0, len(texts), batch_size), desc=description)):
            output = pipeline(
                texts[start : start + batch_size],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator(pipeline.device).manual_seed(seed + i),
                output_type="np",
                **pipeline_kwargs,
            )
            for image in output.images:  # rounded to uint8 as the pipeline's own PIL output is
                array = np.round(image * 255).astype(np.uint8)
                images.append(array[..., 0] if array.shape[-1] == 1 else array)
    dataset = Dataset.from_dict(
        {"image": images, "text": texts}, features=Features({"image": Image(), "text": Value("string")})
    )
    write_once(folder, lambda staging: dataset.save_to_disk(str(staging)))
    return load_from_disk(str(folder))


def with_prompt_ids(dataset, family, text_column: str = "text"):
    """Add the ``prompt_id`` column: each caption's id in the family's prompt table (added there if new)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"Column {text_column!r} not in the data set; columns are {dataset.column_names}.")
    ids = [family.prompt_id(text) for text in dataset[text_column]]
    if PROMPT_ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(PROMPT_ID_COLUMN)
    return dataset.add_column(PROMPT_ID_COLUMN, ids)


def split_by_caption(
    dataset, concepts: str | Sequence[str], text_column: str = "text"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (forget, remain): captions that name any of `concepts` (one, or several), and the others.

    A concept that no caption names is an error (a misspelling would otherwise erase nothing of it)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"Column {text_column!r} not in the data set; columns are {dataset.column_names}.")
    concepts = [concepts] if isinstance(concepts, str) else list(concepts)
    if not concepts:
        raise ValueError("No concept to split the captions by.")
    captions = dataset[text_column]
    named = np.zeros(len(captions), dtype=bool)
    for concept in concepts:
        names_it = np.array([mentions(text, concept) for text in captions], dtype=bool)
        if not names_it.any():
            raise ValueError(f"No caption in column {text_column!r} mentions {concept!r}.")
        named |= names_it
    if named.all():
        what = repr(concepts[0]) if len(concepts) == 1 else f"one of {concepts}"
        raise ValueError(f"Every caption mentions {what}: there is nothing to remain.")
    return np.flatnonzero(named), np.flatnonzero(~named)
