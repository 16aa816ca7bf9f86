"""The SDXL family: prompts as conditions, the UNet's added conditioning as the pipeline gives it, the embedding
override in training and sampling, every method, the inversion attack and plain-diffusers exports."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sfr_diffusion import DataArguments, TrainingArguments, erase
from sfr_diffusion.attacks import AttackArguments, attack
from sfr_diffusion.families import StableDiffusionXLFamily, family_for
from sfr_diffusion.testing.layouts import (
    image_size,
    stable_diffusion_xl_configs,
    stable_diffusion_xl_pipeline,
)

ROOT = Path(__file__).resolve().parent.parent
CAT, DOG = "a photo of a cat", "a photo of a dog"


@pytest.fixture
def sdxl_pipeline():
    pipe = stable_diffusion_xl_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipeline, prompt=CAT, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    kwargs = {"guidance_scale": 3.0, **kwargs}
    return pipeline(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images


def weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(before: dict, module) -> bool:
    after = module.state_dict()
    return all(torch.equal(v, after[k]) for k, v in before.items())


def test_the_family_is_picked_prompts_are_conditions_and_the_null_is_the_unconditional_branch(sdxl_pipeline):
    family = family_for(sdxl_pipeline)
    assert isinstance(family, StableDiffusionXLFamily) and family.name == "sdxl" and family.text_conditioned
    assert family.null_class_id == 0 and family.prompts == [""]
    cat = family.prompt_id(CAT)
    assert family.prompt_id(CAT) == cat == 1 and family.resolve_class(" a dog ") == 2 and family.num_classes() == 3
    assert family.frozen_parts() == [sdxl_pipeline.vae, sdxl_pipeline.text_encoder, sdxl_pipeline.text_encoder_2]
    assert family.image_shape == (3, 16, 16) and image_size(sdxl_pipeline) == 16
    # A prompt is what encode_prompt gives; the null condition what guidance gives the unconditional branch (zeros,
    # as SDXL sets force_zeros_for_empty_prompt).
    states, null_states, pooled, null_pooled = sdxl_pipeline.encode_prompt([CAT], device="cpu")
    ids = torch.tensor([cat, 0])
    # (Close rather than equal: the family encodes the prompts of a batch together, in another batch than here.)
    torch.testing.assert_close(family.prompt_embeddings(ids), torch.cat([states, null_states]).detach())
    torch.testing.assert_close(family.pooled_embeddings(ids), torch.cat([pooled, null_pooled]).detach())
    assert not null_states.any() and family.condition_embedding(cat).shape == (77, 32 + 48)  # both encoders' widths
    # Without force_zeros_for_empty_prompt, the unconditional branch is the encoded empty prompt.
    sdxl_pipeline.register_to_config(force_zeros_for_empty_prompt=False)
    empty_states, _, empty_pooled, _ = sdxl_pipeline.encode_prompt(
        [""], device="cpu", do_classifier_free_guidance=False
    )
    unzeroed = family_for(sdxl_pipeline)
    assert torch.equal(unzeroed.prompt_embeddings(torch.tensor([0])), empty_states) and empty_states.any()
    assert torch.equal(unzeroed.pooled_embeddings(torch.tensor([0])), empty_pooled)


def test_predict_gives_the_unet_what_the_pipeline_gives_it_when_sampling(sdxl_pipeline):
    """One guided denoising step of the pipeline (unconditional and conditional rows), through the family."""
    family = family_for(sdxl_pipeline)
    calls = []

    def record(module, args, kwargs, output):
        calls.append((args, kwargs, output[0]))

    handle = sdxl_pipeline.unet.register_forward_hook(record, with_kwargs=True)
    sample(sdxl_pipeline, CAT, guidance_scale=3.0)
    handle.remove()
    (x_t, t), kwargs, output = calls[0]
    expected_ids = sdxl_pipeline._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32, 24)
    assert torch.equal(family.time_ids, expected_ids) and expected_ids.tolist() == [[16, 16, 0, 0, 16, 16]]
    labels = torch.tensor([0, family.prompt_id(CAT)])  # the pipeline's batch: [unconditional, conditional]
    family.prompt_embeddings(labels[1:])  # encoded alone, as the pipeline encoded it: the same numbers to the bit
    added = kwargs["added_cond_kwargs"]
    assert torch.equal(added["time_ids"], family.time_ids.expand(2, -1))
    assert torch.equal(added["text_embeds"], family.pooled_embeddings(labels))
    assert torch.equal(kwargs["encoder_hidden_states"], family.prompt_embeddings(labels))
    with torch.no_grad():
        predicted = family.predict(sdxl_pipeline.unet, x_t, t.expand(2), labels)
    torch.testing.assert_close(predicted, output, rtol=0, atol=1e-6)


def test_preparing_for_training_keeps_an_upcast_vae_in_fp32_under_fp16_and_restores_everything(sdxl_pipeline):
    family = family_for(sdxl_pipeline)
    encoders = (sdxl_pipeline.text_encoder, sdxl_pipeline.text_encoder_2)
    assert sdxl_pipeline.vae.config.force_upcast
    with family.prepared_for_training(torch.float16):
        assert {p.dtype for p in sdxl_pipeline.vae.parameters()} == {torch.float32}  # it overflows in fp16
        assert all({p.dtype for p in e.parameters()} == {torch.float16} for e in encoders)
        assert {p.dtype for p in sdxl_pipeline.unet.parameters()} == {torch.float32}
    with family.prepared_for_training(torch.bfloat16):
        assert {p.dtype for p in sdxl_pipeline.vae.parameters()} == {torch.bfloat16}
        assert family.pooled_embeddings(torch.tensor([family.prompt_id(CAT)])).dtype == torch.float32
    for module in (sdxl_pipeline.vae, *encoders, sdxl_pipeline.unet):
        assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_an_override_replaces_the_hidden_states_in_training_and_sampling_and_keeps_the_pooled(sdxl_pipeline):
    family = family_for(sdxl_pipeline)
    cat, dog = family.prompt_id(CAT), family.prompt_id(DOG)
    fresh = family.prompt_id("a cat, never encoded before")
    dog_states, cat_pooled = family.condition_embedding(dog), family.pooled_embeddings(torch.tensor([cat]))
    x_t, t = torch.randn(1, *family.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with family.condition_embedding_override([cat, fresh], dog_states):
        with torch.no_grad():
            overridden = family.predict(family.denoiser, x_t, t, torch.tensor([cat]))
            family.predict(family.denoiser, x_t, t, torch.tensor([fresh]))  # a prompt not encoded before the block
        drawn = sample(sdxl_pipeline, CAT)
        drawn_fresh = sample(sdxl_pipeline, "a cat, never encoded before")
    added = {"text_embeds": cat_pooled, "time_ids": family.time_ids}
    with torch.no_grad():
        direct = family.denoiser(x_t, t, encoder_hidden_states=dog_states[None], added_cond_kwargs=added).sample
    torch.testing.assert_close(overridden, direct, rtol=0, atol=1e-6)
    # In sampling each text encoder's slice is replaced (each found with its own tokenizer), the pooled one kept.
    expected = sample(sdxl_pipeline, None, prompt_embeds=dog_states[None], pooled_prompt_embeds=cat_pooled)
    np.testing.assert_allclose(drawn, expected, atol=1e-5)
    assert np.abs(drawn - sample(sdxl_pipeline, CAT)).max() > 1e-3
    fresh_pooled = family.pooled_embeddings(torch.tensor([fresh]))
    expected = sample(sdxl_pipeline, None, prompt_embeds=dog_states[None], pooled_prompt_embeds=fresh_pooled)
    np.testing.assert_allclose(drawn_fresh, expected, atol=1e-5)
    # A prompt first encoded while overridden is cached as the model encodes it, not as the override.
    states = sdxl_pipeline.encode_prompt(
        ["a cat, never encoded before"], device="cpu", do_classifier_free_guidance=False
    )[0]
    assert torch.equal(family.prompt_embeddings(torch.tensor([fresh])), states)
    assert family.reset_condition_embedding(cat) is False


def test_the_inversion_attack_runs_and_its_embedding_changes_the_sampled_images(sdxl_pipeline):
    unet = weights(sdxl_pipeline.unet)
    before = sample(sdxl_pipeline, "a cat")
    drawn = {}

    def evaluate(pipeline, seed):
        drawn[len(drawn)] = sample(pipeline, "a cat")
        return {"FA": 0.0, "RA": 1.0}

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    arguments = AttackArguments(attack_images=4, attack_batch_size=4, inversion_steps=3, attack_evaluations=1,
                                inversion_learning_rate=0.5)  # fmt: skip
    record = attack(sdxl_pipeline, "a cat", "inversion", arguments=arguments, images=images, evaluate=evaluate)
    assert record["family"] == "sdxl" and record["conditions"] == ["a cat"] and record["curve"][-1]["loss"] > 0
    assert np.array_equal(drawn[0], before)  # step 0: the prompt's own embedding
    assert np.abs(drawn[1] - before).max() > 1e-3  # the inverted embedding reaches the pipeline's sampling
    assert same(unet, sdxl_pipeline.unet) and np.array_equal(sample(sdxl_pipeline, "a cat"), before)


@pytest.mark.parametrize("method", ["sfr_on", "ft", "ga", "rl", "salun", "esd"])
def test_every_method_erases_on_sdxl(method, sdxl_pipeline, fresh_accelerate_state, tmp_path_factory, monkeypatch):
    # One cache for every method: the same tiny model generates the same images once.
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "sdxl-cache"))
    frozen = {name: weights(getattr(sdxl_pipeline, name)) for name in ("vae", "text_encoder", "text_encoder_2")}
    unet = weights(sdxl_pipeline.unet)
    data = DataArguments(forget_prompts=["a cat", CAT], remain_prompts=[DOG, "a red car"], images_per_prompt=2,
                         generation_inference_steps=2)  # fmt: skip
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2)
    result = erase(sdxl_pipeline, "a cat", method=method, data=data, training=training, evaluate=False)
    assert result.steps == 2 and result.config["family"] == "sdxl" and result.method == method
    assert all(same(state, getattr(sdxl_pipeline, name)) for name, state in frozen.items())
    assert not same(unet, sdxl_pipeline.unet)
    assert all(torch.isfinite(p).all() for p in sdxl_pipeline.unet.parameters())


def run_script(tmp_path, *options):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "SFR_DIFFUSION_CACHE": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
               str(ROOT / "scripts" / "erase_concept.py"), *map(str, options)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_script_erases_a_concept_from_sdxl_and_exports_plain_diffusers(sdxl_pipeline, tmp_path):
    """An SDXL folder in, a StableDiffusionXLPipeline folder out, loadable without us."""
    base, out = tmp_path / "sdxl-base", tmp_path / "sdxl-no-cat"
    sdxl_pipeline.save_pretrained(base)
    (tmp_path / "remain.txt").write_text("a photo of a dog\na red car\n")
    run_script(tmp_path, "--pretrained_model_name_or_path", base, "--concept", "a cat", "--anchor_concept", "a dog",
               "--remain_prompts", tmp_path / "remain.txt", "--images_per_prompt", "1",
               "--generation_inference_steps", "2", "--max_train_steps", "2", "--forget_batch_size", "2",
               "--remain_batch_size", "2", "--mask_batches", "1",
               "--trainable", "cross_attention", "--output_dir", out)  # fmt: skip
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["family"] == "sdxl" and config["method_config"]["forget_loss"] == "remap"
    assert config["erased"]["concept"] == "a cat" and config["erased"]["anchor_concept"] == "a dog"
    assert (out / "saliency_mask.safetensors").exists() and not (out / "pipeline.py").exists()
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"

    base_pipe = StableDiffusionXLPipeline.from_pretrained(base)
    erased_pipe = StableDiffusionXLPipeline.from_pretrained(out)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert same(weights(getattr(base_pipe, name)), getattr(erased_pipe, name)), name
    erased_unet = erased_pipe.unet.state_dict()
    changed = [k for k, v in base_pipe.unet.state_dict().items() if not torch.equal(v, erased_unet[k])]
    assert changed and all(".attn2." in k for k in changed)  # --trainable cross_attention

    erased_pipe.set_progress_bar_config(disable=True)
    expected = sample(erased_pipe, ["a cat"])
    assert np.abs(expected - sample(sdxl_pipeline, ["a cat"])).max() > 0
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        sys.modules["sfr_diffusion"] = None  # plain diffusers only
        torch.set_num_threads(1)
        from diffusers import StableDiffusionXLPipeline
        pipe = StableDiffusionXLPipeline.from_pretrained({str(out)!r})
        pipe.set_progress_bar_config(disable=True)
        images = pipe(["a cat"], num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        np.save({str(tmp_path / "fresh.npy")!r}, images)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), expected)


def test_an_sdxl_unet_without_the_second_text_encoder_is_refused(sdxl_pipeline):
    sdxl_pipeline.text_encoder_2 = None
    with pytest.raises(ValueError, match="text_encoder_2"):
        family_for(sdxl_pipeline)


def test_sdxl_base_layout_has_the_real_parameter_counts():
    """On the meta device nothing is allocated: the counts of stabilityai/stable-diffusion-xl-base-1.0's components."""
    configs = stable_diffusion_xl_configs("sdxl-base-1.0")
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        }
    count = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert count == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                     "text_encoder_2": 694_659_840}  # fmt: skip
    assert configs["unet"]["cross_attention_dim"] == 2048
    assert configs["unet"]["projection_class_embeddings_input_dim"] == 2816
