"""Random image data sets for cost runs and tests on the random-weight layouts (:mod:`.layouts`): the cost of a
method depends on the shapes it trains, not on what the images show."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _random_rgb(count: int, resolution: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8) for _ in range(count)]


def random_images(count: int, resolution: int, classes: int = 2):
    """Random RGB images labelled with class ids 0..classes-1, as a `datasets.Dataset` (``image``, ``label``)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "label": Value("int64")})
    labels = [i % classes for i in range(count)]
    return Dataset.from_dict({"image": _random_rgb(count, resolution), "label": labels}, features=features)


def random_captioned_images(count: int, resolution: int, captions: Sequence[str]):
    """Random RGB images captioned in turn with `captions`, as a `datasets.Dataset` (``image``, ``text``)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "text": Value("string")})
    texts = [captions[i % len(captions)] for i in range(count)]
    return Dataset.from_dict({"image": _random_rgb(count, resolution), "text": texts}, features=features)
