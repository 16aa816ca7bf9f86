"""The digits world's judge: a small CNN classifier whose penultimate features also define FID-digits.

Besides the ten digits it has an eleventh output, *no digit*, trained on synthetic non-digit images (blank, flat,
noise, blocks). A ten-way classifier must call every image some digit — measured here, it called the blank images that
an erased "one" produces "one", so FA read 100% for a class that was gone. With the extra class, FA counts only
samples that still look like the erased digit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from tqdm.auto import tqdm


class DigitsClassifier(ModelMixin, ConfigMixin):
    """CNN on 1×8×8 images in [-1, 1]; saved and loaded with ``save_pretrained`` / ``from_pretrained``."""

    @register_to_config
    def __init__(
        self, num_classes: int = 10, no_digit_class: bool = True, width: int = 32, feature_dim: int = 128, dropout=0.3
    ):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * width * 2 * 2, feature_dim),
            nn.ReLU(),
        )
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes + int(no_digit_class))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, the feature space of FID-digits."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.features(images)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted class ids for images in [-1, 1] (N, 1, 8, 8); ``num_classes`` means *no digit*."""
        was_training = self.training
        self.eval()
        preds = torch.cat([self(chunk.to(self.device)).argmax(-1).cpu() for chunk in images.split(batch_size)])
        self.train(was_training)
        return preds


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels (background -1 fills in); digits are not always centred."""
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    size = images.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    crops = [p[:, dy : dy + size, dx : dx + size] for p, (dy, dx) in zip(padded, offsets.tolist(), strict=True)]
    return torch.stack(crops)


def non_digit_images(count: int, generator: torch.Generator, size: int = 8) -> torch.Tensor:
    """Synthetic images that are no digit: flat grey levels, noise on a flat background, and random blocks."""
    kind = torch.randint(0, 3, (count,), generator=generator)
    level = torch.rand(count, 1, 1, 1, generator=generator) * 2 - 1
    noise = torch.randn(count, 1, size, size, generator=generator) * torch.rand(count, 1, 1, 1, generator=generator)
    images = level.expand(count, 1, size, size).clone()
    images[kind == 1] = (images + 0.5 * noise)[kind == 1]
    blocks = torch.rand(count, 1, size // 2, size // 2, generator=generator) < 0.5
    blocks = F.interpolate(blocks.float(), scale_factor=2, mode="nearest") * 2 - 1
    images[kind == 2] = blocks[kind == 2]
    return images.clamp(-1, 1)


def train_judge(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> DigitsClassifier:
    """Train the judge on images in [-1, 1] with small random shifts, plus a no-digit share of synthetic images."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc="judge") as progress:
        for _ in range(epochs):
            for idx in torch.randperm(len(images), generator=generator).split(batch_size):
                negatives = non_digit_images(max(1, len(idx) // 8), generator)
                inputs = torch.cat([random_shift(images[idx], generator), negatives])
                targets = torch.cat([labels[idx], torch.full((len(negatives),), model.config.num_classes)])
                loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()
