"""Forget and remain data: labelled images from a `datasets.Dataset`, sampled reproducibly and shardably.

Every batch is a pure function of ``(seed, stream, step)``: the global batch's indices, noise, timesteps and
label-dropout draws are generated identically on every process and each process keeps its own slice. So a run on N
processes sees the same global batch as a run on one, and a resumed run sees the same batches as an uninterrupted
one, with no sampler state to checkpoint.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .families import NoiseDraw

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One process's share of a global batch."""

    images: torch.Tensor  # (b, C, H, W) in [-1, 1]
    labels: torch.Tensor  # (b,) class ids
    draw: NoiseDraw  # noise and timesteps for these samples
    uniform: torch.Tensor  # (b,) U[0, 1) draws, e.g. for label dropout
    global_size: int
    lead_label: int  # the global batch's first label, the same on every process (process 0's labels[0])
    encoded: dict = field(default_factory=dict, repr=False, compare=False)  # the images encoded, per device


def center_crop(image, resolution: int):
    """Resize the shorter side to `resolution` (bicubic), then crop the centre square, as DiT and diffusers train."""
    if image.size == (resolution, resolution):
        return image
    width, height = image.size
    scale = resolution / min(width, height)
    image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), resample=3)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class LabelledImages:
    """A view of rows of an image-classification `datasets.Dataset`, decoded to tensors in [-1, 1] on demand."""

    def __init__(
        self,
        dataset,
        rows: Sequence[int],
        *,
        resolution: int,
        channels: int,
        image_column: str = "image",
        label_column: str = "label",
    ):
        for column in (image_column, label_column):
            if column not in dataset.column_names:
                raise ValueError(f"Column {column!r} not in the data set; columns are {dataset.column_names}.")
        if len(rows) == 0:
            raise ValueError("Empty selection of images: no rows matched.")
        self.dataset = dataset
        self.rows = np.asarray(rows, dtype=np.int64)
        self.resolution, self.channels = resolution, channels
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.rows)

    def label(self, position: int) -> int:
        """One image's label, without decoding the image."""
        return int(self.dataset.select_columns([self.label_column])[int(self.rows[position])][self.label_column])

    def load(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[np.asarray(positions)].tolist()
        try:
            records = self.dataset[rows]
        except OSError as error:  # PIL decodes lazily: a damaged file surfaces here
            raise ValueError(f"An image in rows {rows[:8]} of the data set cannot be read: {error}") from error
        mode = "L" if self.channels == 1 else "RGB"
        arrays = []
        for image in records[self.image_column]:
            image = center_crop(image.convert(mode), self.resolution)
            arrays.append(np.asarray(image, dtype=np.float32).reshape(self.resolution, self.resolution, -1))
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div(127.5).sub(1.0)
        return images, torch.as_tensor(records[self.label_column], dtype=torch.long)


def verify_images(dataset, image_column: str = "image", max_rows: int = 20_000) -> None:
    """Open every image of a user's data set before any training work, so a damaged file is reported by name at
    once rather than from inside the saliency mask's batches. Larger data sets are checked as they are read."""
    from datasets import Image as ImageFeature
    from PIL import Image

    if not isinstance(dataset.features.get(image_column), ImageFeature):
        return
    if len(dataset) > max_rows:
        logger.info("%d images: checked as they are read rather than up front.", len(dataset))
        return
    raw = dataset.cast_column(image_column, ImageFeature(decode=False))
    for row, entry in enumerate(tqdm(raw[image_column], desc="checking images", leave=False)):
        source = entry.get("path") or f"row {row}"
        try:
            with Image.open(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"]) as image:
                image.load()
        except (OSError, ValueError) as error:
            raise ValueError(f"Image {source} (row {row} of the data set) cannot be read: {error}") from error


def split_by_class(
    dataset, forget_classes: Sequence[int], label_column: str = "label", **kwargs
) -> tuple[LabelledImages, LabelledImages]:
    """(forget, remain) views: rows whose label is in `forget_classes`, and all the other rows."""
    if label_column not in dataset.column_names:
        raise ValueError(f"Column {label_column!r} not in the data set; columns are {dataset.column_names}.")
    labels = np.asarray(dataset[label_column])
    is_forget = np.isin(labels, np.asarray(forget_classes))
    if not is_forget.any():
        raise ValueError(f"No images with label in {list(forget_classes)} in the data set.")
    forget = LabelledImages(dataset, np.flatnonzero(is_forget), label_column=label_column, **kwargs)
    remain = LabelledImages(dataset, np.flatnonzero(~is_forget), label_column=label_column, **kwargs)
    return forget, remain


def align_label_ids(dataset, label_column: str, labels: dict[str, int] | None):
    """The data set with its class ids renumbered to the model's, matched by name.

    An imagefolder numbers its class folders alphabetically (``eight`` = 0, ``five`` = 1, ...), not as the model's
    ``id2label`` does; ``labels`` maps each of the model's class names to its id (a pipeline's ``labels``; DiT lists
    several aliases per ImageNet class). A data set class matches when one of its comma-separated aliases names a
    model class. A data set without class names, or a model without them, is returned as it is; a class the model
    does not know is an error (training on it under a wrong id would erase or keep the wrong class).
    """
    feature = dataset.features.get(label_column)
    names = getattr(feature, "names", None)
    if not names or not labels:
        return dataset
    model_ids = []
    for name in names:
        matches = [labels[alias.strip()] for alias in name.split(",") if alias.strip() in labels]
        model_ids.append(matches[0] if matches else None)
    unknown = [name for name, idx in zip(names, model_ids, strict=True) if idx is None]
    if unknown:
        known = sorted(labels, key=labels.get)[:12]
        raise ValueError(
            f"The data set's classes {unknown[:5]} are not among the model's class names (id2label: {known}...); "
            "name the class folders or labels as the model does."
        )
    if model_ids == list(range(len(names))):
        return dataset
    from datasets import Value

    mapping = np.asarray(model_ids, dtype=np.int64)
    dataset = dataset.cast_column(label_column, Value("int64"))
    return dataset.map(lambda batch: {label_column: mapping[np.asarray(batch[label_column])].tolist()}, batched=True)


# Independent random streams, one per kind of batch: what each sampler draws never depends on another's draws.
FORGET_STREAM, REMAIN_STREAM, FISHER_FORGET_STREAM, FISHER_REMAIN_STREAM, ANCHOR_STREAM = 1, 2, 3, 4, 5


def stream_generator(seed: int, stream: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class BatchSampler:
    """Draws the batch for `step` from `images`; `stream` separates independent draws (forget, remain, Fisher)."""

    def __init__(self, images: LabelledImages, family, batch_size: int, *, seed: int, stream: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.images, self.family, self.batch_size = images, family, batch_size
        self.seed, self.stream = seed, stream

    def batch(self, step: int, process_index: int = 0, num_processes: int = 1) -> Batch:
        if self.batch_size % num_processes:
            raise ValueError(f"Batch size {self.batch_size} is not divisible by {num_processes} processes.")
        generator = stream_generator(self.seed, self.stream, step)
        n = len(self.images)
        if self.batch_size <= n:
            positions = torch.randperm(n, generator=generator)[: self.batch_size]
        else:
            positions = torch.randint(0, n, (self.batch_size,), generator=generator)
        draw = self.family.draw_noise(self.batch_size, generator)
        uniform = torch.rand(self.batch_size, generator=generator)
        mine = slice(process_index, None, num_processes)
        images, labels = self.images.load(positions[mine].tolist())
        return Batch(
            images=images,
            labels=labels,
            draw=NoiseDraw(noise=draw.noise[mine], timesteps=draw.timesteps[mine]),
            uniform=uniform[mine],
            global_size=self.batch_size,
            lead_label=int(labels[0]) if process_index == 0 else self.images.label(int(positions[0])),
        )


def load_image_dataset(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
):
    """A labelled image data set from the Hub/a local `datasets` script (`dataset_name`) or an imagefolder."""
    from datasets import load_dataset

    if dataset_name and train_data_dir:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    if dataset_name:
        return load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    if train_data_dir:
        if not Path(train_data_dir).is_dir():
            raise FileNotFoundError(f"--train_data_dir {train_data_dir} is not a folder.")
        # imagefolder infers a ClassLabel `label` column from sub-folder names (one folder per class).
        return load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
    raise ValueError("No data: pass --dataset_name or --train_data_dir (the digits world needs neither).")
