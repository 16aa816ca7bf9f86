"""Random-weight pipelines with the layouts of real checkpoints, built from configs (no hub).

The cost of a method depends on the shapes it trains, not on the values of the weights, so benchmarks and tests
build the real architectures from their configs with random weights: no download, no token, the same result for the
same seed. Each size is a set of component configs (:func:`stable_diffusion_configs`, :func:`dit_configs`) and a
builder that returns a standard diffusers pipeline, which saves and reloads with plain ``from_pretrained``:

- ``stable_diffusion_pipeline("sd-1.4")``: the CompVis/stable-diffusion-v1-4 layout (UNet 860M, CLIP ViT-L/14 text
  encoder, the SD VAE, 512 px); ``"tiny"`` is the same layout at a few hundred thousand parameters and 16 px.
- ``stable_diffusion_xl_pipeline("sdxl-base-1.0")``: the stabilityai/stable-diffusion-xl-base-1.0 layout (UNet 2.6B
  with ``text_time`` conditioning, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders, the SDXL VAE, Euler, 1024
  px); ``"tiny"`` likewise at 16 px, with text encoders of different widths so that their concatenation is visible.
- ``dit_pipeline("dit-xl-2-256")``: DiT-XL/2 at 256 px (learned sigma) behind the SD VAE; ``"tiny"`` likewise. The
  paper's 675M parameters are 750M in diffusers' layout, which repeats the timestep and class embedders in each block.

The text encoder's tokenizer is CLIP's byte-level BPE with no merges (:func:`clip_tokenizer`): every byte is a token,
so it tokenizes any prompt without CLIP's 49k-entry vocabulary, which cannot be fetched offline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SD_SIZES = ("tiny", "sd-1.4")
SDXL_SIZES = ("tiny", "sdxl-base-1.0")
DIT_SIZES = ("tiny", "dit-xl-2-256")
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408  # the real CLIP tokenizer's; the embedding table of the "sd-1.4" text encoder has this size

# CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json: PNDM (PLMS only) on the scaled-linear schedule.
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json: Euler on the same scaled-linear schedule.
SDXL_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
# The UNet's time ids: original size (2), crop top-left (2) and target size (2), each embedded in
# `addition_time_embed_dim` channels and concatenated with text_encoder_2's pooled projection.
SDXL_TIME_IDS = 6


def _check_size(size: str, sizes: tuple[str, ...], what: str) -> None:
    if size not in sizes:
        raise ValueError(f"Unknown {what} size {size!r}; valid sizes are {list(sizes)}.")


def _bytes_to_unicode() -> dict[int, str]:
    """The printable characters GPT-2 and CLIP stand for the bytes 0..255 with (byte-level BPE), in their order:
    printable bytes as themselves, then the others mapped past U+00FF."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def _clip_vocab() -> dict[str, int]:
    """Bytes, then bytes ending a word (``</w>``), then the special tokens: CLIP's vocabulary order, without merges."""
    characters = list(_bytes_to_unicode().values())
    tokens = [*characters, *(c + "</w>" for c in characters), BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def clip_tokenizer(model_max_length: int = 77, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer with an empty merge list, built offline (514 tokens).

    Written as the ``vocab.json`` + ``merges.txt`` pair every CLIP checkpoint ships and loaded from there, which works
    with the python tokenizer of transformers 4 and the tokenizers-backed one of transformers 5 alike. `pad_token`:
    CLIP pads with its end token, SDXL's second tokenizer with ``"!"``.
    """
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(_clip_vocab()), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length, pad_token=pad_token)


def _sd_vae_config(sample_size: int) -> dict:
    """The SD VAE (CompVis/stable-diffusion-v1-4 vae/, stabilityai/sd-vae-ft-ema): 8× down, 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
    }


def stable_diffusion_configs(size: str = "tiny") -> dict[str, dict]:
    """Keyword arguments of each component of a Stable Diffusion 1.x layout: ``unet`` (``UNet2DConditionModel``),
    ``vae`` (``AutoencoderKL``), ``text_encoder`` (``CLIPTextConfig``), ``scheduler`` (``PNDMScheduler``)."""
    _check_size(size, SD_SIZES, "Stable Diffusion")
    vocab = _clip_vocab()
    token_ids = {"bos_token_id": vocab[BOS_TOKEN], "eos_token_id": vocab[EOS_TOKEN], "pad_token_id": vocab[EOS_TOKEN]}
    if size == "tiny":
        unet = {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 16,
        }
        vae = {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": 16,
            "scaling_factor": 0.18215,
        }
        text_encoder = {
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            **token_ids,
        }
    else:
        # CompVis/stable-diffusion-v1-4 unet/config.json (the rest are UNet2DConditionModel's defaults).
        unet = {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        }
        vae = _sd_vae_config(sample_size=512)
        # openai/clip-vit-large-patch14's text tower; its token ids are this tokenizer's (only the ids < 514 occur).
        text_encoder = {
            "vocab_size": CLIP_VOCAB_SIZE,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
            **token_ids,
        }
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": dict(SD_SCHEDULER_CONFIG)}


def stable_diffusion_pipeline(size: str = "tiny", seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight ``StableDiffusionPipeline`` of `size` ("tiny" or "sd-1.4"), without safety checker.

    Example:
        >>> pipe = stable_diffusion_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = stable_diffusion_configs(size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**configs["unet"])
    vae = AutoencoderKL(**configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(configs["text_encoder"]["max_position_embeddings"]),
        unet=unet.eval(),
        scheduler=PNDMScheduler(**configs["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def stable_diffusion_xl_configs(size: str = "tiny") -> dict[str, dict]:
    """Keyword arguments of each component of an SDXL layout: ``unet`` (``UNet2DConditionModel`` with ``text_time``
    conditioning), ``vae`` (``AutoencoderKL``), ``text_encoder`` and ``text_encoder_2`` (``CLIPTextConfig``, the second
    with a projection) and ``scheduler`` (``EulerDiscreteScheduler``). The UNet's cross-attention width is the two
    encoders' hidden sizes together, its added-embedding input the second encoder's projection and the time ids."""
    _check_size(size, SDXL_SIZES, "Stable Diffusion XL")
    vocab = _clip_vocab()
    token_ids = {"bos_token_id": vocab[BOS_TOKEN], "eos_token_id": vocab[EOS_TOKEN], "pad_token_id": vocab[EOS_TOKEN]}
    if size == "tiny":
        # As diffusers' own SDXL pipeline tests build it: no attention at the first level, linear projections, more
        # transformer layers deeper down.
        text_encoder = {
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 32,
            **token_ids,
        }
        text_encoder_2 = {**text_encoder, "hidden_size": 48, "projection_dim": 24}
        unet = {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (2, 4),
            "transformer_layers_per_block": (1, 2),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "norm_num_groups": 16,
        }
        vae = {**stable_diffusion_configs("tiny")["vae"], "scaling_factor": 0.13025, "force_upcast": True}
    else:
        # stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/ (the SD VAE's layout, another scale) and the text
        # encoders: CLIP ViT-L/14's text tower (as SD 1.4's) and OpenCLIP ViT-bigG/14's.
        text_encoder = stable_diffusion_configs("sd-1.4")["text_encoder"]
        text_encoder_2 = {
            **text_encoder,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "projection_dim": 1280,
            "hidden_act": "gelu",
        }
        unet = {
            "sample_size": 128,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (5, 10, 20),
            "transformer_layers_per_block": (1, 2, 10),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "norm_num_groups": 32,
        }
        vae = {**_sd_vae_config(sample_size=1024), "scaling_factor": 0.13025, "force_upcast": True}
    unet["cross_attention_dim"] = text_encoder["hidden_size"] + text_encoder_2["hidden_size"]
    unet["projection_class_embeddings_input_dim"] = (
        text_encoder_2["projection_dim"] + SDXL_TIME_IDS * unet["addition_time_embed_dim"]
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "scheduler": dict(SDXL_SCHEDULER_CONFIG),
    }


def stable_diffusion_xl_pipeline(size: str = "tiny", seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight ``StableDiffusionXLPipeline`` of `size` ("tiny" or "sdxl-base-1.0"), without watermarker.

    Example:
        >>> pipe = stable_diffusion_xl_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = stable_diffusion_xl_configs(size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**configs["unet"])
    vae = AutoencoderKL(**configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    max_length = configs["text_encoder"]["max_position_embeddings"]
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=clip_tokenizer(max_length),
        tokenizer_2=clip_tokenizer(max_length, pad_token="!"),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(**configs["scheduler"]),
        add_watermarker=False,
    )


def dit_configs(size: str = "tiny") -> dict[str, dict]:
    """Keyword arguments of each component of a DiT layout: ``transformer`` (``DiTTransformer2DModel``), ``vae``
    (``AutoencoderKL``) and ``scheduler`` (``DDIMScheduler``)."""
    _check_size(size, DIT_SIZES, "DiT")
    if size == "tiny":
        transformer = {
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 8,
            "num_layers": 2,
            "sample_size": 4,
            "patch_size": 2,
        }
        vae = {
            "block_out_channels": (8, 16),
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "norm_num_groups": 4,
            "latent_channels": 4,
        }
    else:
        # facebook/DiT-XL-2-256: DiTTransformer2DModel's defaults (28 layers, 16 heads × 72) on 32×32×4 latents,
        # learned sigma (8 output channels), behind sd-vae-ft-ema.
        transformer = {"in_channels": 4, "out_channels": 8, "sample_size": 32}
        vae = _sd_vae_config(sample_size=256)
    return {"transformer": transformer, "vae": vae, "scheduler": {"num_train_timesteps": 1000}}


def dit_pipeline(size: str = "tiny", seed: int = 0) -> DiTPipeline:
    """A random-weight ``DiTPipeline`` of `size` ("tiny" or "dit-xl-2-256"); classes are named "class <id>"."""
    configs = dit_configs(size)
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(**configs["transformer"])
    vae = AutoencoderKL(**configs["vae"])
    labels = {i: f"class {i}" for i in range(transformer.config.num_embeds_ada_norm)}
    return DiTPipeline(
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=DDIMScheduler(**configs["scheduler"]),
        id2label=labels,
    )


def image_size(pipeline) -> int:
    """The side of the square images `pipeline` generates natively: the denoiser's sample size × the VAE's
    down-sampling factor (1 for pixel-space pipelines)."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    if denoiser is None:
        raise ValueError(f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`.")
    sample_size = denoiser.config.sample_size
    if not isinstance(sample_size, int):
        height, width = sample_size
        if height != width:
            raise ValueError(f"The denoiser's sample size {tuple(sample_size)} is not square.")
        sample_size = height
    vae = getattr(pipeline, "vae", None)
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return sample_size * factor
