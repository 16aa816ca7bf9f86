"""The forget and remain sets of an erasure, from whatever the user gave :func:`sfr_diffusion.erase` as `data`.

An erasure takes one concept or several at once (``"three"``, ``["three", "seven"]``): the forget set holds the images
of every one of them, the remain set none of any.

Accepted: nothing (the model's preset decides: the digits world's training split or prompts; for other text-to-image
models generic prompts around the concept), a :class:`DataArguments` (a data set by name or folder, prompt lists or
files, generation settings), a `datasets.Dataset` split with a label column (class erasure) or a caption column
(concept erasure), or a ``(forget, remain)`` pair of such data sets.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
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
    mentions,
    model_fingerprint,
    read_prompts,
    split_by_caption,
    with_prompt_ids,
)

logger = logging.getLogger(__name__)


@dataclass
class ErasureData:
    """What an erasure erases and the images it erases it with.

    The remain set holds no forget condition and, for text concepts, no forget prompt: the methods that draw their
    targets from the remain batch (RL, SalUn, SFR-on's remap_others) can never pick a forgotten one.
    """

    names: list[str]  # the class names or concept texts, one per erased concept
    conditions: list[int]  # the family's condition id of each (class id, or the concept text's prompt id)
    forget: LabelledImages
    remain: LabelledImages
    anchor: str | None = None  # the default remap target of text concepts

    @property
    def name(self) -> str:
        """The concept, or the concepts joined by ", " (for logs and titles; :attr:`names` lists them)."""
        return ", ".join(self.names)

    @property
    def condition(self) -> int:
        """The condition id of a one-concept erasure (:attr:`conditions` for several)."""
        if len(self.conditions) != 1:
            raise ValueError(f"This erasure has {len(self.conditions)} concepts: read .conditions, not .condition.")
        return self.conditions[0]

    def summary(self, family) -> dict:
        """What was erased, for ``unlearning_config.json``: the class(es), or the concept(s) and their prompts.

        One concept keeps the fields exports always had (``concept``, ``class_id``); several are ``concepts`` (and
        ``class_ids``), lists in the order given.
        """
        one = len(self.names) == 1
        erased = {"concept": self.names[0]} if one else {"concepts": list(self.names)}
        if not family.text_conditioned:
            return {**erased, **({"class_id": self.conditions[0]} if one else {"class_ids": list(self.conditions)})}
        return {**erased, "forget_prompts": _prompts(self.forget, family),
                "remain_prompts": _prompts(self.remain, family)}  # fmt: skip


def concept_names(concept) -> list[str]:
    """:func:`sfr_diffusion.erase`'s `concept` as a list of names: one class name, id or concept text, or a list or
    tuple of them (several erased at once). Each is stripped; an empty one, an empty list or a repeated name is an
    error."""
    values = list(concept) if isinstance(concept, list | tuple) else [concept]
    if not values:
        raise ValueError("No concept to erase: give a class name or id, or a concept text (or a list of them).")
    names = [str(value).strip() for value in values]
    for position, name in enumerate(names):
        if not name:
            where = "" if len(names) == 1 else f" (item {position + 1} of {values!r})"
            raise ValueError(f"The concept is empty{where}: give a class name or id, or a concept text.")
        if name in names[:position]:
            raise ValueError(f"The concept {name!r} is given twice in {values!r}: give each concept once.")
    return names


def resolve_concepts(family, names: list[str]) -> list[int]:
    """The condition id of each concept (an unknown class is an error); two names of one class are an error."""
    conditions = [family.resolve_class(name) for name in names]
    for position, condition in enumerate(conditions):
        if condition in conditions[:position]:
            first = names[conditions.index(condition)]
            raise ValueError(
                f"{first!r} and {names[position]!r} are the same class ({condition}): give each concept once."
            )
    return conditions


def _prompts(images: LabelledImages, family) -> list[str]:
    ids = np.asarray(images.dataset[PROMPT_ID_COLUMN])[images.rows]
    return sorted({family.condition_name(int(i)) for i in ids})


def _is_dataset(value) -> bool:
    return hasattr(value, "column_names") and hasattr(value, "features")


def resolve_data(
    data,
    family,
    concept: str | int | Sequence[str | int],
    *,
    preset=None,
    seed: int = 0,
    main_process_first=contextlib.nullcontext,
) -> ErasureData:
    """The :class:`ErasureData` of erasing `concept` (one, or a list of several) from `family`'s pipeline with
    `data` (see the module doc).

    `main_process_first` (an ``Accelerator.main_process_first``) lets one process generate or prepare what the
    others then read from the cache.
    """
    names = concept_names(concept)
    conditions = resolve_concepts(family, names)
    is_pair = isinstance(data, tuple | list) and len(data) == 2 and all(_is_dataset(d) for d in data)
    dataset = data if _is_dataset(data) else None
    if not (data is None or is_pair or dataset is not None or isinstance(data, DataArguments)):
        raise TypeError(
            "data must be None, a DataArguments, a datasets.Dataset or a (forget, remain) pair of data sets; got "
            f"{type(data).__name__}."
        )
    options = data if isinstance(data, DataArguments) else DataArguments()
    pair = data if is_pair else None
    if family.text_conditioned:
        target = _text_data(family, names, conditions, options, dataset, pair, preset, seed, main_process_first)
    else:
        target = _class_data(family, conditions, options, dataset, pair, preset, main_process_first)
    _check_remain_keeps_nothing_forgotten(target, family)
    return target


def _labels(images: LabelledImages) -> np.ndarray:
    return np.asarray(images.dataset[images.label_column])[images.rows]


def _check_remain_keeps_nothing_forgotten(target: ErasureData, family) -> None:
    """The remain set must hold no forget condition (class, concept text or forget prompt): the remain loss would
    teach it back, and RL, SalUn and remap_others would draw it as a target."""
    forgotten = set(target.conditions) | (set(_labels(target.forget).tolist()) if family.text_conditioned else set())
    shared = sorted(forgotten & set(_labels(target.remain).tolist()))
    if shared:
        what = "prompts" if family.text_conditioned else "classes"
        names = [family.condition_name(int(c)) for c in shared[:5]]
        raise ValueError(
            f"The remain set holds forgotten {what} {names}: remain data must not contain what is erased "
            f"({target.names})."
        )


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


def _class_data(family, forget_classes, options, dataset, pair, preset, main_process_first) -> ErasureData:
    """Class erasure: the forget classes' images and all the others."""
    if options.forget_prompts or options.remain_prompts:
        raise ValueError("forget_prompts and remain_prompts are for text-to-image models; this one takes classes.")
    kwargs = _image_kwargs(options, family)
    labels = getattr(family.pipeline, "labels", None)
    names = [family.condition_name(c) for c in forget_classes]  # "3" is recorded as "three"
    if pair is not None:
        forget_set, remain_set = pair
        label_kwargs = {**kwargs, "label_column": options.label_column}
        forget = LabelledImages(_forget_class_set(forget_set, forget_classes, options, labels, family),
                                range(len(forget_set)), **label_kwargs)  # fmt: skip
        remain_set = align_label_ids(remain_set, options.label_column, labels)
        return ErasureData(
            names, forget_classes, forget, LabelledImages(remain_set, range(len(remain_set)), **label_kwargs)
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
        forget, remain = split_by_class(dataset, forget_classes, label_column=options.label_column, **kwargs)
    missing = sorted(set(forget_classes) - set(_labels(forget).tolist()))
    if missing:
        raise ValueError(f"No images of {[family.condition_name(c) for c in missing]} in the data set.")
    return ErasureData(names, forget_classes, forget, remain)


def _forget_class_set(forget_set, forget_classes, options, labels, family):
    """A given forget set, labelled: images of one class need no label column; with several the set must say which
    image is which, and every label must be a forgotten class (an ascent on another class would erase it too)."""
    column = options.label_column
    if column not in forget_set.column_names:
        if len(forget_classes) > 1:
            raise ValueError(
                f"The forget set has no {column!r} column: erasing several classes, it must say which image is "
                "which (a label column with the class ids or names)."
            )
        return forget_set.add_column(column, [forget_classes[0]] * len(forget_set))
    forget_set = align_label_ids(forget_set, column, labels)
    others = sorted(set(forget_set[column]) - set(forget_classes))
    if others:
        raise ValueError(
            f"The forget set holds classes {[family.condition_name(int(c)) for c in others[:5]]} that are not "
            f"erased ({[family.condition_name(c) for c in forget_classes]})."
        )
    return forget_set


def _text_data(family, names, conditions, options, dataset, pair, preset, seed, main_process_first) -> ErasureData:
    """Concept erasure: captioned images that name a concept and the others, generated by the model or given."""
    kwargs = {**_image_kwargs(options, family), "label_column": PROMPT_ID_COLUMN}
    anchor = default_anchor(preset)
    if pair is not None:
        forget_set, remain_set = (with_prompt_ids(d, family, options.caption_column) for d in pair)
        return ErasureData(names, conditions, LabelledImages(forget_set, range(len(forget_set)), **kwargs),
                           LabelledImages(remain_set, range(len(remain_set)), **kwargs), anchor)  # fmt: skip
    if dataset is None and options.has_dataset:
        dataset = _user_dataset(options)
    if dataset is not None:
        forget_rows, remain_rows = split_by_caption(dataset, names, options.caption_column)
        dataset = with_prompt_ids(dataset, family, options.caption_column)
        forget, remain = LabelledImages(dataset, forget_rows, **kwargs), LabelledImages(dataset, remain_rows, **kwargs)
        return ErasureData(names, conditions, forget, remain, anchor)
    forget_prompts, remain_prompts = default_prompts(names, preset)
    forget_prompts = _prompt_list(options.forget_prompts) or forget_prompts
    remain_prompts = _prompt_list(options.remain_prompts) or [p for p in remain_prompts if p not in forget_prompts]
    if not remain_prompts:
        raise ValueError(
            f"No default remain prompt is left once those naming {names} are removed: give remain_prompts."
        )
    shared = [p for p in remain_prompts if p in forget_prompts or p in names]
    if shared:  # now, before any image is generated
        raise ValueError(
            f"The remain prompts {shared[:5]} are also erased ({names}): remain prompts must be kept ones."
        )
    pipeline = family.pipeline
    # Flux: the guidance its training gives the guidance embedding, so that data and training agree.
    guidance = family.generation_guidance(options.generation_guidance_scale)
    if guidance != options.generation_guidance_scale:
        logger.info(
            "Generating at guidance %g, the value %s training gives the model (not generation_guidance_scale %g).",
            guidance, family.name, options.generation_guidance_scale,
        )  # fmt: skip
    settings = dict(
        images_per_prompt=options.images_per_prompt,
        seed=seed,
        num_inference_steps=options.generation_inference_steps,
        guidance_scale=guidance,
        batch_size=options.generation_batch_size,
        cache_root=cache_dir() / "generated",
        fingerprint=model_fingerprint(pipeline),  # once for both sets: it may hash every denoiser weight
        pipeline_kwargs=family.sampling_kwargs(),
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
    return ErasureData(names, conditions, forget, remain, anchor)


def default_prompts(names: Sequence[str], preset=None) -> tuple[list[str], list[str]]:
    """(forget, remain) prompts of erasing the concepts `names` when none are given: each concept's forget prompts
    (the preset's, else templates around it), all of them; and the remain prompts (the preset's, else generic ones)
    that are no concept's forget prompt and name no concept."""
    forget, remain = [], []
    for name in names:
        if preset is not None and preset.prompts is not None:
            concept_forget, concept_remain = preset.prompts(name)
        else:
            concept_forget, concept_remain = concept_prompts(name), list(GENERIC_REMAIN_PROMPTS)
        forget += [p for p in concept_forget if p not in forget]
        remain += [p for p in concept_remain if p not in remain]
    return forget, [p for p in remain if p not in forget and not any(mentions(p, name) for name in names)]


def default_anchor(preset) -> str | None:
    """The prompt a text concept is remapped to when no target is given: the preset's anchor (None: the null
    condition), or without a preset the empty prompt."""
    return preset.anchor if preset is not None else ""


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
