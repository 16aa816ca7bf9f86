"""The flow-matching families, SD3 and Flux, on tiny pipelines: prompts as conditions, the null condition, the flow
(noisy samples, velocity targets, timesteps drawn as diffusers' training examples draw them), the transformer given
what the pipeline gives it, the embedding override in training and sampling, every method, the inversion attack and
plain-diffusers exports."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling

from sfr_diffusion import DataArguments, SFROnConfig, TrainingArguments, erase
from sfr_diffusion.attacks import AttackArguments, attack
from sfr_diffusion.families import FluxFamily, NoiseDraw, StableDiffusion3Family, family_for
from sfr_diffusion.losses import per_sample_mse
from sfr_diffusion.methods.base import timestep_quartile_terms
from sfr_diffusion.testing.layouts import flux_pipeline, image_size, stable_diffusion_3_pipeline
from sfr_diffusion.text_data import generate_images

ROOT = Path(__file__).resolve().parent.parent
CAT, DOG = "a photo of a cat", "a photo of a dog"
FAMILIES = {
    "sd3": (stable_diffusion_3_pipeline, StableDiffusion3Family, StableDiffusion3Pipeline),
    "flux": (flux_pipeline, FluxFamily, FluxPipeline),
}
SIZE = {"flux": {"height": 16, "width": 16}}  # FluxPipeline records no resolution: the family's (the VAE's) size


@pytest.fixture(params=sorted(FAMILIES))
def kind(request):
    return request.param


@pytest.fixture
def pipe(kind):
    pipeline = FAMILIES[kind][0]("tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sample(pipeline, prompt=CAT, **kwargs) -> np.ndarray:
    """Two steps at 16 px; SD3 with classifier-free guidance (an unconditional row), Flux with its guidance value."""
    if isinstance(pipeline, FluxPipeline):
        kwargs = {**SIZE["flux"], **kwargs}
    else:
        kwargs = {"guidance_scale": 3.0, **kwargs}
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images


def weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(before: dict, module) -> bool:
    after = module.state_dict()
    return all(torch.equal(v, after[k]) for k, v in before.items())


@torch.no_grad()
def encoded(pipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, pooled) embeddings as the pipeline encodes `prompts` for sampling."""
    if isinstance(pipeline, StableDiffusion3Pipeline):
        states, _, pooled, _ = pipeline.encode_prompt(
            prompts, None, None, device="cpu", do_classifier_free_guidance=False
        )
        return states, pooled
    states, pooled, _ = pipeline.encode_prompt(prompts, None, device="cpu")
    return states, pooled


def call_transformer(pipeline, x_t, t, states, pooled) -> torch.Tensor:
    """The transformer on latents (b, C, h, w) at scheduler timesteps `t`, given these embeddings, as the pipelines
    call it (Flux: packed, with its ids and guidance, t / 1000)."""
    if isinstance(pipeline, StableDiffusion3Pipeline):
        return pipeline.transformer(
            hidden_states=x_t, timestep=t, encoder_hidden_states=states, pooled_projections=pooled
        ).sample
    batch, channels, height, width = x_t.shape
    output = pipeline.transformer(
        hidden_states=pipeline._pack_latents(x_t, batch, channels, height, width),
        timestep=t / 1000,
        guidance=torch.full((batch,), 3.5),
        pooled_projections=pooled,
        encoder_hidden_states=states,
        txt_ids=torch.zeros(states.shape[1], 3),
        img_ids=pipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32),
    ).sample
    return pipeline._unpack_latents(output, 16, 16, pipeline.vae_scale_factor)


def frozen_names(kind: str) -> tuple[str, ...]:
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")[: 3 if kind == "sd3" else 2]
    return ("vae", *encoders)


# ---------------------------------------------------------------------------------------------------------------------
# (a) The family, its conditions and its null condition


