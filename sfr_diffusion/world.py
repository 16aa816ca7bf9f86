"""The digits world: where the bundled models live and how they are built (see ``scripts/build_digits_world.py``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel
from tqdm.auto import tqdm

from .digits import DIGIT_NAMES
from .families import ClassConditionalUNetFamily
from .pipelines import ClassConditionalDDPMPipeline

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "digits"
BUNDLED = {"ddpm": ASSETS_DIR / "ddpm", "judge": ASSETS_DIR / "judge"}
NUM_TRAIN_TIMESTEPS = 100
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_INFERENCE_STEPS = 20


def bundled_path(name: str) -> Path:
    """Path of a bundled digits-world model ("ddpm" or "judge"); a clear error if it was never built."""
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
    # v-prediction with a cosine schedule samples cleanly with guidance; epsilon prediction collapsed at scale 3.
    scheduler = DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )
    return ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler, id2label=dict(enumerate(DIGIT_NAMES)))


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
    family = ClassConditionalUNetFamily(pipeline)
    model = family.denoiser.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()),
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
    return pipeline


def is_digits_world(pipeline) -> bool:
    """Whether a pipeline generates the digits world's 1×8×8 images of ten classes (so the judge applies)."""
    unet = getattr(pipeline, "unet", None)
    return (
        unet is not None
        and unet.config.sample_size == 8
        and unet.config.in_channels == 1
        and unet.config.num_class_embeds == len(DIGIT_NAMES) + 1
    )


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
        raise ValueError("digits_world_metrics needs a digits-world pipeline (1×8×8 images, ten classes).")
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
