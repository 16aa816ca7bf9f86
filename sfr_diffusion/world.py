"""The digits world: where the bundled models live and how they are built (see ``scripts/build_digits_world.py``)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, UNet2DModel
from tqdm.auto import tqdm

from .digits import DIGIT_NAMES
from .families import family_for
from .pipelines import ClassConditionalDDPMPipeline

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "digits"
BUNDLED = {name: ASSETS_DIR / name for name in ("ddpm", "dit", "judge")}  # the DiT folder's vae/ is the shared VAE
NUM_TRAIN_TIMESTEPS = 100
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_INFERENCE_STEPS = 20


def bundled_path(name: str) -> Path:
    """Path of a bundled digits-world model ("ddpm", "dit" or "judge"); a clear error if it was never built."""
    if name not in BUNDLED:
        raise ValueError(f"Unknown bundled model {name!r}; available: {sorted(BUNDLED)}.")
    path = BUNDLED[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python scripts/build_digits_world.py` to build it.")
    return path


def digits_ddpm_pipeline(seed: int = 0) -> ClassConditionalDDPMPipeline:
    """An untrained class-conditional DDPM for 8×8 digits (0.18M parameters; class 10 is the null class)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=len(DIGIT_NAMES) + 1,
    )
    return ClassConditionalDDPMPipeline(unet=unet, scheduler=digits_scheduler(), id2label=dict(enumerate(DIGIT_NAMES)))


def digits_scheduler() -> DDIMScheduler:
    # v-prediction with a cosine schedule samples cleanly with guidance; epsilon prediction collapsed at scale 3.
    return DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )


def digits_vae(seed: int = 0) -> AutoencoderKL:
    """An untrained AutoencoderKL for 1×8×8 digits: 4×4×4 latents."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=8,
    )


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    *,
    steps: int = 1500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
) -> AutoencoderKL:
    """Reconstruction + a light KL term; sets ``scaling_factor`` so that scaled latents have unit variance."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    vae.train()
    with tqdm(range(steps), desc="vae") as progress:
        for _ in progress:
            batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
            posterior = vae.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator)
            reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
            loss = torch.nn.functional.mse_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def digits_dit_pipeline(vae: AutoencoderKL, seed: int = 0) -> DiTPipeline:
    """An untrained class-conditional DiT (learned sigma) on the VAE's 4×4×4 latents, as a standard DiTPipeline.

    ``num_embeds_ada_norm=1000``: DiTPipeline hard-codes the null class as 1000, so the label table must have 1001
    rows even though only ten classes are used.
    """
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=vae.config.latent_channels,
        out_channels=2 * vae.config.latent_channels,
        num_layers=4,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_num_groups=16,
    )
    # eval(): like from_pretrained; in training mode DiT's label embedder randomly drops labels, even when sampling.
    return DiTPipeline(
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=digits_scheduler(),
        id2label=dict(enumerate(DIGIT_NAMES)),
    )


def train_class_conditional(
    pipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 4000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    label_dropout: float = 0.1,
    ema_decay: float = 0.995,
    seed: int = 0,
):
    """Pretrain a class-conditional denoiser on images in [-1, 1]; returns the pipeline holding the EMA weights."""
    family = family_for(pipeline)
    model = family.denoiser.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)),
    )
    with tqdm(range(steps), desc="pretrain") as progress:
        for _ in progress:
            idx = torch.randint(0, len(images), (batch_size,), generator=generator)
            drop = torch.rand(batch_size, generator=generator) < label_dropout
            batch_labels = torch.where(drop, family.null_class_id, labels[idx])
            draw = family.draw_noise(batch_size, generator)
            loss = family.diffusion_loss(model, family.encode(images[idx]), batch_labels, draw).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                    e.lerp_(p, 1 - ema_decay)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    model.load_state_dict(ema.state_dict())
    model.eval()
    return pipeline


def class_names(pipeline) -> dict[int, str]:
    """id → name from the pipeline's ``labels`` (DiTPipeline and ClassConditionalDDPMPipeline both keep one)."""
    labels = getattr(pipeline, "labels", None) or {}
    names: dict[int, str] = {}
    for name, idx in sorted(labels.items(), key=lambda item: item[1]):
        names.setdefault(idx, name)  # DiT's id2label may give several comma-separated names per id: keep the first
    return names


def is_digits_world(pipeline) -> bool:
    """Whether a pipeline generates the digits world's 1×8×8 images of ten classes, so the bundled judge applies."""
    if list(class_names(pipeline).values()) != list(DIGIT_NAMES):
        return False
    try:
        return family_for(pipeline).image_shape == (1, 8, 8)
    except ValueError:  # not a family we know: not the digits world
        return False


def digits_world_metrics(
    pipeline,
    forget_classes,
    *,
    samples_per_class: int = 50,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
    seed: int = 0,
    judge=None,
) -> dict:
    """FA, RA and FID-digits of a digits-world pipeline, judged by the bundled classifier on held-out images."""
    from .digits import digits_tensor
    from .judge import DigitsClassifier
    from .metrics import class_erasure_metrics

    if not is_digits_world(pipeline):
        raise ValueError("digits_world_metrics needs a digits-world pipeline (classes 'zero'..'nine').")
    judge = judge or DigitsClassifier.from_pretrained(bundled_path("judge"))
    real_images, real_labels = digits_tensor("test")
    progress_config = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(disable=True)
    try:
        return class_erasure_metrics(
            pipeline,
            judge.to(pipeline.device),
            list(forget_classes),
            real_images=real_images,
            real_labels=real_labels,
            samples_per_class=samples_per_class,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            seed=seed,
        )
    finally:
        pipeline.set_progress_bar_config(**progress_config)
