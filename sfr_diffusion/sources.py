"""The forget and remain sets of an erasure, from whatever the user gave :func:`sfr_diffusion.erase` as `data`.

Accepted: nothing (the model's preset decides: the digits world's training split or prompts; for other text-to-image
models generic prompts around the concept), a :class:`DataArguments` (a data set by name or folder, prompt lists or
files, generation settings), a `datasets.Dataset` split with a label column (class erasure) or a caption column
(concept erasure), or a ``(forget, remain)`` pair of such data sets.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

from .arguments import DataArguments
from .cache import cache_dir
from .data import LabelledImages, align_label_ids, load_image_dataset, split_by_class, verify_images
from .text_data import (
    GENERIC_REMAIN_PROMPTS,
    PROMPT_ID_COLUMN,
    concept_prompts,
    generate_images,
    model_fingerprint,
    read_prompts,
    split_by_caption,
    with_prompt_ids,
)

logger = logging.getLogger(__name__)


@dataclass
class ErasureData:
    """What an erasure erases and the images it erases it with."""

    name: str  # the class name or the concept text
    condition: int  # the family's condition id of the forget class or concept
    forget: LabelledImages
    remain: LabelledImages
    anchor: str | None = None  # the default remap target of text concepts

    def summary(self, family) -> dict:
        """What was erased, for ``unlearning_config.json``: the class, or the concept and its prompts."""
        if not family.text_conditioned:
            return {"concept": self.name, "class_id": self.condition}
        return {"concept": self.name, "forget_prompts": _prompts(self.forget, family),
                "remain_prompts": _prompts(self.remain, family)}  # fmt: skip


def _prompts(images: LabelledImages, family) -> list[str]:
    ids = np.asarray(images.dataset[PROMPT_ID_COLUMN])[images.rows]
    return sorted({family.condition_name(int(i)) for i in ids})


def _is_dataset(value) -> bool:
    return hasattr(value, "column_names") and hasattr(value, "features")


def resolve_data(
    data, family, concept: str, *, preset=None, seed: int = 0, main_process_first=contextlib.nullcontext
) -> ErasureData:
    """The :class:`ErasureData` of erasing `concept` from `family`'s pipeline with `data` (see the module doc).

    `main_process_first` (an ``Accelerator.main_process_first``) lets one process generate or prepare what the
    others then read from the cache.
    """
    concept = str(concept).strip()
    if not concept:
        raise ValueError("The concept is empty: give a class name or id, or a concept text.")
    pair = isinstance(data, tuple | list) and len(data) == 2 and all(_is_dataset(d) for d in data)
    dataset = data if _is_dataset(data) else None
    if not (data is None or pair or dataset is not None or isinstance(data, DataArguments)):
        raise TypeError(
            "data must be None, a DataArguments, a datasets.Dataset or a (forget, remain) pair of data sets; got "
            f"{type(data).__name__}."
        )
    options = data if isinstance(data, DataArguments) else DataArguments()
    if family.text_conditioned:
        return _text_data(family, concept, options, dataset, data if pair else None, preset, seed, main_process_first)
    return _class_data(family, concept, options, dataset, data if pair else None, preset, main_process_first)


def _image_kwargs(options: DataArguments, family) -> dict:
    channels, height, width = family.image_shape
    if height != width:
        raise ValueError(f"Only square images are supported, the model generates {height}×{width}.")
    return dict(resolution=height, channels=channels, image_column=options.image_column)


def _user_dataset(options: DataArguments):
    dataset = load_image_dataset(
        dataset_name=options.dataset_name,
        dataset_config_name=options.dataset_config_name,
        train_data_dir=options.train_data_dir,
        split=options.dataset_split,
        cache_dir=options.cache_dir,
    )
    verify_images(dataset, options.image_column)
    return dataset


def _class_data(family, concept, options, dataset, pair, preset, main_process_first) -> ErasureData:
    """Class erasure: the forget class's images and all the others."""
    if options.forget_prompts or options.remain_prompts:
        raise ValueError("forget_prompts and remain_prompts are for text-to-image models; this one takes classes.")
    forget_class = family.resolve_class(concept)
    kwargs = _image_kwargs(options, family)
    labels = getattr(family.pipeline, "labels", None)
    name = family.condition_name(forget_class)
    if pair is not None:
        forget_set, remain_set = pair
        if options.label_column not in forget_set.column_names:  # images of the class need no label column
            forget_set = forget_set.add_column(options.label_column, [forget_class] * len(forget_set))
        remain_set = align_label_ids(remain_set, options.label_column, labels)
        label_kwargs = {**kwargs, "label_column": options.label_column}
        forget = LabelledImages(forget_set, range(len(forget_set)), **label_kwargs)
        return ErasureData(
            name, forget_class, forget, LabelledImages(remain_set, range(len(remain_set)), **label_kwargs)
        )
    if dataset is None and options.has_dataset:
        dataset = _user_dataset(options)
        if options.label_column not in dataset.column_names and options.train_data_dir:
            raise ValueError(
                f"--train_data_dir {options.train_data_dir} has fewer than two class sub-folders, so it has no "
                "labels: class erasure needs one sub-folder per class (e.g. zero/ … nine/), the forget class among "
                "them."
            )
    elif dataset is None:
        if preset is None or preset.class_dataset is None:
            raise ValueError("This model has no preset data: pass a data set (--dataset_name or --train_data_dir).")
        dataset, kwargs["image_column"] = preset.class_dataset(), "image"
    dataset = align_label_ids(dataset, options.label_column, labels)
    with main_process_first():
        forget, remain = split_by_class(dataset, [forget_class], label_column=options.label_column, **kwargs)
    return ErasureData(name, forget_class, forget, remain)


