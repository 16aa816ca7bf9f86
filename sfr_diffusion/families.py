"""The one place that knows how model families differ.

A *family* turns images and conditions into a denoiser's training problem: which space the denoiser works in,
how conditions and the null condition are encoded, what the prediction target is. Methods (``sfr_diffusion.methods``)
only ever see per-sample losses built through a family, so every method runs on every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from .losses import per_sample_mse


@dataclass
class NoiseDraw:
    """Noise and timesteps for one batch, drawn up front so that a batch can be sharded reproducibly."""

    noise: torch.Tensor
    timesteps: torch.Tensor


class ClassConditionalUNetFamily:
    """Pixel-space class-conditional ``UNet2DModel`` (the DDPM family); the last class embedding is the null class."""

    name = "ddpm"

    def __init__(self, pipeline):
        unet = pipeline.unet
        if unet.config.num_class_embeds is None:
            raise ValueError("The DDPM family needs a UNet2DModel built with `num_class_embeds` (class-conditional).")
        self.pipeline = pipeline
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.null_class_id = unet.config.num_class_embeds - 1
        size = unet.config.sample_size
        self.sample_shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def num_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def num_classes(self) -> int:
        return self.null_class_id

    def resolve_class(self, concept: str | int) -> int:
        """A class name (the pipeline's ``id2label``) or id → a validated class id."""
        return self.pipeline.get_label_ids(concept)[0]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the denoiser's space (identity in pixel space)."""
        return images

    def draw_noise(self, batch_size: int, generator: torch.Generator) -> NoiseDraw:
        return NoiseDraw(
            noise=torch.randn((batch_size, *self.sample_shape), generator=generator),
            timesteps=torch.randint(0, self.num_timesteps, (batch_size,), generator=generator),
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, timesteps)
        if prediction_type == "sample":
            return x0
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")

    def predict(self, model, x_t: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(x_t, timesteps, class_labels=labels).sample

    def noisy(self, x0: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        return self.noise_scheduler.add_noise(x0, draw.noise.to(x0), draw.timesteps.to(x0.device))

    def diffusion_loss(self, model, x0: torch.Tensor, labels: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        """Per-sample denoising loss ℓ_i at the drawn timesteps (the model's own objective)."""
        noise, timesteps = draw.noise.to(x0), draw.timesteps.to(x0.device)
        prediction = self.predict(model, self.noisy(x0, draw), timesteps, labels)
        return per_sample_mse(prediction, self.target(x0, noise, timesteps))


def family_for(pipeline) -> ClassConditionalUNetFamily:
    """Pick the family from the pipeline's components; an unknown layout is an error naming the supported ones."""
    from diffusers import UNet2DModel

    unet = getattr(pipeline, "unet", None)
    if isinstance(unet, UNet2DModel) and unet.config.num_class_embeds is not None:
        return ClassConditionalUNetFamily(pipeline)
    raise ValueError(
        f"Unsupported pipeline {type(pipeline).__name__}: expected a class-conditional UNet2DModel pipeline "
        "(ClassConditionalDDPMPipeline)."
    )
