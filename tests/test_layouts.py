"""Random-weight pipelines in real layouts: they are standard diffusers pipelines, seeded, and of the right size."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from sfr_diffusion.families import StableDiffusionFamily, family_for
from sfr_diffusion.testing.layouts import (
    clip_tokenizer,
    dit_configs,
    dit_pipeline,
    flux_configs,
    flux_pipeline,
    image_size,
    stable_diffusion_3_configs,
    stable_diffusion_3_pipeline,
    stable_diffusion_configs,
    stable_diffusion_pipeline,
    stable_diffusion_xl_pipeline,
)

PROMPTS = ["a photo of a cat", "An oil painting of flowers, très jolie! 42 (ok?)", ""]


def sample(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline(PROMPTS[:2], num_inference_steps=2, generator=generator, output_type="np").images


def test_tiny_stable_diffusion_saves_and_reloads_with_plain_diffusers(tmp_path):
    pipeline = stable_diffusion_pipeline("tiny", seed=0)
    before = sample(pipeline)
    pipeline.save_pretrained(tmp_path)
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded.tokenizer) is CLIPTokenizer and reloaded.safety_checker is None
    after = sample(reloaded)
    assert before.shape == (2, 16, 16, 3) and np.isfinite(before).all()
    np.testing.assert_array_equal(before, after)


def test_same_seed_same_weights():
    weights = [stable_diffusion_pipeline("tiny", seed=seed).unet.conv_in.weight for seed in (0, 0, 1)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_clip_tokenizer_round_trips(tmp_path):
    tokenizer = clip_tokenizer()
    encoded = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    ids = encoded.input_ids
    assert all(len(row) == 77 for row in ids)
    assert all(row[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in row for row in ids)
    assert tokenizer.unk_token_id not in tokenizer(PROMPTS[1]).input_ids[1:-1]  # every byte is a token
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "a photo of a cat"
    tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer) and reloaded.model_max_length == 77
    assert reloaded(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids == ids
    assert len(clip_tokenizer(model_max_length=16)(PROMPTS[1], truncation=True).input_ids) == 16


def test_family_and_image_size():
    sd = stable_diffusion_pipeline("tiny")
    family = family_for(sd)
    assert isinstance(family, StableDiffusionFamily) and family.image_shape == (3, 16, 16) and image_size(sd) == 16
    dit = dit_pipeline("tiny")
    assert family_for(dit).name == "dit" and image_size(dit) == 8 and dit.labels["class 0"] == 0


@pytest.mark.parametrize(
    "builder",
    [
        stable_diffusion_pipeline,
        dit_pipeline,
        stable_diffusion_3_pipeline,
        flux_pipeline,
        stable_diffusion_configs,
        dit_configs,
        stable_diffusion_3_configs,
        flux_configs,
    ],
)
def test_unknown_size_is_an_error_listing_the_valid_ones(builder):
    with pytest.raises(ValueError, match=r"Unknown .* size 'sd-2\.1'; valid sizes are \['tiny', "):
        builder("sd-2.1")


def test_sd_1_4_layout_has_the_real_parameter_counts():
    """On the meta device nothing is allocated: the counts of CompVis/stable-diffusion-v1-4's components."""
    configs = stable_diffusion_configs("sd-1.4")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    count = {name: sum(p.numel() for p in module.parameters()) for name, module in
             [("unet", unet), ("vae", vae), ("text_encoder", text_encoder)]}  # fmt: skip
    assert count == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert configs["scheduler"]["beta_schedule"] == "scaled_linear" and configs["scheduler"]["steps_offset"] == 1
    assert len(clip_tokenizer()) <= configs["text_encoder"]["vocab_size"]


def parameter_counts(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def test_sd3_medium_layout_has_the_real_parameter_counts():
    """stabilityai/stable-diffusion-3-medium-diffusers: the 2.03B MMDiT, CLIP-L and CLIP-G with their projections,
    T5-XXL's 4.76B encoder and the 16-channel VAE, counted on the meta device (nothing is allocated)."""
    configs = stable_diffusion_3_configs("sd3-medium")
    with torch.device("meta"):
        modules = {
            "transformer": SD3Transformer2DModel(**configs["transformer"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
            "text_encoder_3": T5EncoderModel(T5Config(**configs["text_encoder_3"])),
        }
    assert parameter_counts(modules) == {"transformer": 2_028_328_000, "vae": 83_819_683,
                                         "text_encoder": 123_650_304, "text_encoder_2": 694_659_840,
                                         "text_encoder_3": 4_762_310_656}  # fmt: skip
    transformer = configs["transformer"]
    assert transformer["joint_attention_dim"] == 4096 and transformer["pooled_projection_dim"] == 768 + 1280
    assert configs["vae"]["latent_channels"] == 16 and configs["scheduler"]["shift"] == 3.0
    assert (configs["vae"]["scaling_factor"], configs["vae"]["shift_factor"]) == (1.5305, 0.0609)


def test_flux_dev_layout_has_the_real_parameter_counts():
    """black-forest-labs/FLUX.1-dev: the 11.9B transformer (19 double-stream and 38 single-stream blocks), CLIP-L,
    T5-XXL's encoder and the 16-channel VAE, counted on the meta device."""
    configs = flux_configs("flux-dev")
    with torch.device("meta"):
        modules = {
            "transformer": FluxTransformer2DModel(**configs["transformer"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            "text_encoder_2": T5EncoderModel(T5Config(**configs["text_encoder_2"])),
        }
    assert parameter_counts(modules) == {"transformer": 11_901_408_320, "vae": 83_819_683,
                                         "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656}  # fmt: skip
    transformer = configs["transformer"]
    assert transformer["in_channels"] == 64 and transformer["guidance_embeds"] is True
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"] == 128
    assert (configs["vae"]["scaling_factor"], configs["vae"]["shift_factor"]) == (0.3611, 0.1159)


@pytest.mark.parametrize(
    ("builder", "size", "shape"),
    [(stable_diffusion_3_pipeline, "sd3-medium", (16, 128, 128)), (flux_pipeline, "flux-dev", (16, 128, 128))],
)
def test_real_size_flow_matching_pipelines_build_on_the_meta_device_at_1024_px(builder, size, shape):
    """`device` creates the weights where asked: on the meta device, a 1024 px pipeline its family works at."""
    pipeline = builder(size, device="meta")
    weights = [p for c in pipeline.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()]
    assert {p.device.type for p in weights} == {"meta"}
    family = family_for(pipeline)
    assert family.image_shape == (3, 1024, 1024) and family.sample_shape == shape and image_size(pipeline) == 1024


def test_overrides_replace_config_entries_and_unknown_components_are_refused():
    shallow = flux_pipeline("flux-dev", overrides={"transformer": {"num_layers": 2, "num_single_layers": 4}},
                            device="meta")  # fmt: skip
    transformer = shallow.transformer
    assert len(transformer.transformer_blocks) == 2 and len(transformer.single_transformer_blocks) == 4
    assert transformer.config.attention_head_dim == 128  # the rest is FLUX.1-dev's
    tiny = stable_diffusion_xl_pipeline("tiny", overrides={"unet": {"sample_size": 4}})
    assert tiny.unet.config.sample_size == 4 and image_size(tiny) == 8
    with pytest.raises(ValueError, match=r"Unknown components \['unet'\] in overrides; this layout has \["):
        flux_pipeline("tiny", overrides={"unet": {"sample_size": 4}})