def test_the_family_is_picked_prompts_are_conditions_and_the_empty_prompt_is_null(kind, pipe):
    family = family_for(pipe)
    assert isinstance(family, FAMILIES[kind][1]) and family.name == kind and family.text_conditioned
    assert family.null_class_id == 0 and family.prompts == [""]
    cat = family.prompt_id(CAT)
    assert family.prompt_id(CAT) == cat == 1 and family.resolve_class(" a dog ") == 2 and family.num_classes() == 3
    assert family.frozen_parts() == [getattr(pipe, name) for name in frozen_names(kind)]
    assert family.denoiser is pipe.transformer and family.image_shape == (3, 16, 16) and image_size(pipe) == 16
    assert family.sample_shape == (4, 8, 8)  # the VAE's latents (Flux: unpacked)
    # A prompt is what encode_prompt gives; the null condition is the empty prompt encoded the same way, which is
    # SD3's negative prompt for guidance (and what Flux's true_cfg_scale would use).
    states, pooled = encoded(pipe, ["", CAT])  # one batch, in id order, as the family encodes them
    ids = torch.tensor([cat, 0])
    assert torch.equal(family.prompt_embeddings(ids), states[[1, 0]])
    assert torch.equal(family.pooled_embeddings(ids), pooled[[1, 0]])
    if kind == "sd3":
        _, negative, _, negative_pooled = pipe.encode_prompt([CAT], None, None, device="cpu")
        torch.testing.assert_close(family.prompt_embeddings(torch.tensor([0])), negative)
        torch.testing.assert_close(family.pooled_embeddings(torch.tensor([0])), negative_pooled)
        # 77 CLIP tokens (16 + 24 channels, zero-padded to T5's 48), then T5's 256 tokens; both pooled projections.
        embedding = family.condition_embedding(cat)
        assert embedding.shape == (77 + 256, 48) and family.pooled_embeddings(ids).shape == (2, 16 + 24)
        assert not embedding[:77, 40:].any() and embedding[:77, :40].any() and embedding[77:].any()
    else:
        # T5's 512 tokens, CLIP's pooled output; FLUX.1-dev's default guidance, at the VAE's size.
        assert family.condition_embedding(cat).shape == (512, 48) and family.pooled_embeddings(ids).shape == (2, 32)
        assert family.guidance_embeds and family.guidance_scale == 3.5
        assert family.sampling_kwargs() == {"height": 16, "width": 16} and family.generation_guidance(1.0) == 3.5


def test_the_training_schedule_is_the_pipeline_schedulers_untouched_by_sampling(kind, pipe):
    sample(pipe)  # sets the pipeline's scheduler to its 2 sampling steps
    family = family_for(pipe)
    timesteps, sigmas = family.noise_scheduler.timesteps, family.noise_scheduler.sigmas
    assert family.num_timesteps == 1000 and len(timesteps) == 1000 and timesteps[0] == 1000
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    if kind == "sd3":  # SD3's shift 3 applies in training too
        torch.testing.assert_close(sigmas, 3 * unshifted / (1 + 2 * unshifted))
    else:  # Flux's dynamic shift applies when sampling only
        torch.testing.assert_close(sigmas, unshifted)
    torch.testing.assert_close(timesteps, sigmas * 1000)
    torch.testing.assert_close(family.sigmas(timesteps), sigmas)


# ---------------------------------------------------------------------------------------------------------------------
# (b) The flow, and the transformer's inputs


def test_flow_matching_noises_toward_the_noise_and_targets_the_velocity(kind, pipe):
    family = family_for(pipe)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, *family.sample_shape, generator=generator), torch.randn(4, *family.sample_shape)
    draw = NoiseDraw(noise=noise, timesteps=torch.tensor([0.0, 1000.0, 500.0, 250.0]))
    x_t = family.noisy(x0, draw)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])  # σ = 0: the data; σ = 1: the noise
    torch.testing.assert_close(x_t[2], (x0[2] + noise[2]) / 2)
    torch.testing.assert_close(x_t[3], 0.75 * x0[3] + 0.25 * noise[3])
    assert torch.equal(family.target(x0, noise, draw.timesteps), noise - x0)
    # The loss is the plain MSE between the prediction at x_σ and the velocity ε − x₀.
    labels = torch.tensor([0, family.prompt_id(CAT), 0, family.prompt_id(CAT)])
    with torch.no_grad():
        loss = family.diffusion_loss(family.denoiser, x0, labels, draw)
        prediction = family.predict(family.denoiser, x_t, draw.timesteps, labels)
    torch.testing.assert_close(loss, per_sample_mse(prediction, noise - x0))
    assert prediction.shape == x0.shape


