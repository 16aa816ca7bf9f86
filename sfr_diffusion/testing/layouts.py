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
- ``stable_diffusion_3_pipeline("sd3-medium")``: the stabilityai/stable-diffusion-3-medium-diffusers layout (an
  MMDiT ``SD3Transformer2DModel`` of 2.0B, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders with projections and
  the T5-XXL encoder, a 16-channel VAE with a shift factor, flow-matching Euler with SD3's shift 3, 1024 px);
  ``"tiny"`` likewise at 16 px, the T5 wider than the two CLIP encoders together so that ``encode_prompt`` pads them.
- ``flux_pipeline("flux-dev")``: the black-forest-labs/FLUX.1-dev layout (``FluxTransformer2DModel`` of 11.9B with a
  guidance embedding; CLIP ViT-L/14 for the pooled embedding, T5-XXL for the sequence; the 16-channel VAE; dynamic
  shifting); ``"tiny"`` likewise at 16 px. FluxPipeline records no resolution and samples at 128 latent pixels
  unless told: call it with the VAE's ``sample_size`` (``height=16, width=16`` for the tiny one), which the Flux
  family works at.

Every builder takes `overrides` (component → config entries replacing the size's, e.g. a shallower transformer for a
cost run) and `device` (where the weights are created: ``"cuda"`` initialises a real-size layout in seconds and
without host memory; the same seed gives the same weights on the same kind of device). Real-size layouts are too
large for most hosts' memory in fp32 (FLUX.1-dev's transformer alone is 48 GB): build them on an accelerator, or on
``torch.device("meta")`` to count parameters.

The CLIP tokenizer is CLIP's byte-level BPE with no merges (:func:`clip_tokenizer`): every byte is a token, so it
tokenizes any prompt without CLIP's 49k-entry vocabulary, which cannot be fetched offline. The T5 tokenizer
(:func:`t5_tokenizer`) is likewise a SentencePiece-style unigram model over single characters, built in code.
"""

from __future__ import annotations

import contextlib
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
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

SD_SIZES = ("tiny", "sd-1.4")
SDXL_SIZES = ("tiny", "sdxl-base-1.0")
DIT_SIZES = ("tiny", "dit-xl-2-256")
SD3_SIZES = ("tiny", "sd3-medium")
FLUX_SIZES = ("tiny", "flux-dev")
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
T5_PAD_TOKEN, T5_EOS_TOKEN, T5_UNK_TOKEN = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as in T5's SentencePiece model
CLIP_VOCAB_SIZE = 49408  # the real CLIP tokenizer's; the embedding table of the "sd-1.4" text encoder has this size
T5_VOCAB_SIZE = 32128  # T5 v1.1's SentencePiece vocabulary (padded); the real-size T5-XXL's embedding table

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

# stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json: flow-matching Euler, shift 3.
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json: the shift depends on the image's token count.
FLUX_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def _check_size(size: str, sizes: tuple[str, ...], what: str) -> None:
    if size not in sizes:
        raise ValueError(f"Unknown {what} size {size!r}; valid sizes are {list(sizes)}.")


def _configs_for(configs: dict[str, dict], overrides: dict[str, dict] | None) -> dict[str, dict]:
    """`configs` with each component's entries replaced by those `overrides` gives it; an unknown component is an
    error naming the layout's."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(configs))
    if unknown:
        raise ValueError(f"Unknown components {unknown} in overrides; this layout has {sorted(configs)}.")
    return {name: {**config, **overrides.get(name, {})} for name, config in configs.items()}


def _weights_on(device: str | torch.device | None):
    """Where the models' weights are created: `device` (a default-device context), or the default (None)."""
    return contextlib.nullcontext() if device is None else torch.device(device)


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


