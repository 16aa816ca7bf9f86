"""The DiT family: latent space behind a VAE, learned sigma, DiTPipeline's null class; standard exports."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline

from sfr_diffusion import SFROnConfig, erase
from sfr_diffusion.data import split_by_class
from sfr_diffusion.digits import bundled_path, is_digits_world
from sfr_diffusion.digits.models import digits_dit_pipeline, digits_vae
from sfr_diffusion.export import export_pipeline, save_pipeline
from sfr_diffusion.families import DiTFamily, family_for
from sfr_diffusion.methods import SFROn
from sfr_diffusion.training import TrainingArguments, run_erasure


@pytest.fixture
def dit_pipeline():
    pipe = digits_dit_pipeline(digits_vae(seed=0), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_family_is_detected_with_dit_pipeline_conventions(dit_pipeline):
    family = family_for(dit_pipeline)
    assert isinstance(family, DiTFamily)
    assert family.null_class_id == 1000  # DiTPipeline hard-codes its null class as 1000
    assert family.learned_sigma and family.sample_shape == (4, 4, 4)
    assert family.image_shape == (1, 8, 8)
    assert family.num_classes() == 10 and family.resolve_class("three") == 3 and family.resolve_class(7) == 7
    with pytest.raises(ValueError, match="valid names"):
        family.resolve_class("eleven")
    assert is_digits_world(dit_pipeline) and family.class_names()[9] == "nine"


def test_prediction_is_the_first_half_of_learned_sigma_output(dit_pipeline):
    family = family_for(dit_pipeline)
    x_t, t, labels = torch.randn(2, 4, 4, 4), torch.tensor([5, 50]), torch.tensor([1, 1000])
    full = dit_pipeline.transformer(x_t, timestep=t, class_labels=labels).sample
    assert full.shape[1] == 8
    assert torch.allclose(family.predict(dit_pipeline.transformer, x_t, t, labels), full[:, :4], atol=1e-6)


def test_encode_scales_vae_posterior_mean(dit_pipeline):
    family = family_for(dit_pipeline)
    dit_pipeline.vae.register_to_config(scaling_factor=0.5)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    expected = dit_pipeline.vae.encode(images).latent_dist.mean * 0.5
    assert torch.allclose(family.encode(images), expected)


def test_sfr_on_trains_only_the_transformer(dit_pipeline, digits_train, accelerator, tmp_path):
    family = family_for(dit_pipeline)
    vae_before = {k: v.clone() for k, v in dit_pipeline.vae.state_dict().items()}
    dit_before = {k: v.clone() for k, v in dit_pipeline.transformer.state_dict().items()}
    forget, remain = split_by_class(digits_train, [3], resolution=8, channels=1)
    args = TrainingArguments(
        checkpoints_dir=str(tmp_path / "checkpoints"),
        max_train_steps=2,
        forget_batch_size=4,
        remain_batch_size=4,
        learning_rate=1e-3,
    )
    with family.prepared_for_training():
        method = SFROn(SFROnConfig(mask_batches=1), family)
        result = run_erasure(accelerator=accelerator, method=method, forget=forget, remain=remain, args=args)
    assert 0 < result.mask_statistics["density"] < 1
    assert all(torch.equal(v, dit_pipeline.vae.state_dict()[k]) for k, v in vae_before.items())
    assert any(not torch.equal(v, dit_pipeline.transformer.state_dict()[k]) for k, v in dit_before.items())


def test_export_loads_with_plain_diffusers_in_a_fresh_process(dit_pipeline, tmp_path):
    out = tmp_path / "dit-export"
    export_pipeline(dit_pipeline, out, unlearning_config={"method": "test"}, model_card="card")
    assert not (out / "pipeline.py").exists()  # DiTPipeline is diffusers' own: no custom code travels
    assert json.loads((out / "model_index.json").read_text())["id2label"]["3"] == "three"
    expected = dit_pipeline([3, 7], guidance_scale=2.0, num_inference_steps=2, generator=torch.manual_seed(0),
                            output_type="np").images  # fmt: skip
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        sys.modules["sfr_diffusion"] = None  # plain diffusers only
        torch.set_num_threads(1)  # as in this test process: CPU reductions then run in the same order
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(out)!r})
        assert type(pipe).__name__ == "DiTPipeline", type(pipe)
        ids = pipe.get_label_ids(["three", "seven"])
        images = pipe(ids, guidance_scale=2.0, num_inference_steps=2, generator=torch.manual_seed(0),
                      output_type="np").images
        np.save({str(tmp_path / "fresh.npy")!r}, images)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), expected)


def test_save_pipeline_round_trips_id2label(dit_pipeline, tmp_path):
    save_pipeline(dit_pipeline, tmp_path / "p")
    reloaded = DiTPipeline.from_pretrained(tmp_path / "p")
    assert reloaded.labels == dit_pipeline.labels


def label_embedders(transformer):
    return [m for m in transformer.modules() if hasattr(m, "token_drop") and hasattr(m, "dropout_prob")]


def test_training_mode_never_drops_labels_inside_the_model(dit_pipeline):
    """DiT's own label dropout would hit the null branch during the forget step; preparing for training turns it
    off, and only for the duration of the erasure."""
    family = family_for(dit_pipeline)
    embedders = label_embedders(family.denoiser)  # one per transformer block
    assert embedders and all(m.dropout_prob > 0 for m in embedders)  # pretraining's, left as is by the family
    x_t, t, labels = torch.randn(64, 4, 4, 4), torch.full((64,), 10), torch.full((64,), 3)
    with family.prepared_for_training():
        model = family.denoiser.train()
        first = family.predict(model, x_t, t, labels)
        assert torch.allclose(first, family.predict(model, x_t, t, labels), atol=1e-6)
        null = family.predict(model, x_t, t, torch.full((64,), family.null_class_id))
        assert not torch.allclose(first, null)
    assert embedders and all(m.dropout_prob > 0 for m in embedders)


def component_state(pipeline) -> dict:
    """What reading or erasing must leave as it was, per module component: dtype, training flags, requires_grad
    flags and DiT label dropout (weights aside: the denoiser's are the ones an erasure changes)."""
    state = {}
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = {
                "dtypes": {p.dtype for p in component.parameters()},
                "training": [m.training for m in component.modules()],
                "requires_grad": [p.requires_grad for p in component.parameters()],
                "dropout_prob": [m.dropout_prob for m in label_embedders(component)],
            }
    return state


def test_building_a_family_and_erasing_leave_the_pipeline_as_it_was(dit_pipeline, fresh_accelerate_state):
    """Reading a model never changes it (STYLE rule 12); training-only changes live in prepared_for_training."""
    dit_pipeline.vae.train()  # a user's state the family must not "fix": VAE trainable and in training mode
    before = component_state(dit_pipeline)
    assert set(before["transformer"]["dropout_prob"]) == {0.1} and all(before["vae"]["requires_grad"])

    family = family_for(dit_pipeline)
    assert component_state(dit_pipeline) == before

    with family.prepared_for_training(torch.bfloat16):
        vae, transformer = dit_pipeline.vae, dit_pipeline.transformer
        assert {p.dtype for p in vae.parameters()} == {torch.bfloat16} and family.frozen_dtype == torch.bfloat16
        assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
        assert {p.dtype for p in transformer.parameters()} == {torch.float32}  # trainable weights stay fp32
        assert {m.dropout_prob for m in label_embedders(transformer)} == {0.0}
    assert component_state(dit_pipeline) == before and family.frozen_dtype == torch.float32

    training = TrainingArguments(max_train_steps=1, forget_batch_size=2, remain_batch_size=2, mixed_precision="bf16")
    result = erase(dit_pipeline, "seven", method=SFROnConfig(mask_batches=1), training=training, evaluate=False)
    assert result.steps == 1
    assert component_state(dit_pipeline) == before


def test_a_mixed_precision_erasure_gives_back_the_frozen_weights_bit_for_bit(dit_pipeline, fresh_accelerate_state):
    """The VAE is cast to bf16 while erasing; on exit it must hold its own fp32 weights again, not their bf16
    roundings cast back up (the export would otherwise ship a VAE the user never had)."""
    vae_weights = {k: v.clone() for k, v in dit_pipeline.vae.state_dict().items()}
    family = family_for(dit_pipeline)

    with family.prepared_for_training(torch.bfloat16):
        pass
    changed = [k for k, v in vae_weights.items() if not torch.equal(v, dit_pipeline.vae.state_dict()[k])]
    assert not changed, f"{len(changed)} of {len(vae_weights)} VAE tensors were rounded, e.g. {changed[:3]}"

    training = TrainingArguments(max_train_steps=1, forget_batch_size=2, remain_batch_size=2, mixed_precision="bf16")
    erase(dit_pipeline, "seven", method=SFROnConfig(mask_batches=1), training=training, evaluate=False)
    assert all(torch.equal(v, dit_pipeline.vae.state_dict()[k]) for k, v in vae_weights.items())


def test_default_script_erases_seven_from_the_bundled_dit(tmp_path):
    """End to end through accelerate on the bundled digits DiT: the export is a plain DiTPipeline without 'seven'."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "dit-no-seven"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    script = str(root / "scripts" / "erase_concept.py")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", script,
               "--pretrained_model_name_or_path", str(bundled_path("dit")), "--concept", "seven",
               "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "unlearning_config.json").read_text())
    assert config["family"] == "dit" and config["erased"] == {
        "concept": "seven",
        "class_id": 7,
        "anchor_concept": "zero",
    }
    before, after = config["metrics"]["before"], config["metrics"]["after"]
    assert before["FA"] >= 0.9
    assert after["FA"] <= 0.05 and after["RA"] >= 0.90, after
    reloaded = DiTPipeline.from_pretrained(out)
    assert reloaded.labels["seven"] == 7
    base_vae = DiTPipeline.from_pretrained(bundled_path("dit")).vae.state_dict()
    assert all(torch.equal(v, reloaded.vae.state_dict()[k]) for k, v in base_vae.items())  # only the DiT changed


def test_command_runs_unchanged_on_a_dit_xl_layout_folder(tmp_path, fresh_accelerate_state):
    """The facebook/DiT-XL-2-256 path at tiny size: a DiTPipeline folder with class names and an imagefolder."""
    from PIL import Image

    from sfr_diffusion.commands.erase import main
    from sfr_diffusion.testing.layouts import dit_pipeline as dit_layout

    base, data = tmp_path / "dit-layout", tmp_path / "images"
    save_pipeline(dit_layout("tiny", seed=0), base)
    rng = np.random.default_rng(0)
    for name in ("class 0", "class 1"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / name / f"{i}.png")
    result = main(["--pretrained_model_name_or_path", str(base), "--concept", "class 1",
                   "--train_data_dir", str(data), "--max_train_steps", "2", "--forget_batch_size", "2",
                   "--remain_batch_size", "2", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    summary = result.config
    assert summary["family"] == "dit" and summary["erased"] == {
        "concept": "class 1",
        "class_id": 1,
        "anchor_concept": "class 999",
    }
    before = DiTPipeline.from_pretrained(base).transformer.state_dict()
    after = DiTPipeline.from_pretrained(tmp_path / "out").transformer.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