def test_timesteps_are_drawn_as_diffusers_training_examples_draw_them_reproducibly(kind, pipe):
    family = family_for(pipe)
    first, again = (family.draw_noise(64, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first.noise, again.noise) and torch.equal(first.timesteps, again.timesteps)
    # The same generator, in the same order: the noise, then u from the logit-normal density, then the timestep at
    # index ⌊u·N⌋ of the training schedule.
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn((64, *family.sample_shape), generator=generator)
    u = compute_density_for_timestep_sampling("logit_normal", 64, logit_mean=0.0, logit_std=1.0, generator=generator)
    assert torch.equal(first.noise, noise)
    assert torch.equal(first.timesteps, family.noise_scheduler.timesteps[(u * 1000).long()])
    assert first.timesteps.dtype == torch.float32 and first.timesteps.unique().numel() > 32
    # Uniform ("none", diffusers' Flux example's default) on request; an unknown density is refused.
    family.timestep_density = "none"
    generator = torch.Generator().manual_seed(3)
    torch.randn((64, *family.sample_shape), generator=generator)
    uniform = family.noise_scheduler.timesteps[(torch.rand(64, generator=generator) * 1000).long()]
    assert torch.equal(family.draw_noise(64, torch.Generator().manual_seed(3)).timesteps, uniform)

    class LossWeighted(FAMILIES[kind][1]):
        timestep_density = "cosmap"  # a loss weighting of uniform draws, which the families do not apply

    with pytest.raises(ValueError, match="logit_normal"):
        LossWeighted(pipe)
    # Methods log their terms per timestep quartile: quarters of σ, the last the noisiest.
    terms = timestep_quartile_terms("x", torch.arange(4.0), torch.tensor([10.0, 300.0, 600.0, 1000.0]), 1000)
    assert [float(terms[f"x_q{q}"]) for q in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 3.0]


def test_predict_gives_the_transformer_what_the_pipeline_gives_it_when_sampling(kind, pipe):
    """The first denoising step of the pipeline (SD3: its unconditional and conditional rows), through the family."""
    family = family_for(pipe)
    calls = []

    def record(module, args, kwargs, output):
        calls.append((kwargs, output[0]))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    sample(pipe, CAT)
    from_pipeline, output = calls[0]
    calls.clear()
    t = pipe.scheduler.timesteps[0]  # the first of the two sampling steps
    if kind == "sd3":
        labels = torch.tensor([0, family.prompt_id(CAT)])  # the pipeline's batch: [unconditional, conditional]
        x_t = from_pipeline["hidden_states"]
        assert torch.equal(from_pipeline["timestep"], t.expand(2))
    else:
        labels = torch.tensor([family.prompt_id(CAT)])  # no unconditional branch
        x_t = pipe._unpack_latents(from_pipeline["hidden_states"], 16, 16, pipe.vae_scale_factor)
        assert torch.equal(from_pipeline["timestep"], t.expand(1) / 1000)
        assert torch.equal(from_pipeline["guidance"], torch.tensor([3.5]))
    family.prompt_embeddings(labels[-1:])  # encoded alone, as the pipeline encoded it: the same numbers to the bit
    family.prompt_embeddings(labels[:1])
    with torch.no_grad():
        predicted = family.predict(pipe.transformer, x_t, t.expand(len(labels)), labels)
    handle.remove()
    (from_family, _), *_ = calls
    assert set(from_family) <= set(from_pipeline)
    for name, value in from_family.items():
        expected = from_pipeline[name]
        assert (value is None and expected is None) or torch.equal(value, expected), name
    if kind == "flux":
        assert set(from_family) >= {"hidden_states", "txt_ids", "img_ids", "guidance", "pooled_projections"}
        output = pipe._unpack_latents(output, 16, 16, pipe.vae_scale_factor)
    torch.testing.assert_close(predicted, output, rtol=0, atol=1e-6)


def test_preparing_for_training_keeps_t5s_fp32_modules_and_restores_everything(kind, pipe):
    family = family_for(pipe)
    t5 = pipe.text_encoder_3 if kind == "sd3" else pipe.text_encoder_2
    with family.prepared_for_training(torch.bfloat16):
        assert {p.dtype for p in pipe.vae.parameters()} == {torch.bfloat16}
        assert {p.dtype for n, p in t5.named_parameters() if ".wo." in n} == {torch.float32}  # T5 keeps `wo` fp32
        assert {p.dtype for n, p in t5.named_parameters() if ".wo." not in n} == {torch.bfloat16}
        assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
        assert family.pooled_embeddings(torch.tensor([family.prompt_id(CAT)])).dtype == torch.float32
    for name in (*frozen_names(kind), "transformer"):
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.float32}