def t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A T5-style tokenizer built offline: a unigram model (as T5's SentencePiece one) over the printable ASCII
    characters, each with and without the word-start marker ``▁``, behind T5's Metaspace pre-tokenizer, appending
    ``</s>`` and padding with ``<pad>`` (ids 0, 1, 2 for pad, end and unknown, as T5's). 192 tokens; it saves and loads
    as a ``tokenizer.json`` like every fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    characters = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    # Log-probabilities: a word-start character is likelier than the marker and the character apart, so words split
    # into "▁a", "b", "c" as SentencePiece splits them into pieces.
    vocab = [(T5_PAD_TOKEN, 0.0), (T5_EOS_TOKEN, 0.0), (T5_UNK_TOKEN, 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in characters] + [("▁" + c, -1.5) for c in characters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS_TOKEN}", pair=f"$A {T5_EOS_TOKEN} $B {T5_EOS_TOKEN}", special_tokens=[(T5_EOS_TOKEN, 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=T5_PAD_TOKEN,
        eos_token=T5_EOS_TOKEN,
        unk_token=T5_UNK_TOKEN,
        extra_ids=0,
        model_max_length=model_max_length,
    )


def _tiny_t5_config(d_model: int) -> dict:
    """A two-layer T5 v1.1 encoder (gated GELU, as T5-XXL) over :func:`t5_tokenizer`'s vocabulary."""
    return {
        "vocab_size": len(t5_tokenizer()),
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def _t5_xxl_config() -> dict:
    """google/t5-v1_1-xxl, the encoder SD3 (text_encoder_3) and FLUX.1 (text_encoder_2) ship: 24 layers of 64 heads ×
    64, 4096 wide, gated GELU, T5 v1.1's 32,128-entry vocabulary (only :func:`t5_tokenizer`'s first ids occur)."""
    return {
        "vocab_size": T5_VOCAB_SIZE,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.1,  # published; the frozen encoder runs in eval mode
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def _flow_vae_config(scaling_factor: float, shift_factor: float) -> dict:
    """The 16-channel VAE of SD3 and FLUX.1 (their vae/config.json): the SD VAE's blocks at 1024 px, 16 latent
    channels, no quant convs, a shift factor, run in fp32 under fp16 (``force_upcast``)."""
    return {
        **_sd_vae_config(sample_size=1024),
        "latent_channels": 16,
        "scaling_factor": scaling_factor,
        "shift_factor": shift_factor,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "force_upcast": True,
    }


def _tiny_flow_vae_config(scaling_factor: float, shift_factor: float) -> dict:
    """The tiny 16 px VAE of the flow-matching layouts: no quant convs and a shift factor, as SD3's and Flux's VAEs."""
    return {
        **stable_diffusion_configs("tiny")["vae"],
        "scaling_factor": scaling_factor,
        "shift_factor": shift_factor,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }


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


def stable_diffusion_pipeline(
    size: str = "tiny",
    seed: int = 0,
    *,
    overrides: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> StableDiffusionPipeline:
    """A random-weight ``StableDiffusionPipeline`` of `size` ("tiny" or "sd-1.4"), without safety checker.

    Example:
        >>> pipe = stable_diffusion_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = _configs_for(stable_diffusion_configs(size), overrides)
    torch.manual_seed(seed)
    with _weights_on(device):
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


def stable_diffusion_xl_pipeline(
    size: str = "tiny",
    seed: int = 0,
    *,
    overrides: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> StableDiffusionXLPipeline:
    """A random-weight ``StableDiffusionXLPipeline`` of `size` ("tiny" or "sdxl-base-1.0"), without watermarker.

    Example:
        >>> pipe = stable_diffusion_xl_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = _configs_for(stable_diffusion_xl_configs(size), overrides)
    torch.manual_seed(seed)
    with _weights_on(device):
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


def stable_diffusion_3_configs(size: str = "tiny") -> dict[str, dict]:
    """Keyword arguments of each component of an SD3 layout: ``transformer`` (``SD3Transformer2DModel``), ``vae``
    (``AutoencoderKL``), ``text_encoder`` and ``text_encoder_2`` (``CLIPTextConfig``, with projections),
    ``text_encoder_3`` (``T5Config``) and ``scheduler`` (``FlowMatchEulerDiscreteScheduler``). The transformer's
    ``joint_attention_dim`` is T5's width, its ``pooled_projection_dim`` the two CLIP projections together."""
    _check_size(size, SD3_SIZES, "Stable Diffusion 3")
    if size == "tiny":
        vocab = _clip_vocab()
        token_ids = {
            "bos_token_id": vocab[BOS_TOKEN],
            "eos_token_id": vocab[EOS_TOKEN],
            "pad_token_id": vocab[EOS_TOKEN],
        }
        text_encoder = {
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 16,
            **token_ids,
        }
        text_encoder_2 = {**text_encoder, "hidden_size": 24, "projection_dim": 24}
        text_encoder_3 = _tiny_t5_config(d_model=48)  # wider than 16 + 24: encode_prompt zero-pads the CLIP states
        transformer = {
            "sample_size": 8,
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "caption_projection_dim": 16,  # the inner width, heads × head dim
            "pos_embed_max_size": 16,
        }
        # stabilityai/stable-diffusion-3-medium-diffusers vae/: scaling 1.5305, shift 0.0609.
        vae = _tiny_flow_vae_config(scaling_factor=1.5305, shift_factor=0.0609)
    else:
        # stabilityai/stable-diffusion-3-medium-diffusers: transformer/ (24 MMDiT blocks of 24 heads × 64 on 2×2
        # patches of 128×128×16 latents, learned positions cropped from a 192×192 table), text_encoder/ (CLIP
        # ViT-L/14's text tower with its projection), text_encoder_2/ (OpenCLIP ViT-bigG/14's, as SDXL's),
        # text_encoder_3/ (T5-XXL's encoder), vae/ (16 channels, scaling 1.5305, shift 0.0609).
        text_encoder = stable_diffusion_configs("sd-1.4")["text_encoder"]
        text_encoder_2 = stable_diffusion_xl_configs("sdxl-base-1.0")["text_encoder_2"]
        text_encoder_3 = _t5_xxl_config()
        transformer = {
            "sample_size": 128,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "caption_projection_dim": 1536,  # the inner width, heads × head dim
            "pos_embed_max_size": 192,
        }
        vae = _flow_vae_config(scaling_factor=1.5305, shift_factor=0.0609)
    transformer["joint_attention_dim"] = text_encoder_3["d_model"]
    transformer["pooled_projection_dim"] = text_encoder["projection_dim"] + text_encoder_2["projection_dim"]
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3,
        "scheduler": dict(SD3_SCHEDULER_CONFIG),
    }


def stable_diffusion_3_pipeline(
    size: str = "tiny",
    seed: int = 0,
    *,
    overrides: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> StableDiffusion3Pipeline:
    """A random-weight ``StableDiffusion3Pipeline`` of `size` ("tiny" or "sd3-medium").

    Example:
        >>> pipe = stable_diffusion_3_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = _configs_for(stable_diffusion_3_configs(size), overrides)
    torch.manual_seed(seed)
    with _weights_on(device):
        transformer = SD3Transformer2DModel(**configs["transformer"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
        text_encoder_3 = T5EncoderModel(T5Config(**configs["text_encoder_3"]))
    max_length = configs["text_encoder"]["max_position_embeddings"]
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(max_length),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=clip_tokenizer(max_length, pad_token="!"),
        text_encoder_3=text_encoder_3.eval(),
        tokenizer_3=t5_tokenizer(),
    )


def flux_configs(size: str = "tiny") -> dict[str, dict]:
    """Keyword arguments of each component of a Flux layout: ``transformer`` (``FluxTransformer2DModel``), ``vae``
    (``AutoencoderKL``), ``text_encoder`` (``CLIPTextConfig``: its pooled output is the pooled embedding),
    ``text_encoder_2`` (``T5Config``) and ``scheduler`` (``FlowMatchEulerDiscreteScheduler``). The transformer takes
    2×2 patches of the latents (4 × the latent channels), T5's width and CLIP's; its rotary axes add up to the head
    dimension."""
    _check_size(size, FLUX_SIZES, "Flux")
    if size == "tiny":
        vocab = _clip_vocab()
        token_ids = {
            "bos_token_id": vocab[BOS_TOKEN],
            "eos_token_id": vocab[EOS_TOKEN],
            "pad_token_id": vocab[EOS_TOKEN],
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
        text_encoder_2 = _tiny_t5_config(d_model=48)
        # black-forest-labs/FLUX.1-dev vae/: scaling 0.3611, shift 0.1159.
        vae = _tiny_flow_vae_config(scaling_factor=0.3611, shift_factor=0.1159)
        transformer = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                       "axes_dims_rope": (4, 4, 8)}  # fmt: skip
    else:
        # black-forest-labs/FLUX.1-dev: transformer/ (19 double-stream and 38 single-stream blocks of 24 heads × 128,
        # rotary axes 16 + 56 + 56), text_encoder/ (CLIP ViT-L/14's text tower), text_encoder_2/ (T5-XXL's
        # encoder), vae/ (16 channels at 1024 px, scaling 0.3611, shift 0.1159).
        text_encoder = stable_diffusion_configs("sd-1.4")["text_encoder"]
        text_encoder_2 = _t5_xxl_config()
        vae = _flow_vae_config(scaling_factor=0.3611, shift_factor=0.1159)
        transformer = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                       "num_attention_heads": 24, "axes_dims_rope": (16, 56, 56)}  # fmt: skip
    transformer = {
        "patch_size": 1,
        "in_channels": 4 * vae["latent_channels"],  # 2×2 patches of the latents, packed by the pipeline
        **transformer,
        "joint_attention_dim": text_encoder_2["d_model"],
        "pooled_projection_dim": text_encoder["hidden_size"],
        "guidance_embeds": True,  # FLUX.1-dev's guidance distillation
    }
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "scheduler": dict(FLUX_SCHEDULER_CONFIG),
    }


def flux_pipeline(
    size: str = "tiny",
    seed: int = 0,
    *,
    overrides: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> FluxPipeline:
    """A random-weight ``FluxPipeline`` of `size` ("tiny" or "flux-dev"). It records no resolution: sample at the
    VAE's size.

    Example:
        >>> pipe = flux_pipeline("tiny", seed=0)
        >>> pipe("a photo of a cat", height=16, width=16, num_inference_steps=2, output_type="np").images.shape
        (1, 16, 16, 3)
    """
    configs = _configs_for(flux_configs(size), overrides)
    torch.manual_seed(seed)
    with _weights_on(device):
        transformer = FluxTransformer2DModel(**configs["transformer"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = T5EncoderModel(T5Config(**configs["text_encoder_2"]))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(configs["text_encoder"]["max_position_embeddings"]),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer.eval(),
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


def dit_pipeline(
    size: str = "tiny",
    seed: int = 0,
    *,
    overrides: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> DiTPipeline:
    """A random-weight ``DiTPipeline`` of `size` ("tiny" or "dit-xl-2-256"); classes are named "class <id>"."""
    configs = _configs_for(dit_configs(size), overrides)
    torch.manual_seed(seed)
    with _weights_on(device):
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
    down-sampling factor (1 for pixel-space pipelines); for Flux, whose transformer has no sample size, the VAE's
    sample size (what the Flux family works at)."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    if denoiser is None:
        raise ValueError(f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`.")
    if isinstance(denoiser, FluxTransformer2DModel):
        return pipeline.vae.config.sample_size
    sample_size = denoiser.config.sample_size
    if not isinstance(sample_size, int):
        height, width = sample_size
        if height != width:
            raise ValueError(f"The denoiser's sample size {tuple(sample_size)} is not square.")
        sample_size = height
    vae = getattr(pipeline, "vae", None)
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return sample_size * factor
