"""Attacks on an erasure: the condition-embedding override and reset every family provides, the inversion and
relearning attacks, their records, and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfr_diffusion.attacks import AttackArguments, attack, concept_images, restored, run_attacks
from sfr_diffusion.digits.models import digits_ddpm_pipeline, digits_dit_pipeline, digits_vae
from sfr_diffusion.families import family_for
from sfr_diffusion.presets import learning_rate_for, preset_for
from sfr_diffusion.testing.layouts import stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parent.parent
SMALL = AttackArguments(attack_images=4, attack_batch_size=4, inversion_steps=3, relearn_steps=3, attack_evaluations=2)


@pytest.fixture(params=["ddpm", "dit"])
def class_pipeline(request):
    pipe = digits_ddpm_pipeline(seed=0) if request.param == "ddpm" else digits_dit_pipeline(digits_vae(seed=0), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def sd_pipeline():
    pipe = stable_diffusion_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def predictions(family, labels):
    generator = torch.Generator().manual_seed(0)
    draw = family.draw_noise(len(labels), generator)
    x0 = torch.randn((len(labels), *family.sample_shape), generator=generator)
    with torch.no_grad():
        return family.predict(family.denoiser, family.noisy(x0, draw), draw.timesteps, labels)


def sample(pipeline, conditions, **kwargs):
    return pipeline(
        conditions, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def test_an_override_makes_a_class_look_like_another_in_training_and_in_sampling(class_pipeline):
    family = family_for(class_pipeline)
    family.denoiser.eval()
    three, five = torch.full((2,), 3), torch.full((2,), 5)
    before = predictions(family, three)
    with family.condition_embedding_override([3], family.condition_embedding(5)):
        assert torch.allclose(predictions(family, three), predictions(family, five), atol=1e-6)
        drawn_as_five = sample(class_pipeline, [3], guidance_scale=2.0)
    assert torch.equal(predictions(family, three), before)  # the hooks are gone, the weights untouched
    as_five = sample(class_pipeline, [5], guidance_scale=2.0)
    assert torch.allclose(torch.as_tensor(drawn_as_five), torch.as_tensor(as_five))
    assert not torch.allclose(predictions(family, three), predictions(family, five))


def test_an_override_makes_a_prompt_look_like_another_in_training_and_in_sampling(sd_pipeline):
    family = family_for(sd_pipeline)
    cat, dog = family.prompt_id("a photo of a cat"), family.prompt_id("a photo of a dog")
    with family.condition_embedding_override([cat], family.condition_embedding(dog)):
        assert torch.allclose(predictions(family, torch.tensor([cat])), predictions(family, torch.tensor([dog])))
        drawn_as_dog = sample(sd_pipeline, ["a photo of a cat"], guidance_scale=3.0)
    as_dog = sample(sd_pipeline, ["a photo of a dog"], guidance_scale=3.0)
    as_cat = sample(sd_pipeline, ["a photo of a cat"], guidance_scale=3.0)
    assert abs(drawn_as_dog - as_dog).max() < 1e-5 and abs(as_cat - as_dog).max() > 1e-3


def test_reset_sets_the_class_row_of_every_table_to_the_mean_of_the_other_classes(class_pipeline):
    family = family_for(class_pipeline)
    tables = family.condition_tables()
    assert len(tables) == (1 if family.name == "ddpm" else len(family.denoiser.transformer_blocks))
    null_rows = [table.weight[family.null_class_id].clone() for table in tables]
    assert family.reset_condition_embedding(3) is True
    others = [c for c in range(family.num_classes()) if c != 3]
    for table, null_row in zip(tables, null_rows, strict=True):
        assert torch.allclose(table.weight[3], table.weight[others].mean(0))
        assert torch.equal(table.weight[family.null_class_id], null_row)  # the null class is not a class


def test_text_families_have_no_embedding_to_reset(sd_pipeline):
    assert family_for(sd_pipeline).reset_condition_embedding(family_for(sd_pipeline).prompt_id("a cat")) is False


def scripted_evaluator(fas):
    """An evaluator returning the given FAs in turn, recording the seeds it was called with."""
    calls = []

    def evaluate(pipeline, seed):
        calls.append(seed)
        return {"FA": fas[min(len(calls), len(fas)) - 1], "RA": 0.9}

    evaluate.calls = calls
    return evaluate


@pytest.mark.parametrize("kind", ["inversion", "relearn", "relearn_reset"])
def test_every_attack_leaves_the_pipeline_as_it_was_and_records_its_budget(class_pipeline, kind):
    weights = {k: v.clone() for k, v in family_for(class_pipeline).denoiser.state_dict().items()}
    flags = [p.requires_grad for p in family_for(class_pipeline).denoiser.parameters()]
    evaluate = scripted_evaluator([0.0, 0.3, 0.6])
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    record = attack(class_pipeline, "three", kind, arguments=SMALL, images=images, evaluate=evaluate)
    after = family_for(class_pipeline).denoiser.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert [p.requires_grad for p in family_for(class_pipeline).denoiser.parameters()] == flags
    assert [point["step"] for point in record["curve"]] == [0, 2, 3] and evaluate.calls == [0, 2, 3]
    assert record["ASR"] == 0.6 and record["steps_to_half"] == 3
    family_rate = learning_rate_for(family_for(class_pipeline), preset_for(class_pipeline))
    rate = SMALL.inversion_learning_rate if kind == "inversion" else family_rate
    assert record["budget"] == {"images": 4, "batch_size": 4, "optimizer": "Adam", "steps": 3, "learning_rate": rate}
    assert record["embedding_reset"] is (kind == "relearn_reset")


def test_inversion_moves_only_the_condition_embedding_and_lowers_the_loss(class_pipeline):
    """With every weight frozen, the inverted embedding is the only thing that learns: its loss falls."""
    family = family_for(class_pipeline)
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    record = attack(
        class_pipeline,
        "three",
        "inversion",
        arguments=AttackArguments(attack_images=8, attack_batch_size=8, inversion_steps=30, attack_evaluations=30,
                                  inversion_learning_rate=0.05),
        images=images,
        evaluate=scripted_evaluator([0.0]),
    )  # fmt: skip
    losses = [point["loss"] for point in record["curve"][1:]]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(not p.requires_grad or p.grad is None for p in family.denoiser.parameters())


def test_relearning_changes_weights_that_inversion_leaves_alone(class_pipeline):
    family = family_for(class_pipeline)
    seen = {}

    def evaluate(pipeline, seed):
        seen[seed] = {k: v.clone() for k, v in family.denoiser.state_dict().items()}
        return {"FA": 0.0, "RA": 1.0}

    images = torch.rand(4, 1, 8, 8) * 2 - 1
    attack(class_pipeline, "three", "inversion", arguments=SMALL, images=images, evaluate=evaluate)
    inverted = dict(seen)
    attack(class_pipeline, "three", "relearn", arguments=SMALL, images=images, evaluate=evaluate)
    assert all(torch.equal(inverted[0][k], inverted[3][k]) for k in inverted[0])
    assert any(not torch.equal(seen[0][k], seen[3][k]) for k in seen[0])


def test_the_preset_supplies_real_images_of_the_digit_and_judges(class_pipeline):
    images = concept_images(class_pipeline, "three", count=5, seed=0)
    assert images.shape == (5, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, concept_images(class_pipeline, "three", count=5, seed=0))
    with pytest.raises(ValueError, match="only .* were given"):
        concept_images(class_pipeline, "three", images=torch.zeros(2, 1, 8, 8), count=5, seed=0)
    results = run_attacks(
        class_pipeline, "three", ["relearn_reset"],
        arguments=AttackArguments(attack_images=4, relearn_steps=1, attack_evaluations=1),
        evaluation=sfr_evaluation(),
    )  # fmt: skip
    record = results["attacks"]["relearn_reset"]
    assert "digits classifier" in record["judge"]["name"] and 0 <= record["ASR"] <= 1 and record["RA"] is not None


def sfr_evaluation():
    from sfr_diffusion import EvaluationArguments

    return EvaluationArguments(eval_samples_per_class=2, forget_samples_per_class=4, num_inference_steps=2)


def test_the_sd_attack_stands_in_for_every_prompt_the_judge_uses(sd_pipeline):
    from sfr_diffusion.attacks import attacked_conditions

    family = family_for(sd_pipeline)
    assert [family.condition_name(c) for c in attacked_conditions(family, "a cat", None)] == ["a cat"]
    images = torch.rand(4, *family.image_shape) * 2 - 1
    inverted = attack(sd_pipeline, "a cat", "inversion", arguments=SMALL, images=images,
                      evaluate=scripted_evaluator([0.0]))  # fmt: skip
    assert inverted["conditions"] == ["a cat"] and inverted["curve"][-1]["loss"] > 0
    relearned = attack(sd_pipeline, "a cat", "relearn_reset", arguments=SMALL, images=images,
                       evaluate=scripted_evaluator([0.0]))  # fmt: skip
    assert relearned["embedding_reset"] is None  # not applicable: the text encoder is never erased


def test_relearning_after_a_reset_runs_once_where_there_is_nothing_to_reset(sd_pipeline, class_pipeline):
    def run(pipeline, concept):
        evaluate = scripted_evaluator([0.0, 0.3, 0.6, 0.1, 0.2, 0.4])
        images = torch.rand(4, *family_for(pipeline).image_shape) * 2 - 1
        records = run_attacks(
            pipeline, concept, ["relearn", "relearn_reset"], arguments=SMALL, images=images, evaluate=evaluate
        )["attacks"]
        return records, len(evaluate.calls)

    text, text_calls = run(sd_pipeline, "a cat")
    assert text_calls == 3  # one relearning judged at steps 0, 2, 3, recorded twice
    assert text["relearn_reset"] == text["relearn"] | {"attack": "relearn_reset", "embedding_reset": None}
    classes, class_calls = run(class_pipeline, "three")
    assert class_calls == 6 and classes["relearn_reset"]["embedding_reset"] is True
    assert classes["relearn_reset"]["ASR"] == 0.4 and classes["relearn"]["ASR"] == 0.6


def test_unknown_attacks_and_bad_budgets_fail_before_any_work(class_pipeline):
    with pytest.raises(ValueError, match="valid attacks are"):
        attack(class_pipeline, "three", "jailbreak")
    with pytest.raises(ValueError, match="relearn_steps must be >= 1"):
        AttackArguments(relearn_steps=0)


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "attack.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


def test_the_script_attacks_an_export_and_writes_a_new_results_file(tmp_path):
    from sfr_diffusion import erase, load_pipeline

    pipe = load_pipeline("digits-ddpm")
    pipe.set_progress_bar_config(disable=True)
    from sfr_diffusion import TrainingArguments

    result = erase(pipe, "seven", training=TrainingArguments(max_train_steps=1, forget_batch_size=4,
                                                             remain_batch_size=4), evaluate=False)  # fmt: skip
    export = result.save_pretrained(tmp_path / "erased")
    out = tmp_path / "attack.json"
    flags = ["--attack", "relearn", "--relearn_steps", "2", "--attack_evaluations", "1", "--attack_images", "4",
             "--eval_samples_per_class", "2", "--forget_samples_per_class", "4", "--num_inference_steps", "2",
             "--results_json", out]  # fmt: skip
    done = run_script(export, *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["concept"] == "seven" and list(results["attacks"]) == ["relearn"]
    assert results["attacks"]["relearn"]["budget"]["steps"] == 2 and results["arguments"]["attack_seed"] == 0
    assert json.loads(done.stdout)["relearn"]["ASR"] == results["attacks"]["relearn"]["ASR"]
    again = run_script(export, *flags)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    assert json.loads(out.read_text()) == results  # untouched
    bad = run_script(export, "--attack", "jailbreak")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_restored_puts_weights_back_after_an_error():
    module = torch.nn.Linear(2, 2)
    before = module.weight.detach().clone()
    with pytest.raises(RuntimeError), restored(module):
        with torch.no_grad():
            module.weight.add_(1)
        raise RuntimeError("interrupted")
    assert torch.equal(module.weight, before)