# ---------------------------------------------------------------------------------------------------------------------
# (e) The embedding override and the inversion attack


def test_an_override_replaces_the_sequence_in_training_and_sampling_and_keeps_the_pooled(kind, pipe):
    family = family_for(pipe)
    cat, dog = family.prompt_id(CAT), family.prompt_id(DOG)
    fresh = family.prompt_id("a cat, never encoded before")
    dog_states, cat_pooled = family.condition_embedding(dog), family.pooled_embeddings(torch.tensor([cat]))
    # Far from the prompt's own (the tiny random Flux hardly tells a cat from a dog). SD3: the change to the CLIP
    # tokens' zero padding, which no text encoder outputs, is left out of training and sampling alike.
    override = dog_states + 1.0
    sampled_states = override.clone()
    if kind == "sd3":
        sampled_states[:77, 40:] = 0
    x_t = torch.randn(1, *family.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    with family.condition_embedding_override([cat, fresh], override):
        with torch.no_grad():
            overridden = family.predict(family.denoiser, x_t, t, torch.tensor([cat]))
            family.predict(family.denoiser, x_t, t, torch.tensor([fresh]))  # a prompt not encoded before the block
        drawn = sample(pipe, CAT)
        drawn_fresh = sample(pipe, "a cat, never encoded before")
    with torch.no_grad():
        direct = call_transformer(pipe, x_t, t, sampled_states[None], cat_pooled)
    torch.testing.assert_close(overridden, direct, rtol=0, atol=1e-6)
    # In sampling every text encoder's part is replaced (each found with its own tokenizer), the pooled one kept.
    expected = sample(pipe, None, prompt_embeds=sampled_states[None], pooled_prompt_embeds=cat_pooled)
    np.testing.assert_allclose(drawn, expected, atol=1e-5)
    assert np.abs(drawn - sample(pipe, CAT)).max() > 1e-3
    fresh_pooled = family.pooled_embeddings(torch.tensor([fresh]))
    expected = sample(pipe, None, prompt_embeds=sampled_states[None], pooled_prompt_embeds=fresh_pooled)
    np.testing.assert_allclose(drawn_fresh, expected, atol=1e-5)
    # A prompt first encoded while overridden is cached as the model encodes it, not as the override.
    # (Close rather than equal: the family encoded it in one batch with the cat prompt.)
    torch.testing.assert_close(
        family.prompt_embeddings(torch.tensor([fresh])), encoded(pipe, ["a cat, never encoded before"])[0]
    )
    assert family.reset_condition_embedding(cat) is False


def test_sd3_without_t5_is_given_zeros_for_the_t5_tokens_under_an_override_too():
    """SD3 may drop T5: encode_prompt then gives its tokens zeros, which no override can change in sampling."""
    pipe = stable_diffusion_3_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.text_encoder_3, pipe.tokenizer_3 = None, None
    family = family_for(pipe)
    assert family.text_encoders() == [pipe.text_encoder, pipe.text_encoder_2]
    cat = family.prompt_id(CAT)
    assert not family.condition_embedding(cat)[77:].any() and family.condition_embedding(cat)[:77, :40].any()
    override = family.condition_embedding(family.prompt_id(DOG)) + 1.0
    sampled_states = override.clone()
    sampled_states[:77, 40:], sampled_states[77:] = 0, 0  # CLIP's padding and T5's tokens: zeros in the pipeline
    x_t, t = torch.randn(1, *family.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0])
    pooled = family.pooled_embeddings(torch.tensor([cat]))
    with family.condition_embedding_override([cat], override):
        with torch.no_grad():
            overridden = family.predict(family.denoiser, x_t, t, torch.tensor([cat]))
        drawn = sample(pipe, CAT)
    with torch.no_grad():
        torch.testing.assert_close(overridden, call_transformer(pipe, x_t, t, sampled_states[None], pooled))
    expected = sample(pipe, None, prompt_embeds=sampled_states[None], pooled_prompt_embeds=pooled)
    np.testing.assert_allclose(drawn, expected, atol=1e-5)


