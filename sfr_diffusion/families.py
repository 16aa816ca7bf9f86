"""The one place that knows how model families differ.

A *family* turns images and conditions into a denoiser's training problem: which space the denoiser works in (pixels
or VAE latents), how classes and the null class are encoded, how the prediction is read (DiT's learned-sigma
channels), what the target is. Methods (``sfr_diffusion.methods``) and the trainer only see per-sample losses built
through a family, so every method runs on every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel

from .losses import per_sample_mse


@dataclass
class NoiseDraw:
    """Noise and timesteps for one batch, drawn up front so that a batch can be sharded reproducibly."""

    noise: torch.Tensor
    timesteps: torch.Tensor


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class ClassConditionalFamily:
    """What class-conditional families share: a noise scheduler, a null class, labels by name or id."""

    name: str

    def __init__(self, pipeline, null_class_id: int, sample_shape: tuple[int, ...]):
        self.pipeline = pipeline
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.null_class_id = null_class_id
        self.sample_shape = sample_shape  # the denoiser's input, per sample

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the pipeline generates and the data must have."""
        raise NotImplementedError

    @property
    def num_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def num_classes(self) -> int:
        labels = getattr(self.pipeline, "labels", None)
        return len(set(labels.values())) if labels else self.null_class_id

    def resolve_class(self, concept: str | int) -> int:
        """A class name (the pipeline's ``id2label``) or an id → a validated class id."""
        labels = getattr(self.pipeline, "labels", None) or {}
        text = str(concept).strip()
        if text in labels:
            return labels[text]
        if text.isdigit() and 0 <= int(text) < self.num_classes():
            return int(text)
        names = sorted(labels, key=labels.get)
        raise ValueError(f"Unknown class {concept!r}; valid names are {names} or ids 0..{self.num_classes() - 1}.")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the denoiser's space."""
        raise NotImplementedError

    def predict(self, model, x_t: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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

    def noisy(self, x0: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        return self.noise_scheduler.add_noise(x0, draw.noise.to(x0), draw.timesteps.to(x0.device))

    def diffusion_loss(self, model, x0: torch.Tensor, labels: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        """Per-sample denoising loss ℓ_i at the drawn timesteps (the model's own objective)."""
        noise, timesteps = draw.noise.to(x0), draw.timesteps.to(x0.device)
        prediction = self.predict(model, self.noisy(x0, draw), timesteps, labels)
        return per_sample_mse(prediction, self.target(x0, noise, timesteps))


class ClassConditionalUNetFamily(ClassConditionalFamily):
    """Pixel-space class-conditional ``UNet2DModel`` (the DDPM family); the last class embedding is the null class."""

    name = "ddpm"

    def __init__(self, pipeline):
        unet = pipeline.unet
        if unet.config.num_class_embeds is None:
            raise ValueError("The DDPM family needs a UNet2DModel built with `num_class_embeds` (class-conditional).")
        shape = (unet.config.in_channels, *_pair(unet.config.sample_size))
        super().__init__(pipeline, null_class_id=unet.config.num_class_embeds - 1, sample_shape=shape)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.sample_shape

    def num_classes(self) -> int:
        return self.null_class_id

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def predict(self, model, x_t, timesteps, labels):
        return model(x_t, timesteps, class_labels=labels).sample


class DiTFamily(ClassConditionalFamily):
    """Latent-space class-conditional ``DiTTransformer2DModel`` behind a VAE, as ``DiTPipeline`` samples it.

    The null class is ``num_embeds_ada_norm`` (``DiTPipeline`` hard-codes 1000, the size of ImageNet's label set);
    with learned sigma (``out_channels == 2 * in_channels``) only the first half of the output is the prediction the
    diffusion loss applies to, as in ``DiTPipeline``'s sampling loop.
    """

    name = "dit"

    def __init__(self, pipeline):
        transformer = pipeline.transformer
        shape = (transformer.config.in_channels, *_pair(transformer.config.sample_size))
        super().__init__(pipeline, null_class_id=transformer.config.num_embeds_ada_norm, sample_shape=shape)
        self.vae = pipeline.vae.requires_grad_(False).eval()
        self.learned_sigma = transformer.config.out_channels == 2 * transformer.config.in_channels
        # DiT's label embedder replaces 10% of labels by the null class whenever the model is in training mode. Left
        # on, the forget step would ascend on the unconditional branch that guidance relies on (a defect of the
        # official DiT script); label dropout is applied explicitly by the methods instead (remain step only).
        for module in transformer.modules():
            if hasattr(module, "token_drop") and hasattr(module, "dropout_prob"):
                module.dropout_prob = 0.0

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def image_shape(self) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.in_channels, self.sample_shape[1] * factor, self.sample_shape[2] * factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # The posterior mean rather than a sample keeps batches a pure function of the seed (see data.py); a trained
        # VAE's posterior is narrow, so the two differ little.
        latents = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def predict(self, model, x_t, timesteps, labels):
        output = model(x_t, timestep=timesteps, class_labels=labels).sample
        return output[:, : self.sample_shape[0]] if self.learned_sigma else output


def family_for(pipeline) -> ClassConditionalFamily:
    """Pick the family from the pipeline's components; an unknown layout is an error naming the supported ones."""
    unet = getattr(pipeline, "unet", None)
    if isinstance(unet, UNet2DModel) and unet.config.num_class_embeds is not None:
        return ClassConditionalUNetFamily(pipeline)
    if isinstance(getattr(pipeline, "transformer", None), DiTTransformer2DModel):
        return DiTFamily(pipeline)
    raise ValueError(
        f"Unsupported pipeline {type(pipeline).__name__}: expected a class-conditional UNet2DModel pipeline "
        "(ClassConditionalDDPMPipeline) or a DiTPipeline."
    )
