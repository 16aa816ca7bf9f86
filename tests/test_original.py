"""θ₀ precomputed (the default when full weights train) against a frozen copy: the same targets, hence the same erased
weights, with no copy of the denoiser; questions asked out of order or past the recording are errors; a resumed run
precomputes from the original weights, not the checkpoint's."""

import copy
import shutil
from pathlib import Path

import pytest
import torch

from sfr_diffusion.data import BatchSampler
from sfr_diffusion.families import family_for
from sfr_diffusion.methods import ESD, ESDConfig, SFROn, SFROnConfig
from sfr_diffusion.original import FrozenOriginal, PrecomputedOriginal
from sfr_diffusion.training import FORGET_STREAM, TrainingArguments, run_erasure

STEPS, BATCH = 4, 8
METHODS = {
    "remap_others": (SFROn, SFROnConfig(forget_loss="remap_others", mask_batches=1)),  # θ₀ in both steps
    "remap_joint": (SFROn, SFROnConfig(forget_loss="remap", online=False, mask_batches=1)),
    "esd": (ESD, ESDConfig()),
}


def arguments(tmp_path, name: str, **overrides) -> TrainingArguments:
    values = dict(checkpoints_dir=str(Path(tmp_path) / name), max_train_steps=STEPS, forget_batch_size=BATCH,
                  remain_batch_size=BATCH, learning_rate=1e-3)  # fmt: skip
    return TrainingArguments(**{**values, **overrides})


def erased_weights(pipeline, forget_remain, tmp_path, name, method_key, original, **overrides):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    method_class, config = METHODS[method_key]
    family = family_for(pipeline)
    method = method_class(copy.deepcopy(config), family, original=original)
    forget, remain = forget_remain
    run_erasure(accelerator=Accelerator(cpu=True), method=method, forget=forget, remain=remain,
                args=arguments(tmp_path, name, original=original, **overrides))  # fmt: skip
    AcceleratorState._reset_state(True)
    return method, {k: v.detach().clone() for k, v in family.denoiser.state_dict().items()}


@pytest.mark.parametrize("method_key", sorted(METHODS))
def test_precomputed_targets_erase_exactly_as_a_frozen_copy_does(forget_remain, tmp_path, method_key):
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    original = digits_ddpm_pipeline(seed=0).unet.state_dict()
    copied, with_copy = erased_weights(digits_ddpm_pipeline(seed=0), forget_remain, tmp_path, "a", method_key, "copy")
    precomputed, without = erased_weights(
        digits_ddpm_pipeline(seed=0), forget_remain, tmp_path, "b", method_key, "precomputed"
    )
    assert isinstance(copied.original, FrozenOriginal) and isinstance(precomputed.original, PrecomputedOriginal)
    assert precomputed.original.pending == 0  # every precomputed answer was asked for, none was missing
    assert any(not torch.equal(with_copy[k], original[k]) for k in original)  # the runs trained
    for name, value in with_copy.items():
        assert torch.equal(value, without[name]), name


def test_a_precomputed_original_holds_no_weights(pipeline):
    method = SFROn(SFROnConfig(), family_for(pipeline), original="precomputed")
    assert isinstance(method.original, PrecomputedOriginal)
    assert not [v for v in vars(method.original).values() if isinstance(v, torch.nn.Module)]


def test_methods_without_targets_from_the_original_make_none(pipeline):
    method = SFROn(SFROnConfig(forget_loss="ascent", remain_target="data"), family_for(pipeline), original="copy")
    assert method.original is None and not method.needs_original


def recorded(pipeline, forget_remain, steps: int) -> tuple[PrecomputedOriginal, SFROn, BatchSampler]:
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(forget_loss="remap"), family, original="precomputed")
    sampler = BatchSampler(forget_remain[0], family, BATCH, seed=0, stream=FORGET_STREAM)
    forget_phase = method.phases[0]
    with method.original.recording(family.denoiser):
        for step in range(steps):
            method.original_targets(forget_phase, sampler.batch(step))
    return method.original, method, sampler


def test_a_question_asked_out_of_order_is_an_error(pipeline, forget_remain):
    original, method, sampler = recorded(pipeline, forget_remain, steps=2)
    assert original.pending == 2 and original.nbytes > 0
    with pytest.raises(RuntimeError, match="other than the one precomputed"):
        method.original_targets(method.phases[0], sampler.batch(1))  # step 0's answer is next


def test_a_question_past_the_recording_is_an_error(pipeline, forget_remain):
    original, method, sampler = recorded(pipeline, forget_remain, steps=1)
    first = method.original_targets(method.phases[0], sampler.batch(0))["forget"]
    assert first.shape[0] == BATCH and original.pending == 0
    with pytest.raises(RuntimeError, match="not precomputed"):
        method.original_targets(method.phases[0], sampler.batch(1))


def test_answers_are_the_original_models_even_after_the_denoiser_moved(pipeline, forget_remain):
    original, method, sampler = recorded(pipeline, forget_remain, steps=1)
    with_copy = SFROn(SFROnConfig(forget_loss="remap"), method.family, original="copy")  # θ₀, copied before any move
    want = with_copy.original_targets(with_copy.phases[0], sampler.batch(0))["forget"]
    with torch.no_grad():
        for param in method.family.denoiser.parameters():
            param.add_(0.1)  # training moved the weights: a live θ₀ would now answer differently
    got = method.original_targets(method.phases[0], sampler.batch(0))["forget"]
    assert torch.equal(got, want)


def test_a_resumed_run_precomputes_from_the_original_weights(forget_remain, tmp_path):
    """Interrupted after 2 of 4 iterations and resumed: the same weights as the run without interruption (the resumed
    run's targets come from the pipeline as loaded, i.e. θ₀, before the checkpoint's weights replace it)."""
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    _, whole = erased_weights(digits_ddpm_pipeline(seed=0), forget_remain, tmp_path, "whole", "remap_others",
                              "precomputed")  # fmt: skip
    erased_weights(digits_ddpm_pipeline(seed=0), forget_remain, tmp_path, "split", "remap_others", "precomputed",
                   checkpointing_steps=2)  # fmt: skip
    shutil.rmtree(Path(tmp_path) / "split" / f"checkpoint-{STEPS}")  # interrupted before the last checkpoint
    _, resumed = erased_weights(digits_ddpm_pipeline(seed=0), forget_remain, tmp_path, "split", "remap_others",
                                "precomputed", resume_from_checkpoint="latest")  # fmt: skip
    for name, value in whole.items():
        assert torch.allclose(value, resumed[name], rtol=0, atol=1e-6), name