def test_the_inversion_attack_runs_and_its_embedding_changes_the_sampled_images(kind, pipe):
    transformer = weights(pipe.transformer)
    before = sample(pipe, "a cat")
    drawn = {}

    def evaluate(pipeline, seed):
        drawn[len(drawn)] = sample(pipeline, "a cat")
        return {"FA": 0.0, "RA": 1.0}

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    arguments = AttackArguments(attack_images=4, attack_batch_size=4, inversion_steps=3, attack_evaluations=1,
                                inversion_learning_rate=0.5)  # fmt: skip
    record = attack(pipe, "a cat", "inversion", arguments=arguments, images=images, evaluate=evaluate)
    assert record["family"] == kind and record["conditions"] == ["a cat"] and record["curve"][-1]["loss"] > 0
    assert np.array_equal(drawn[0], before)  # step 0: the prompt's own embedding
    assert np.abs(drawn[1] - before).max() > 1e-3  # the inverted embedding reaches the pipeline's sampling
    assert same(transformer, pipe.transformer) and np.array_equal(sample(pipe, "a cat"), before)


# ---------------------------------------------------------------------------------------------------------------------
# (d) Every method


@pytest.mark.parametrize("method", ["sfr_on", "ft", "ga", "rl", "salun", "esd"])
def test_every_method_erases(method, kind, pipe, fresh_accelerate_state, tmp_path_factory, monkeypatch):
    # One cache per family: the same tiny model generates the same images once.
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / f"{kind}-cache"))
    frozen = {name: weights(getattr(pipe, name)) for name in frozen_names(kind)}
    transformer = weights(pipe.transformer)
    data = DataArguments(forget_prompts=["a cat", CAT], remain_prompts=[DOG, "a red car"], images_per_prompt=2,
                         generation_inference_steps=2)  # fmt: skip
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2)
    result = erase(pipe, "a cat", method=method, data=data, training=training, evaluate=False)
    assert result.steps == 2 and result.config["family"] == kind and result.method == method
    assert all(same(state, getattr(pipe, name)) for name, state in frozen.items())
    assert not same(transformer, pipe.transformer)
    assert all(torch.isfinite(p).all() for p in pipe.transformer.parameters())


def test_robust_sfr_on_moves_the_embedding_through_the_override(kind, pipe, fresh_accelerate_state, tmp_path_factory,
                                                                  monkeypatch):  # fmt: skip
    """SFR-on's adversarial option optimises the forgotten prompt's sequence embedding as the inversion attack does."""
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / f"{kind}-cache"))
    data = DataArguments(forget_prompts=["a cat", CAT], remain_prompts=[DOG, "a red car"], images_per_prompt=2,
                         generation_inference_steps=2)  # fmt: skip
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2)
    method = SFROnConfig(adversarial_steps=2, mask_batches=1)
    terms = []
    result = erase(pipe, "a cat", method=method, data=data, training=training, evaluate=False,
                   callbacks=[lambda event: terms.append(event.terms)])  # fmt: skip
    assert result.steps == 2 and all(torch.isfinite(p).all() for p in pipe.transformer.parameters())
    adversarial = [float(t["forget_remap_adversarial"]) for t in terms if "forget_remap_adversarial" in t]
    plain = [float(t["forget_remap"]) for t in terms if "forget_remap_adversarial" in t]
    assert len(adversarial) == 2 and adversarial != plain  # the moved embedding gives another loss


