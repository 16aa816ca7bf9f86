"""The forgetting rule (FA ≤ 1% with RA ≥ base − 1 point, held to the end), fresh noise per tracked evaluation, the
worst case over guidance scales, and the early stop it allows."""

import json

import pytest

from sfr_diffusion import EvaluationArguments, FTConfig, TrainingArguments, erase
from sfr_diffusion.erasure import evaluator_for
from sfr_diffusion.forgetting import (
    FA_TARGET,
    RA_TOLERANCE,
    default_guidance_scale,
    evaluation_seed,
    held_for,
    is_forgotten,
    iterations_to_forget,
    sweep_guidance,
)
from sfr_diffusion.presets.preset import Preset
from sfr_diffusion.training import PROGRESS_FILE


def curve(*points):
    """A tracked history from (FA, RA) pairs at steps 0, 10, 20..."""
    return [{"step": 10 * i, "FA": fa, "RA": ra} for i, (fa, ra) in enumerate(points)]


def test_the_rule_is_one_percent_fa_within_one_point_of_ra():
    assert FA_TARGET == 0.01 and RA_TOLERANCE == 0.01
    assert is_forgotten({"FA": 0.01, "RA": 0.9}, base_ra=0.9)
    assert not is_forgotten({"FA": 0.0101, "RA": 0.9}, base_ra=0.9)
    assert is_forgotten({"FA": 0.0, "RA": 0.89}, base_ra=0.9)  # exactly one point below: still within
    assert is_forgotten({"FA": 0.0, "RA": 882 / 900}, base_ra=891 / 900)  # the same edge, as judged shares
    assert not is_forgotten({"FA": 0.0, "RA": 0.8899}, base_ra=0.9)
    with pytest.raises(ValueError, match="no FA or RA"):
        is_forgotten({"step": 5, "FA": None, "RA": 0.9}, base_ra=0.9)


def test_a_dip_that_does_not_hold_is_not_forgetting():
    history = curve((1.0, 0.9), (0.0, 0.9), (0.2, 0.9), (0.0, 0.9), (0.005, 0.895))
    assert iterations_to_forget(history, base_ra=0.9) == 30  # not 10: FA rose again at 20
    assert held_for(history, base_ra=0.9) == 2
    risen = curve((1.0, 0.9), (0.0, 0.9), (0.0, 0.9), (0.3, 0.9))
    assert iterations_to_forget(risen, base_ra=0.9) is None  # forgotten twice, but not at the end
    assert held_for(risen, base_ra=0.9) == 0


def test_ra_must_hold_as_well():
    history = curve((1.0, 0.9), (0.0, 0.85), (0.0, 0.9), (0.0, 0.88))
    assert iterations_to_forget(history, base_ra=0.9) is None  # the last one damaged the rest
    assert iterations_to_forget(history[:3], base_ra=0.9) == 20
    assert iterations_to_forget(curve((0.0, 0.9)), base_ra=0.9) == 0  # a base model without the concept
    assert iterations_to_forget([], base_ra=0.9) is None and held_for([], base_ra=0.9) == 0


def test_the_benchmarks_use_the_library_rule():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import reporting
    finally:
        sys.path.pop(0)
    assert reporting.iterations_to_forget is iterations_to_forget and reporting.FA_TARGET == FA_TARGET


def test_evaluation_seeds_are_fresh_per_step_and_the_base_seed_before_and_after():
    assert evaluation_seed(7) == evaluation_seed(7, 0) == 7
    seeds = [evaluation_seed(7, step) for step in range(1, 200)]
    assert len(set(seeds)) == len(seeds) and 7 not in seeds
    assert seeds == [evaluation_seed(7, step) for step in range(1, 200)]  # a pure function: resumes agree
    assert evaluation_seed(8, 1) != evaluation_seed(7, 1)


