"""The digits world's flow-matching text-to-image model, ``digits-sd3``: it loads offline as a standard
StableDiffusion3Pipeline of the SD3 family, samples 8×8 digits, is judged like the digits SD, and an erasure of one of
its digits exports a folder that plain diffusers loads."""

import json

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from sfr_diffusion import DataArguments, TrainingArguments, erase, load_pipeline
from sfr_diffusion.digits import ASSETS_DIR, is_digits_world
from sfr_diffusion.digits.models import digits_sd3_pipeline
from sfr_diffusion.families import StableDiffusion3Family, family_for
from sfr_diffusion.presets import bundled_aliases, preset_for


def sd3():
    pipe = load_pipeline("digits-sd3")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_digits_sd3_loads_offline_as_the_flow_matching_family():
    assert "digits-sd3" in bundled_aliases()
    pipe = sd3()
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    family = family_for(pipe)
    assert isinstance(family, StableDiffusion3Family)
    assert family.sample_shape == (4, 4, 4) and family.image_shape == (1, 8, 8)
    # The pipeline decodes latents / scaling + shift: the shared VAE's latents are not shifted.
    assert pipe.vae.config.shift_factor == 0.0
    assert is_digits_world(pipe)
    preset = preset_for(pipe)
    assert preset is not None and preset.anchor == "a blank image"


def test_digits_sd3_samples_digits():
    pipe = sd3()
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        ["the digit three", "a blank image"],
        guidance_scale=2.0,
        num_inference_steps=2,
        output_type="pt",
        generator=generator,
    ).images
    assert images.shape == (2, 1, 8, 8)
    assert torch.isfinite(images).all()


def settings(config) -> dict:
    """A model config without its bookkeeping entries, tuples as the saved JSON's lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_digits_sd3_recipe_matches_the_shipped_layout():
    """The build's recipe and the shipped folder agree on every config (the shipped encoders are the recipe's)."""
    from diffusers import AutoencoderKL

    shipped = sd3()
    recipe = digits_sd3_pipeline(AutoencoderKL.from_pretrained(ASSETS_DIR / "dit" / "vae"))
    for name in ("transformer", "vae"):
        assert settings(getattr(shipped, name).config) == settings(getattr(recipe, name).config), name
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        shipped_config, recipe_config = getattr(shipped, name).config, getattr(recipe, name).config
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings", "d_model"):
            assert getattr(shipped_config, key, None) == getattr(recipe_config, key, None), (name, key)
    assert shipped.tokenizer.model_max_length == recipe.tokenizer.model_max_length


def test_build_report_records_the_judged_sd3():
    report = json.loads((ASSETS_DIR / "build_report.json").read_text())
    assert report["sd3"]["steps"] > 0
    assert report["sd3_samples"]["train"]["accuracy"] >= 0.95
    assert "held_out" in report["sd3_samples"]


def test_erasing_a_digit_from_digits_sd3_exports_a_plain_sd3_folder(tmp_path, fresh_accelerate_state):
    pipe = sd3()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    encoder = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    result = erase(
        pipe,
        "three",
        data=DataArguments(images_per_prompt=1, generation_inference_steps=2),
        training=TrainingArguments(max_train_steps=2, forget_batch_size=4, remain_batch_size=4),
        evaluate=False,
    )
    assert result.steps == 2
    assert result.config["erased"]["anchor_concept"] == "a blank image"
    after = pipe.transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(encoder[k], v) for k, v in pipe.text_encoder.state_dict().items())  # frozen
    result.save_pretrained(tmp_path / "erased")
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path / "erased")
    assert isinstance(family_for(loaded), StableDiffusion3Family)
    for key, value in loaded.transformer.state_dict().items():
        assert torch.equal(value, after[key]), key