def test_flux_training_images_are_drawn_at_the_family_size_and_guidance(fresh_accelerate_state, tmp_path, monkeypatch):
    """FluxPipeline would sample 128 latent pixels and, asked for guidance 1, give its guidance embedding 1: the data
    are drawn at the family's size and at the guidance training gives the embedding (3.5), as training sees them."""
    monkeypatch.setenv("SFR_DIFFUSION_CACHE", str(tmp_path / "cache"))
    pipe = flux_pipeline("tiny", seed=0)
    seen = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: seen.append((kwargs["hidden_states"].shape[1], kwargs["guidance"])),
        with_kwargs=True,
    )
    data = DataArguments(forget_prompts=["a cat"], remain_prompts=[DOG], images_per_prompt=2,
                         generation_inference_steps=2, generation_guidance_scale=1.0)  # fmt: skip
    training = TrainingArguments(max_train_steps=1, forget_batch_size=2, remain_batch_size=2)
    erase(pipe, "a cat", method="ft", data=data, training=training, evaluate=False)
    handle.remove()
    assert seen and {tokens for tokens, _ in seen} == {16}  # (16 px / 2 / 2)², packed
    assert all(torch.equal(guidance, torch.full_like(guidance, 3.5)) for _, guidance in seen)
    # The generated images themselves are 16 px, and their cache key holds the size.
    settings = dict(images_per_prompt=1, seed=0, num_inference_steps=2, guidance_scale=3.5, batch_size=1)
    images = generate_images(
        pipe, ["a cat"], **settings, cache_root=tmp_path, pipeline_kwargs={"height": 16, "width": 16}
    )
    assert images[0]["image"].size == (16, 16)


def test_cross_attention_selections_are_refused_before_any_data_work(kind, pipe, fresh_accelerate_state):
    training = TrainingArguments(max_train_steps=1, trainable="cross_attention")
    with pytest.raises(ValueError, match="joint attention"):
        erase(pipe, "a cat", method="ft", data=DataArguments(remain_prompts=[DOG]), training=training, evaluate=False)


def test_image_conditioned_pipelines_of_these_transformers_are_refused(kind, pipe):
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    other = StableDiffusion3Img2ImgPipeline if kind == "sd3" else FluxImg2ImgPipeline
    with pytest.raises(ValueError, match=FAMILIES[kind][2].__name__):
        family_for(other(**pipe.components))


# ---------------------------------------------------------------------------------------------------------------------
# (c) The script, end to end, and an export diffusers loads on its own


def run_script(tmp_path, *options):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "SFR_DIFFUSION_CACHE": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
               str(ROOT / "scripts" / "erase_concept.py"), *map(str, options)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_script_erases_a_concept_and_exports_plain_diffusers(kind, pipe, tmp_path):
    """A tiny SD3 / Flux folder in, a StableDiffusion3Pipeline / FluxPipeline folder out, loadable without us."""
    pipeline_class = FAMILIES[kind][2]
    base, out = tmp_path / f"{kind}-base", tmp_path / f"{kind}-no-cat"
    pipe.save_pretrained(base)
    (tmp_path / "remain.txt").write_text("a photo of a dog\na red car\n")
    run_script(tmp_path, "--pretrained_model_name_or_path", base, "--concept", "a cat", "--anchor_concept", "a dog",
               "--remain_prompts", tmp_path / "remain.txt", "--images_per_prompt", "1",
               "--generation_inference_steps", "2", "--max_train_steps", "2", "--forget_batch_size", "2",
               "--remain_batch_size", "2", "--mask_batches", "1", "--output_dir", out)  # fmt: skip
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["family"] == kind and config["method_config"]["forget_loss"] == "remap"
    assert config["erased"]["concept"] == "a cat" and config["erased"]["anchor_concept"] == "a dog"
    assert (out / "saliency_mask.safetensors").exists() and not (out / "pipeline.py").exists()
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == pipeline_class.__name__

    base_pipe, erased_pipe = pipeline_class.from_pretrained(base), pipeline_class.from_pretrained(out)
    for name in frozen_names(kind):
        assert same(weights(getattr(base_pipe, name)), getattr(erased_pipe, name)), name
    erased = erased_pipe.transformer.state_dict()
    assert any(not torch.equal(v, erased[k]) for k, v in base_pipe.transformer.state_dict().items())

    erased_pipe.set_progress_bar_config(disable=True)
    expected = sample(erased_pipe, ["a cat"])
    assert np.abs(expected - sample(pipe, ["a cat"])).max() > 0
    call = "guidance_scale=3.0" if kind == "sd3" else "height=16, width=16"
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        sys.modules["sfr_diffusion"] = None  # plain diffusers only
        torch.set_num_threads(1)
        from diffusers import {pipeline_class.__name__} as Pipeline
        pipe = Pipeline.from_pretrained({str(out)!r})
        pipe.set_progress_bar_config(disable=True)
        images = pipe(["a cat"], num_inference_steps=2, {call}, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        np.save({str(tmp_path / "fresh.npy")!r}, images)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), expected)