def test_the_preset_evaluator_draws_fresh_noise_and_records_its_seed():
    seen = []

    def judge(pipeline, concepts, settings, seed):
        seen.append(seed)
        return {"FA": 0.0, "RA": 1.0, "concepts": concepts}

    evaluator = evaluator_for(None, object(), ["three"], Preset(name="fake", evaluate=judge), seed=3)
    before, tracked, later, after = evaluator(), evaluator(step=10), evaluator(step=20), evaluator()
    assert before["seed"] == after["seed"] == 3 and before["concepts"] == ["three"]
    assert tracked["seed"] == evaluation_seed(3, 10) != later["seed"] == evaluation_seed(3, 20)
    assert seen == [3, tracked["seed"], later["seed"], 3]


def test_evaluation_arguments_judge_at_least_fifty_forget_samples_by_default():
    def forget_samples(**kwargs):
        return EvaluationArguments(**kwargs).resolved_forget_samples_per_class

    assert forget_samples() == 50 and forget_samples(eval_samples_per_class=4) == 50
    assert forget_samples(eval_samples_per_class=80) == 80
    assert forget_samples(eval_samples_per_class=80, forget_samples_per_class=10) == 10
    with pytest.raises(ValueError, match="forget_samples_per_class must be >= 1"):
        EvaluationArguments(forget_samples_per_class=0)


def test_sweep_reports_the_worst_guidance():
    measured = {1.0: (0.0, 0.95), 2.0: (0.0, 0.97), 4.0: (0.04, 0.96), 7.5: (0.04, 0.9)}
    sweep = sweep_guidance(lambda g: {"FA": measured[g][0], "RA": measured[g][1]}, (2, 1.0, 7.5), default_guidance=4)
    assert list(sweep["per_guidance"]) == ["1.0", "2.0", "4.0", "7.5"]  # the default joins the scales, in order
    assert sweep["default_guidance"] == 4.0 and sweep["FA_worst"] == 0.04 and sweep["RA_worst"] == 0.9
    assert sweep["worst_guidance"] == 7.5  # highest FA; of the tied two, the lower RA
    no_fa = sweep_guidance(lambda g: {"FA": None, "RA": measured[g][1]}, (1, 2), default_guidance=1)
    assert no_fa["FA_worst"] is None and no_fa["worst_guidance"] == 1.0 and no_fa["RA_worst"] == 0.95
    with pytest.raises(ValueError, match=">= 0"):
        sweep_guidance(lambda g: {}, (-1,), default_guidance=1)


def test_default_guidance_is_the_pipelines_own():
    from diffusers import DDPMPipeline, DiTPipeline, StableDiffusionPipeline

    from sfr_diffusion.pipelines import ClassConditionalDDPMPipeline

    def bare(cls):  # an instance without components: only its class's __call__ signature is read
        return object.__new__(cls)

    assert default_guidance_scale(bare(DiTPipeline)) == 4.0
    assert default_guidance_scale(bare(StableDiffusionPipeline)) == 7.5
    assert default_guidance_scale(bare(ClassConditionalDDPMPipeline)) == 1.0
    with pytest.raises(ValueError, match="DDPMPipeline takes no guidance_scale"):
        default_guidance_scale(bare(DDPMPipeline))


def test_stop_when_forgotten_is_validated():
    assert TrainingArguments(eval_every=5, stop_when_forgotten=2).stop_when_forgotten == 2
    with pytest.raises(ValueError, match="stop_when_forgotten needs eval_every"):
        TrainingArguments(stop_when_forgotten=2)
    with pytest.raises(ValueError, match="stop_when_forgotten must be >= 1"):
        TrainingArguments(eval_every=5, stop_when_forgotten=0)


class Scripted:
    """An evaluator returning scripted (FA, RA) records in turn (the last one again once the script runs out)."""

    def __init__(self, *points):
        self.points, self.calls = points, 0

    def __call__(self, pipeline):
        fa, ra = self.points[min(self.calls, len(self.points) - 1)]
        self.calls += 1
        return {"FA": fa, "RA": ra}


TINY = dict(max_train_steps=10, forget_batch_size=4, remain_batch_size=4, eval_every=1, stop_when_forgotten=2)