def _text_data(family, concept, options, dataset, pair, preset, seed, main_process_first) -> ErasureData:
    """Concept erasure: captioned images that name the concept and the others, generated by the model or given."""
    condition = family.resolve_class(concept)
    kwargs = {**_image_kwargs(options, family), "label_column": PROMPT_ID_COLUMN}
    anchor = preset.anchor if preset is not None else ""
    if pair is not None:
        forget_set, remain_set = (with_prompt_ids(d, family, options.caption_column) for d in pair)
        return ErasureData(concept, condition, LabelledImages(forget_set, range(len(forget_set)), **kwargs),
                           LabelledImages(remain_set, range(len(remain_set)), **kwargs), anchor)  # fmt: skip
    if dataset is None and options.has_dataset:
        dataset = _user_dataset(options)
    if dataset is not None:
        forget_rows, remain_rows = split_by_caption(dataset, concept, options.caption_column)
        dataset = with_prompt_ids(dataset, family, options.caption_column)
        forget, remain = LabelledImages(dataset, forget_rows, **kwargs), LabelledImages(dataset, remain_rows, **kwargs)
        return ErasureData(concept, condition, forget, remain, anchor)
    if preset is not None and preset.prompts is not None:
        forget_prompts, remain_prompts = preset.prompts(concept)
    else:
        forget_prompts, remain_prompts = concept_prompts(concept), list(GENERIC_REMAIN_PROMPTS)
    forget_prompts = _prompt_list(options.forget_prompts) or forget_prompts
    remain_prompts = _prompt_list(options.remain_prompts) or remain_prompts
    pipeline = family.pipeline
    settings = dict(
        images_per_prompt=options.images_per_prompt,
        seed=seed,
        num_inference_steps=options.generation_inference_steps,
        guidance_scale=options.generation_guidance_scale,
        batch_size=options.generation_batch_size,
        cache_root=cache_dir() / "generated",
        fingerprint=model_fingerprint(pipeline),  # once for both sets: it may hash every UNet weight
    )
    with main_process_first():
        generated = {
            kind: generate_images(pipeline, prompts, description=f"{kind} images", **settings)
            for kind, prompts in (("forget", forget_prompts), ("remain", remain_prompts))
        }
    forget, remain = (
        LabelledImages(with_prompt_ids(generated[kind], family), range(len(generated[kind])), **kwargs)
        for kind in ("forget", "remain")
    )
    return ErasureData(concept, condition, forget, remain, anchor)


def _prompt_list(prompts) -> list[str] | None:
    """Prompts given as a list, or as a file to read; None when not given."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return read_prompts(prompts)
    cleaned = [str(p).strip() for p in prompts if str(p).strip()]
    if not cleaned:
        raise ValueError("The prompt list is empty.")
    return cleaned
