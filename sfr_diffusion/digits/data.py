"""The digits world's data: scikit-learn's bundled 8×8 handwritten digits as a `datasets.Dataset`.

The images ship with scikit-learn, so nothing is downloaded. They are exposed exactly like a user's image
classification data set (an ``image`` column of PIL images and a ``label`` `ClassLabel` column), so the digits
world exercises the same data path as CIFAR-10 or an imagefolder.
"""

from __future__ import annotations

import numpy as np
import torch

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split_indices(num_images: int, split: str) -> np.ndarray:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")
    order = np.random.default_rng(SPLIT_SEED).permutation(num_images)
    num_test = int(round(num_images * TEST_FRACTION))
    if split == "all":
        return np.sort(order)
    return np.sort(order[:num_test] if split == "test" else order[num_test:])


def load_digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 arrays of shape (N, 8, 8) in [0, 255] and integer labels, for a fixed seeded split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    idx = _split_indices(len(images), split)
    return images[idx], bunch.target[idx].astype(np.int64)


def load_digits_dataset(split: str = "train"):
    """The digits as a `datasets.Dataset` with an ``image`` (PIL, mode "L") and a ``label`` (`ClassLabel`) column."""
    from datasets import ClassLabel, Dataset, Features, Image

    images, labels = load_digits_arrays(split)
    features = Features({"image": Image(), "label": ClassLabel(names=list(DIGIT_NAMES))})
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def digits_tensor(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float tensors (N, 1, 8, 8) in [-1, 1] and labels (N,), the scale the denoisers and the judge use."""
    images, labels = load_digits_arrays(split)
    return torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1), torch.from_numpy(labels)
