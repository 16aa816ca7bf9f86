"""LoRA erasure: adapters start as the original model, only they train, θ₀ is the model with them off (no copy), the
forget step moves only the adapters of salient modules, resume restores them, and the exports (LoRA file for
``load_lora_weights``, or fused into a full pipeline) give the erased model's images exactly."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sfr_diffusion import DataArguments, SFROnConfig, TrainingArguments, erase, load_pipeline
from sfr_diffusion.adapters import (
    LORA_WEIGHTS_FILE,
    WithoutAdapters,
    adapter_layers,
    adapter_mask,
    add_adapters,
    is_adapter_weight,
    target_module_names,
)
from sfr_diffusion.digits.models import digits_ddpm_pipeline
from sfr_diffusion.families import family_for
from sfr_diffusion.methods import SFROn
from sfr_diffusion.methods.sfr_on import LORA_MASK_GROUPS
from sfr_diffusion.original import make_original
from sfr_diffusion.presets import learning_rate_for, preset_for
from sfr_diffusion.testing.layouts import stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(max_train_steps=3, forget_batch_size=4, remain_batch_size=4, lora_rank=2)
CAT, DOG = "a photo of a cat", "a photo of a dog"


def ddpm_output(model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([10, 200, 500, 900]), class_labels=torch.tensor([3, 4, 5, 10])).sample


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_adapters_start_as_the_original_model_and_the_view_without_them_owns_nothing(pipeline):
    unet = pipeline.unet
    before = ddpm_output(unet)
    modules = target_module_names(unet, ("to_q", "to_k", "to_v", "to_out.0"))
    add_adapters(unet, modules, rank=4, alpha=4, seed=0)
    assert sorted(adapter_layers(unet)) == sorted(modules)
    assert torch.equal(ddpm_output(unet), before)  # B = 0: the adapted model is the original
    original = make_original(family_for(pipeline)).module
    assert isinstance(original, WithoutAdapters) and list(original.parameters()) == []
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_B." in name:
                param.normal_()
    assert not torch.allclose(ddpm_output(unet), before)
    assert torch.equal(ddpm_output(original), before)  # θ₀: the adapters switched off, no copy of the weights
    assert all(not layer.disable_adapters for layer in adapter_layers(unet).values())  # switched back on


def test_the_adapter_mask_keeps_whole_adapters_of_modules_more_salient_than_the_average(pipeline):
    unet = pipeline.unet
    add_adapters(unet, ["mid_block.attentions.0.to_q", "mid_block.attentions.0.to_k"], rank=2, alpha=2, seed=0)
    params = dict(unet.named_parameters())
    q, k = (params[f"mid_block.attentions.0.{n}.base_layer.weight"] for n in ("to_q", "to_k"))
    base_mask = {
        "mid_block.attentions.0.to_q.base_layer.weight": torch.rand(q.shape) < 0.9,  # mostly salient
        "mid_block.attentions.0.to_k.base_layer.weight": torch.rand(k.shape) < 0.1,
    }
    mask = adapter_mask(unet, base_mask)
    assert set(mask) == {name for name in params if is_adapter_weight(name)}
    assert all(m.all() for name, m in mask.items() if ".to_q." in name)
    assert all(not m.any() for name, m in mask.items() if ".to_k." in name)


def test_lora_erasure_trains_only_adapters_and_the_forget_step_only_salient_ones(pipeline, fresh_accelerate_state):
    original = weights(pipeline.unet)
    original_output = ddpm_output(pipeline.unet)
    states = []

    def record(event):
        states.append((event.phase.name, weights(event.model)))

    result = erase(pipeline, "three", training=TrainingArguments(**TINY), evaluate=False, callbacks=[record])
    unet = pipeline.unet
    assert result.has_adapters and result.config["lora"]["rank"] == 2 and result.config["lora"]["fused"] is False
    family_rate = learning_rate_for(family_for(pipeline), preset_for(pipeline))
    assert result.config["training"]["learning_rate"] == pytest.approx(10 * family_rate)  # adapters start at zero
    after = weights(unet)
    for name, value in after.items():  # every base weight as it was, bit for bit
        if not is_adapter_weight(name):
            assert torch.equal(value, original[name.replace(".base_layer", "")]), name
    assert any(not torch.equal(v, states[0][1][k]) for k, v in after.items() if ".lora_B." in k)
    # The forget step moves salient adapters only; the mask has both kinds.
    mask = result.mask
    assert set(mask) == {n for n in after if is_adapter_weight(n)} and 0 < result.mask_statistics["density"] < 1
    previous = None
    for phase, state in states:
        if phase == "forget" and previous is not None:
            moved = {n for n in mask if not torch.equal(state[n], previous[n])}
            assert moved and all(bool(mask[n].all()) for n in moved), sorted(moved)[:3]
        previous = state
    # θ₀ after training is still exactly the original model.
    assert torch.equal(ddpm_output(make_original(family_for(pipeline)).module), original_output)


def test_lora_resume_matches_the_uninterrupted_run(tmp_path, fresh_accelerate_state):
    def run(checkpoints: Path, **extra):
        pipe = digits_ddpm_pipeline(seed=0)
        pipe.set_progress_bar_config(disable=True)
        training = TrainingArguments(**{**TINY, "max_train_steps": 4}, checkpoints_dir=str(checkpoints), **extra)
        erase(pipe, "three", training=training, evaluate=False)
        return {k: v for k, v in weights(pipe.unet).items() if is_adapter_weight(k)}

    whole = run(tmp_path / "whole", checkpointing_steps=2)
    saved = tmp_path / "whole" / "checkpoint-2" / "denoiser"
    assert (saved / "lora_weights.safetensors").is_file() and not (
        saved / "diffusion_pytorch_model.safetensors"
    ).exists()
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", interrupted / "checkpoint-2")
    for name in ("saliency_mask.safetensors", "sfr_diffusion_checkpoints.json"):
        shutil.copy(tmp_path / "whole" / name, interrupted)
    resumed = run(interrupted, resume_from_checkpoint="latest")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def sample(pipe, prompt=CAT) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, guidance_scale=3.0, generator=generator, output_type="np").images


@pytest.fixture
def tiny_sd():
    pipe = stable_diffusion_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD_DATA = dict(forget_prompts=["a cat", CAT], remain_prompts=[DOG, "a red car"], images_per_prompt=2,
               generation_inference_steps=2)  # fmt: skip


@pytest.mark.parametrize("method", ["sfr_on", "ft", "ga", "rl", "salun", "esd"])
def test_every_method_trains_only_adapters(method, tiny_sd, fresh_accelerate_state, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "lora-sd-cache"))
    original = weights(tiny_sd.unet)
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2, lora_rank=2)
    result = erase(tiny_sd, "a cat", method=method, data=DataArguments(**SD_DATA), training=training, evaluate=False)
    after = weights(tiny_sd.unet)
    assert result.has_adapters and result.config["lora"]["modules"] > 0
    assert all(torch.equal(v, original[k.replace(".base_layer", "")]) for k, v in after.items() if ".lora_" not in k)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if ".lora_B." in k)


def test_a_lora_export_loads_with_load_lora_weights_and_gives_the_erased_images(
    tiny_sd, fresh_accelerate_state, tmp_path, monkeypatch
):
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    tiny_sd.save_pretrained(base)
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2, lora_rank=4,
                                 lora_alpha=8)  # fmt: skip
    result = erase(tiny_sd, "a cat", data=DataArguments(**SD_DATA), training=training, evaluate=False,
                   method=SFROnConfig(remap_target=DOG, mask_batches=1), base_model=str(base))  # fmt: skip
    out = result.save_pretrained(tmp_path / "no-cat-lora")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", LORA_WEIGHTS_FILE, "saliency_mask.safetensors", "unlearning_config.json"]
    )
    assert "load_lora_weights" in (out / "README.md").read_text()
    expected = sample(tiny_sd)
    assert np.abs(expected - sample(stable_diffusion_pipeline("tiny", seed=0))).max() > 0
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        sys.modules["sfr_diffusion"] = None  # plain diffusers (and peft) only
        torch.set_num_threads(1)
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained({str(base)!r})
        pipe.load_lora_weights({str(out)!r})
        pipe.set_progress_bar_config(disable=True)
        images = pipe({CAT!r}, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        np.save({str(tmp_path / "fresh.npy")!r}, images)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), expected)
    # Our own loader takes the folder as a pipeline (the app, evaluate and attack load exports this way).
    reloaded = load_pipeline(out)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(reloaded), expected)
    from sfr_diffusion.app import PipelineCache

    in_app = PipelineCache(device="cpu").get(str(out)).pipeline
    in_app.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(in_app), expected)


def test_a_fused_export_is_a_full_pipeline_with_the_erased_images(fresh_accelerate_state, tmp_path):
    """DiTPipeline cannot load LoRA weights: its LoRA erasure exports fused, and an unfused export is refused."""
    pipe = load_pipeline("digits-dit")
    pipe.set_progress_bar_config(disable=True)
    result = erase(pipe, "three", training=TrainingArguments(**TINY), evaluate=False)
    with pytest.raises(ValueError, match="cannot load LoRA weights.*fuse_lora"):
        result.save_pretrained(tmp_path / "unfused")
    assert not (tmp_path / "unfused").exists()

    def draw(p):
        return p(class_labels=[3, 5], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images  # fmt: skip

    unfused = draw(pipe)
    out = result.save_pretrained(tmp_path / "fused", fuse_lora=True)
    assert not adapter_layers(pipe.transformer)
    fused = draw(pipe)
    np.testing.assert_allclose(fused, unfused, atol=1e-5)
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["lora"]["fused"] is True and not (out / "saliency_mask.safetensors").exists()
    assert "fused into the weights" in (out / "README.md").read_text()
    reloaded = load_pipeline(out)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(draw(reloaded), fused)


def launch(cwd, *options, accelerate: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "SFR_DIFFUSION_CACHE": str(cwd / "cache")}  # fmt: skip
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu"]  # fmt: skip
    command = [*(launcher if accelerate else [sys.executable]), str(ROOT / "scripts" / "erase_concept.py")]
    return subprocess.run([*command, *map(str, options)], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_command_refuses_an_unloadable_lora_export_before_any_work(tmp_path):
    result = launch(tmp_path, "--pretrained_model_name_or_path", "digits-dit", "--lora_rank", "4",
                    "--output_dir", tmp_path / "out", accelerate=False)  # fmt: skip
    assert result.returncode == 2 and "fuse_lora" in result.stderr and "Erasing" not in result.stderr
    result = launch(tmp_path, "--fuse_lora", "--output_dir", tmp_path / "out", accelerate=False)
    assert result.returncode == 2 and "--lora_rank" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_command_exports_a_lora_erasure_of_the_digits_sd(tmp_path):
    out = tmp_path / "sd-lora"
    result = launch(tmp_path, "--pretrained_model_name_or_path", "digits-sd", "--concept", "three",
                    "--lora_rank", "4", "--max_train_steps", "2", "--forget_batch_size", "4",
                    "--remain_batch_size", "4", "--mask_batches", "1", "--skip_eval", "--output_dir", out)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / LORA_WEIGHTS_FILE).is_file() and not (out / "unet").exists()
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["base_model"].startswith("digits-sd") and config["training"]["lora_rank"] == 4
    erased = load_pipeline(out)  # the bundled base with the adapters
    assert len(adapter_layers(erased.unet)) == config["lora"]["modules"]
    assert config["lora"]["trained_parameters"] < 0.1 * sum(p.numel() for p in erased.unet.parameters())


def test_the_fisher_of_adapted_base_weights_is_measured_in_groups_by_default(pipeline):
    """Full weights: one group (the Fisher pass is below the training steps' peak); LoRA: LORA_MASK_GROUPS, since the
    base weights it measures take no gradients or moments otherwise; an explicit mask_groups wins."""
    family = family_for(pipeline)
    assert SFROn(SFROnConfig(), family).mask_groups == 1
    unet = pipeline.unet
    add_adapters(unet, target_module_names(unet, ("to_q", "to_k", "to_v", "to_out.0")), rank=2, alpha=2, seed=0)
    assert SFROn(SFROnConfig(), family).mask_groups == LORA_MASK_GROUPS > 1
    assert SFROn(SFROnConfig(mask_groups=1), family).mask_groups == 1