def test_training_stops_once_forgetting_has_held(pipeline, tmp_path, fresh_accelerate_state):
    # Step 0 (base), then: forgotten, back, forgotten at the RA edge, forgotten → held twice at step 4.
    script = Scripted((1.0, 0.9), (0.0, 0.9), (0.3, 0.9), (0.0, 0.89), (0.01, 0.95), (0.0, 0.9))
    checkpoints = tmp_path / "checkpoints"
    training = TrainingArguments(**TINY, checkpoints_dir=str(checkpoints), checkpointing_steps=3)
    result = erase(pipeline, "three", method=FTConfig(), training=training, evaluate=script)
    assert result.steps == result.config["steps"] == 4
    assert [record["step"] for record in result.history] == [0, 1, 2, 3, 4]
    assert iterations_to_forget(result.history, result.history[0]["RA"]) == 3
    assert script.calls == 6  # steps 0-4 and the "after" evaluation: nothing past the stop
    assert "- Iterations: 4;" in result.model_card
    # The checkpoint before the stop holds the evaluations up to it; none was written past the stop.
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"]
    saved = json.loads((checkpoints / "checkpoint-3" / PROGRESS_FILE).read_text())
    assert [record["step"] for record in saved["history"]] == [0, 1, 2, 3]


def test_a_run_that_never_holds_runs_its_budget(pipeline, fresh_accelerate_state):
    script = Scripted((1.0, 0.9), (0.0, 0.9), (0.5, 0.9))
    training = TrainingArguments(**{**TINY, "max_train_steps": 3})
    result = erase(pipeline, "three", method=FTConfig(), training=training, evaluate=script)
    assert result.steps == 3 and [record["step"] for record in result.history] == [0, 1, 2, 3]


def test_a_resumed_run_that_had_stopped_runs_no_further_step(pipeline, tmp_path, fresh_accelerate_state):
    checkpoints = tmp_path / "checkpoints"
    first = TrainingArguments(**TINY, checkpoints_dir=str(checkpoints), checkpointing_steps=2)
    erase(pipeline, "three", method=FTConfig(), training=first, evaluate=Scripted((1.0, 0.9), (0.0, 0.9)))
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]  # stopped at step 2
    again = TrainingArguments(**TINY, checkpoints_dir=str(checkpoints), resume_from_checkpoint="latest")
    script = Scripted((0.5, 0.9))
    resumed = erase(pipeline, "three", method=FTConfig(), training=again, evaluate=script)
    assert resumed.steps == 2 and script.calls == 1  # the "after" evaluation only


def test_an_evaluation_without_fa_stops_the_run_with_a_clear_error(pipeline, fresh_accelerate_state):
    with pytest.raises(ValueError, match="no FA or RA"):
        erase(pipeline, "three", method=FTConfig(), training=TrainingArguments(**TINY), evaluate=lambda p: {"RA": 1})


def test_forgetting_at_every_guidance_compares_each_scale_with_the_base_at_that_scale():
    from sfr_diffusion.forgetting import forgotten_at_every_guidance

    base = {"per_guidance": {"1.0": {"FA": 1.0, "RA": 1.0}, "7.5": {"FA": 1.0, "RA": 0.90}}}
    erased = {"per_guidance": {"1.0": {"FA": 0.0, "RA": 0.995}, "7.5": {"FA": 0.0, "RA": 0.895}}}
    assert forgotten_at_every_guidance(erased, base)  # 0.895 is within a point of the base's 0.90 at 7.5
    erased["per_guidance"]["7.5"]["FA"] = 0.02
    assert not forgotten_at_every_guidance(erased, base)
    erased["per_guidance"]["7.5"] = {"FA": 0.0, "RA": 0.88}
    assert not forgotten_at_every_guidance(erased, base)
    with pytest.raises(ValueError, match="not measured at guidance"):
        forgotten_at_every_guidance({"per_guidance": {"4.0": {"FA": 0.0, "RA": 1.0}}}, base)
