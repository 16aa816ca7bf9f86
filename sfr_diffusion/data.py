"""Forget and remain data: labelled images from a `datasets.Dataset`, sampled reproducibly and shardably.

Every batch is a pure function of ``(seed, stream, step)``: the global batch's indices, noise, timesteps and
label-dropout draws are generated identically on every process and each process keeps its own slice. So a run on N
processes sees the same global batch as a run on one, and a resumed run sees the same batches as an uninterrupted
one, with no sampler state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .families import NoiseDraw


@dataclass
class Batch:
    """One process's share of a global batch."""

    images: torch.Tensor  # (b, C, H, W) in [-1, 1]
    labels: torch.Tensor  # (b,) class ids
    draw: NoiseDraw  # noise and timesteps for these samples
    uniform: torch.Tensor  # (b,) U[0, 1) draws, e.g. for label dropout
    global_size: int


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

    def load(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        records = self.dataset[self.rows[np.asarray(positions)].tolist()]
        mode = "L" if self.channels == 1 else "RGB"
        arrays = []
        for image in records[self.image_column]:
            image = center_crop(image.convert(mode), self.resolution)
            arrays.append(np.asarray(image, dtype=np.float32).reshape(self.resolution, self.resolution, -1))
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div(127.5).sub(1.0)
        return images, torch.as_tensor(records[self.label_column], dtype=torch.long)


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


def check_label_names(dataset, label_column: str, labels: dict[str, int] | None) -> None:
    """A data set whose class names disagree with the model's would erase the wrong class: refuse it.

    ``labels`` maps each of the model's class names to its id (a pipeline's ``labels``; DiT lists several aliases per
    ImageNet class). A data set class agrees when one of its comma-separated aliases names the same id.
    """
    feature = dataset.features.get(label_column)
    names = getattr(feature, "names", None)
    if not names or not labels:
        return
    agrees = [any(labels.get(alias.strip()) == idx for alias in name.split(",")) for idx, name in enumerate(names)]
    mismatched = [f"{idx}: {name!r}" for idx, (name, ok) in enumerate(zip(names, agrees, strict=True)) if not ok]
    if mismatched:
        raise ValueError(
            f"The data set's classes do not match the model's id2label (first mismatches: {mismatched[:5]}); "
            "relabel the data or fix id2label so the ids agree."
        )


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
        # imagefolder infers a ClassLabel `label` column from sub-folder names (one folder per class).
        return load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
    raise ValueError("No data: pass --dataset_name or --train_data_dir (the digits world needs neither).")
