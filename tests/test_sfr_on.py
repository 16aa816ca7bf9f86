"""SFR-on: config, schedule, and what one run of the erasure loop provably does (SPEC §1)."""

import copy
import json
from pathlib import Path

import pytest
import torch

from sfr_diffusion.data import BatchSampler
from sfr_diffusion.digits.models import digits_ddpm_pipeline
from sfr_diffusion.families import family_for
from sfr_diffusion.losses import forget_weight, per_sample_mse
from sfr_diffusion.methods import SFROn, SFROnConfig, get_method_class
from sfr_diffusion.saliency import load_mask, mask_density
from sfr_diffusion.training import MASK_FILE, REMAIN_STREAM, TrainingArguments, run_erasure

FORGET_CLASS, NULL_CLASS = 3, 10
STEPS, BATCH = 3, 8


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"forget_loss": "descent"}, "forget_loss must be one of"),
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"remain_weight": -1.0}, "remain_weight must be >= 0"),
        ({"gamma": -0.1}, "gamma must be >= 0"),
        ({"mask_batches": 0}, "mask_batches must be >= 1"),
        ({"forget_max_grad_norm": 0.0}, "forget_max_grad_norm must be > 0 or None"),
        ({"remain_max_grad_norm": -1.0}, "remain_max_grad_norm must be > 0 or None"),
        ({"label_dropout": 1.0}, r"label_dropout must be in \[0, 1\)"),
        ({"label_dropout": -0.1}, r"label_dropout must be in \[0, 1\)"),
    ],
)
def test_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SFROnConfig(**kwargs)


def test_config_accepts_boundary_values():
    config = SFROnConfig(alpha=0.0, label_dropout=0.0, forget_max_grad_norm=None, remain_max_grad_norm=None)

    assert config.forget_max_grad_norm is None


def test_config_round_trips_through_a_dict_and_json():
    config = SFROnConfig(forget_loss="remap", alpha=2.0, gamma=0.5, remap_target="one", forget_max_grad_norm=None)

    restored = SFROnConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert restored == config
    assert config.to_dict()["forget_loss"] == "remap"


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"Unknown SFROnConfig fields \['lr'\]; valid fields are"):
        SFROnConfig.from_dict({"alpha": 1.0, "lr": 1e-4})


def test_registry_names_the_valid_methods():
    assert get_method_class("sfr_on") is SFROn
    with pytest.raises(ValueError, match=r"available: \[.*'sfr_on'.*\]"):
        get_method_class("selective_amnesia")


def test_method_rejects_a_foreign_config(pipeline):
    with pytest.raises(TypeError, match="needs a SFROnConfig"):
        SFROn(object(), family_for(pipeline))


def test_remap_target_defaults_to_the_null_class_and_resolves_names_and_ids(pipeline):
    family = family_for(pipeline)

    assert SFROn(SFROnConfig(forget_loss="remap"), family).remap_condition == NULL_CLASS
    assert SFROn(SFROnConfig(forget_loss="remap", remap_target="seven"), family).remap_condition == 7
    assert SFROn(SFROnConfig(forget_loss="remap", remap_target="7"), family).remap_condition == 7


def test_remap_target_must_be_a_real_class(pipeline):
    # The null class is not a class one can name: it is the default, not a target.
    with pytest.raises(ValueError, match=r"Unknown class '10'; valid names are \['zero'.*ids 0..9"):
        SFROn(SFROnConfig(forget_loss="remap", remap_target=str(NULL_CLASS)), family_for(pipeline))
    with pytest.raises(ValueError, match="Unknown class 'eleven'"):
        SFROn(SFROnConfig(forget_loss="remap", remap_target="eleven"), family_for(pipeline))


# --- the schedule as data -----------------------------------------------------------------------------------------


def test_phases_are_a_masked_clipped_forget_step_then_an_unmasked_remain_step(pipeline):
    method = SFROn(SFROnConfig(forget_max_grad_norm=0.5, remain_max_grad_norm=2.0), family_for(pipeline))

    forget, remain = method.phases

    assert [p.name for p in method.phases] == ["forget", "remain"]
    assert (forget.data, forget.masked, forget.max_grad_norm) == ("forget", True, 0.5)
    assert (remain.data, remain.masked, remain.max_grad_norm) == ("remain", False, 2.0)
    assert method.uses_mask


def test_without_the_mask_no_phase_is_masked(pipeline):
    method = SFROn(SFROnConfig(use_mask=False), family_for(pipeline))

    assert [p.name for p in method.phases] == ["forget", "remain"]
    assert not any(p.masked for p in method.phases)
    assert not method.uses_mask


# --- runs of the erasure loop -------------------------------------------------------------------------------------


def parameters_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def erase(accelerator, method, forget_remain, output_dir, callbacks=()):
    forget, remain = forget_remain
    args = TrainingArguments(
        checkpoints_dir=str(Path(output_dir) / "checkpoints"),
        max_train_steps=STEPS,
        forget_batch_size=BATCH,
        remain_batch_size=BATCH,
        learning_rate=1e-3,
    )
    return run_erasure(
        accelerator=accelerator, method=method, forget=forget, remain=remain, args=args, callbacks=callbacks
    )


def test_each_iteration_is_forget_then_remain_on_one_optimizer(accelerator, pipeline, forget_remain, tmp_path):
    method = SFROn(SFROnConfig(mask_batches=1, gamma=1.0), family_for(pipeline))
    seen, adam_steps = [], []

    def record(event):
        seen.append((event.step, event.phase.name, id(event.optimizer)))
        adam_steps.append({int(event.optimizer.state[p]["step"]) for p in event.model.parameters()})

    erase(accelerator, method, forget_remain, tmp_path, callbacks=(record,))

    assert [(step, name) for step, name, _ in seen] == [
        (step, name) for step in range(STEPS) for name in ("forget", "remain")
    ]
    assert len({optimizer_id for _, _, optimizer_id in seen}) == 1
    # One shared Adam: every parameter's step count grows by one per phase, i.e. by two per iteration.
    assert adam_steps == [{n} for n in range(1, 2 * STEPS + 1)]


def test_forget_step_changes_only_salient_weights(accelerator, pipeline, forget_remain, tmp_path):
    """The saliency mask really masks, even when Adam moments from earlier remain steps push every weight."""
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(mask_batches=1, gamma=1.0), family)
    last = {"parameters": parameters_of(family.denoiser)}
    forget_steps, remain_steps, moments_before_forget = [], [], []

    def record(event):
        current = parameters_of(event.model)
        (forget_steps if event.phase.name == "forget" else remain_steps).append((last["parameters"], current))
        last["parameters"] = current
        if event.phase.name == "remain":
            moments_before_forget.append(
                {name: event.optimizer.state[p]["exp_avg"].clone() for name, p in event.model.named_parameters()}
            )

    erase(accelerator, method, forget_remain, tmp_path, callbacks=(record,))

    mask = load_mask(tmp_path / "checkpoints" / MASK_FILE)
    assert mask.keys() == dict(family.denoiser.named_parameters()).keys()
    assert 0.0 < mask_density(mask) < 1.0
    assert len(forget_steps) == STEPS
    for step, (before, after) in enumerate(forget_steps):
        moved_salient = 0
        for name, keep in mask.items():
            assert torch.equal(after[name][~keep], before[name][~keep]), f"step {step}: non-salient {name} moved"
            moved_salient += int((after[name][keep] != before[name][keep]).sum())
        assert moved_salient > 0, f"step {step}: the forget step moved no salient weight"
    # The case where zeroing gradients is not enough: Adam carries non-zero first moments for non-salient weights
    # into the forget steps after the first remain step ...
    assert any(
        bool(moments[name][~keep].ne(0).any()) for moments in moments_before_forget for name, keep in mask.items()
    )
    # ... and the remain step, which is not masked, does move non-salient weights.
    before, after = remain_steps[0]
    assert any(not torch.equal(after[name][~keep], before[name][~keep]) for name, keep in mask.items())


def test_forget_gradients_are_masked_before_clipping_and_each_phase_uses_its_clip(
    accelerator, pipeline, forget_remain, tmp_path, monkeypatch
):
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(mask_batches=1, forget_max_grad_norm=0.5, remain_max_grad_norm=2.0), family)
    clip_grad_norm = accelerator.clip_grad_norm_
    clipped = []  # (max_norm, whether any non-salient weight still has a gradient)

    def recording_clip(parameters, max_norm, *args, **kwargs):
        mask = load_mask(tmp_path / "checkpoints" / MASK_FILE)  # written before the first step
        named = dict(family.denoiser.named_parameters())
        leaks = any(bool(named[name].grad[~keep].ne(0).any()) for name, keep in mask.items())
        clipped.append((max_norm, leaks))
        return clip_grad_norm(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(accelerator, "clip_grad_norm_", recording_clip)

    erase(accelerator, method, forget_remain, tmp_path)

    assert clipped == [(0.5, False), (2.0, True)] * STEPS


class PhaseTaggingSFROn(SFROn):
    """SFR-on that remembers which phase's loss is being computed, so a forward hook can attribute its inputs."""

    current_phase = None

    def loss(self, phase, *args, **kwargs):
        self.current_phase = phase.name
        try:
            return super().loss(phase, *args, **kwargs)
        finally:
            self.current_phase = None


def test_forget_step_never_uses_the_null_class_and_remain_step_drops_labels(
    accelerator, pipeline, forget_remain, tmp_path
):
    family = family_for(pipeline)
    label_dropout = 0.5
    # One denoiser call per forget step (the adversarial steps, on by default on the DDPM, would add their own).
    config = SFROnConfig(mask_batches=1, label_dropout=label_dropout, adversarial_steps=0)
    method = PhaseTaggingSFROn(config, family)
    labels_seen = {"forget": [], "remain": []}

    def record_labels(module, args, kwargs):
        if method.current_phase is not None:
            labels_seen[method.current_phase].append(kwargs["class_labels"].clone())

    handle = family.denoiser.register_forward_pre_hook(record_labels, with_kwargs=True)
    try:
        erase(accelerator, method, forget_remain, tmp_path)
    finally:
        handle.remove()

    assert len(labels_seen["forget"]) == STEPS
    for labels in labels_seen["forget"]:
        assert labels.tolist() == [FORGET_CLASS] * BATCH  # the real label, never the null class
    # The remain step drops exactly the labels whose uniform draw falls under label_dropout.
    sampler = BatchSampler(forget_remain[1], family, BATCH, seed=0, stream=REMAIN_STREAM)
    assert len(labels_seen["remain"]) == STEPS
    for step, labels in enumerate(labels_seen["remain"]):
        batch = sampler.batch(step)
        expected = torch.where(batch.uniform < label_dropout, NULL_CLASS, batch.labels)
        assert labels.tolist() == expected.tolist()
    all_remain = torch.cat(labels_seen["remain"])
    assert (all_remain == NULL_CLASS).any() and (all_remain != NULL_CLASS).any()


def test_remap_keeps_the_frozen_original_unchanged(accelerator, pipeline, forget_remain, tmp_path):
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(forget_loss="remap", alpha=1.0, mask_batches=1), family)
    frozen_before = parameters_of(method.original.module)
    trained_before = parameters_of(family.denoiser)
    terms = []

    erase(accelerator, method, forget_remain, tmp_path, callbacks=(lambda event: terms.append(event.terms),))

    assert method.original.module is not family.denoiser
    assert not any(p.requires_grad for p in method.original.module.parameters())
    for name, value in parameters_of(method.original.module).items():
        assert torch.equal(value, frozen_before[name]), f"frozen {name} changed"
    assert any(not torch.equal(v, trained_before[n]) for n, v in parameters_of(family.denoiser).items())
    assert "forget_remap" in terms[0]


def test_remain_loss_is_evaluated_at_the_weights_the_forget_step_produced(
    accelerator, pipeline, forget_remain, tmp_path
):
    config = SFROnConfig(mask_batches=1, gamma=1.0)
    family = family_for(pipeline)
    method = SFROn(config, family)
    state = {"current": copy.deepcopy(family.denoiser.state_dict())}
    before_forget, after_forget, remain_loss = {}, {}, {}

    def record(event):
        if event.phase.name == "forget":
            before_forget[event.step] = state["current"]
            after_forget[event.step] = copy.deepcopy(event.model.state_dict())
        else:
            remain_loss[event.step] = event.terms["loss"].item()
        state["current"] = copy.deepcopy(event.model.state_dict())

    erase(accelerator, method, forget_remain, tmp_path, callbacks=(record,))

    # Recompute the same remain batch from (seed, stream, step) on a separate copy of the model.
    replay_family = family_for(digits_ddpm_pipeline(seed=0))
    replay = SFROn(config, replay_family)
    model = replay_family.denoiser.train()
    sampler = BatchSampler(forget_remain[1], replay_family, BATCH, seed=0, stream=REMAIN_STREAM)

    def remain_loss_at(state_dict, step):
        model.load_state_dict(state_dict)
        with torch.no_grad():
            terms = replay.loss(
                replay.phases[1],
                model,
                sampler.batch(step),
                step=step,
                total_steps=STEPS,
                reduce_sum=lambda value: value,
                num_processes=1,
            )
        return terms["loss"].item()

    for step in range(STEPS):
        at_forget_weights = remain_loss_at(after_forget[step], step)
        at_previous_weights = remain_loss_at(before_forget[step], step)
        assert at_forget_weights == pytest.approx(remain_loss[step], rel=1e-6, abs=1e-7)
        # The check can tell the two apart: the forget step did change the remain loss.
        assert abs(at_previous_weights - remain_loss[step]) > 100 * abs(at_forget_weights - remain_loss[step])


def test_without_the_mask_no_mask_is_computed(accelerator, pipeline, forget_remain, tmp_path):
    method = SFROn(SFROnConfig(use_mask=False), family_for(pipeline))

    result = erase(accelerator, method, forget_remain, tmp_path)

    assert result.mask_statistics is None
    assert not (tmp_path / "checkpoints" / MASK_FILE).exists()


def test_every_step_reports_the_same_terms(accelerator, pipeline, forget_remain, tmp_path):
    method = SFROn(SFROnConfig(mask_batches=1), family_for(pipeline))
    keys = {"forget": set(), "remain": set()}

    def record(event):
        keys[event.phase.name].add(tuple(sorted(event.terms)))

    erase(accelerator, method, forget_remain, tmp_path, callbacks=(record,))

    assert len(keys["forget"]) == 1 and len(keys["remain"]) == 1, keys


def test_remap_others_targets_each_forget_sample_onto_a_condition_of_the_same_remain_batch(
    accelerator, pipeline, forget_remain, tmp_path
):
    """remap_others: the forget step (still masked, before the remain step) draws the remain batch the remain step
    uses, and the frozen original is asked, per forget sample, for one of that batch's conditions: never the
    forgotten class, never the null class, not all the same."""
    family = family_for(pipeline)
    # The remain step fits the data here, so every call of the frozen original is the forget step's.
    method = SFROn(SFROnConfig(forget_loss="remap_others", mask_batches=1, remain_target="data"), family)
    assert [(p.name, p.data, p.masked) for p in method.phases] == [
        ("forget", ("forget", "remain"), True),
        ("remain", "remain", False),
    ]
    frozen_conditions = []

    def record(module, args, kwargs):
        frozen_conditions.append(kwargs["class_labels"].clone())

    handle = method.original.module.register_forward_pre_hook(record, with_kwargs=True)
    try:
        erase(accelerator, method, forget_remain, tmp_path)
    finally:
        handle.remove()

    sampler = BatchSampler(forget_remain[1], family, BATCH, seed=0, stream=REMAIN_STREAM)
    assert len(frozen_conditions) == STEPS
    for step, conditions in enumerate(frozen_conditions):
        remain_labels = set(sampler.batch(step).labels.tolist())
        assert set(conditions.tolist()) <= remain_labels
        assert FORGET_CLASS not in conditions.tolist() and NULL_CLASS not in conditions.tolist()
    assert len(set(torch.cat(frozen_conditions).tolist())) > 1


def test_remap_others_takes_no_remap_target(pipeline):
    family = family_for(pipeline)
    with pytest.raises(ValueError, match="remap_others takes its targets from the remain set"):
        SFROn.check_config(SFROnConfig(forget_loss="remap_others", remap_target="seven"), family)
    SFROn.check_config(SFROnConfig(forget_loss="remap_others"), family)  # no target: fine


# --- the unconditional branch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("forget_loss", ["remap", "remap_others"])
def test_unconditional_forget_adds_the_null_branchs_pull_onto_the_original_guided_away_from_the_concept(
    pipeline, forget_remain, forget_loss
):
    """The added term's target is eps0(x_t, null) - (eps0(x_t, c) - eps0(x_t, null)); at the original's weights the
    null branch predicts eps0(x_t, null), so the term is exactly alpha * mean_i ||eps0(x_t, c_i) - eps0(x_t, null)||^2,
    on top of the remap, which is unchanged."""
    family = family_for(pipeline)
    plain = SFROn(SFROnConfig(forget_loss=forget_loss, adversarial_steps=0), family)
    both = SFROn(SFROnConfig(forget_loss=forget_loss, unconditional_forget=True, adversarial_steps=0), family)
    batch = forget_batch(family, forget_remain)
    remain = BatchSampler(forget_remain[1], family, BATCH, seed=0, stream=REMAIN_STREAM).batch(0)
    data = {"forget": batch, "remain": remain} if forget_loss == "remap_others" else batch
    kwargs = dict(step=0, total_steps=STEPS, reduce_sum=lambda t: t, num_processes=1)
    with torch.no_grad():
        with_branch = both.loss(both.phases[0], family.denoiser, data, **kwargs)
        without = plain.loss(plain.phases[0], family.denoiser, data, **kwargs)
        noisy, timesteps = family.noisy(family.encode(batch.images), batch.draw), batch.draw.timesteps
        concept = family.predict(family.denoiser, noisy, timesteps, batch.labels)
        null = family.predict(family.denoiser, noisy, timesteps, torch.full_like(batch.labels, NULL_CLASS))
    expected = forget_weight(0, STEPS, SFROnConfig().alpha, True) * per_sample_mse(concept, null).mean()
    assert expected.item() > 0
    assert torch.allclose(with_branch["loss"] - without["loss"], expected, rtol=1e-4)
    assert torch.equal(with_branch["forget_remap"], without["forget_remap"])  # the remap's own term as it was


def test_unconditional_forget_needs_a_remap(pipeline):
    family = family_for(pipeline)
    with pytest.raises(ValueError, match="ascent has none"):
        SFROn.check_config(SFROnConfig(forget_loss="ascent", unconditional_forget=True), family)
    SFROn.check_config(SFROnConfig(forget_loss="remap_others", unconditional_forget=True), family)


# --- robust SFR-on: the adversarial forget step ---------------------------------------------------------------------


def forget_batch(family, forget_remain):
    return BatchSampler(forget_remain[0], family, BATCH, seed=0, stream=0).batch(0)


def test_the_adversarial_embedding_draws_the_forget_batch_better_and_leaves_the_weights_alone(pipeline, forget_remain):
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(adversarial_steps=5, adversarial_step_size=0.05), family)
    batch = forget_batch(family, forget_remain)
    x0, labels = family.encode(batch.images), batch.labels
    embedding = method.adversarial_embedding(x0, labels, batch)

    def loss_with(candidate):
        with torch.no_grad(), family.condition_embedding_override([FORGET_CLASS], candidate):
            return float(family.diffusion_loss(family.denoiser, x0, labels, batch.draw).mean())

    start = family.condition_embedding(FORGET_CLASS)
    assert loss_with(embedding) < loss_with(start)
    assert (embedding - start).abs().max() <= 5 * 0.05 + 1e-6  # signed steps: at most steps × size per coordinate
    assert all(p.grad is None for p in family.denoiser.parameters())


@pytest.mark.parametrize("forget_loss", ["ascent", "remap_others"])
def test_the_adversarial_forget_loss_is_the_mean_of_the_real_and_the_adversarial_one(
    pipeline, forget_remain, forget_loss
):
    family = family_for(pipeline)
    plain = SFROn(SFROnConfig(forget_loss=forget_loss, adversarial_steps=0), family)
    robust = SFROn(SFROnConfig(forget_loss=forget_loss, adversarial_steps=2), family)
    batch = forget_batch(family, forget_remain)
    remain = BatchSampler(forget_remain[1], family, BATCH, seed=0, stream=REMAIN_STREAM).batch(0)
    data = {"forget": batch, "remain": remain} if forget_loss == "remap_others" else batch
    phase = robust.phases[0]
    kwargs = dict(step=0, total_steps=STEPS, reduce_sum=lambda t: t, num_processes=1)
    robust_terms = robust.loss(phase, family.denoiser, data, **kwargs)
    plain_terms = plain.loss(phase, family.denoiser, data, **kwargs)
    embedding = robust.adversarial_embedding(family.encode(batch.images), batch.labels, batch)
    with family.condition_embedding_override([FORGET_CLASS], embedding):
        at_adversary = plain.loss(phase, family.denoiser, data, **kwargs)
    expected = (plain_terms["loss"] + at_adversary["loss"]) / 2
    assert torch.allclose(robust_terms["loss"], expected, rtol=1e-5)
    prefix = "forget_mse" if forget_loss == "ascent" else "forget_remap"
    assert f"{prefix}_adversarial" in robust_terms and f"{prefix}_adversarial" not in plain_terms


def test_the_ddpm_and_sd_take_adversarial_steps_by_default_and_an_explicit_value_wins(pipeline):
    family = family_for(pipeline)
    assert family.name == "ddpm" and SFROn(SFROnConfig(), family).adversarial_steps == 6
    assert SFROn(SFROnConfig(adversarial_steps=0), family).adversarial_steps == 0
    assert SFROnConfig().adversarial_steps is None  # left to the family until erase() resolves it
    from sfr_diffusion.testing.layouts import dit_pipeline, stable_diffusion_pipeline, stable_diffusion_xl_pipeline

    sd = family_for(stable_diffusion_pipeline("tiny", seed=0))
    assert sd.name == "sd" and SFROn(SFROnConfig(), sd).adversarial_steps == 3
    assert SFROn(SFROnConfig(adversarial_steps=0), sd).adversarial_steps == 0
    for other in (dit_pipeline("tiny", seed=0), stable_diffusion_xl_pipeline("tiny", seed=0)):
        assert SFROn(SFROnConfig(), family_for(other)).adversarial_steps == 0  # off where not measured or no help


def test_adversarial_settings_are_checked():
    with pytest.raises(ValueError, match="adversarial_steps must be >= 0"):
        SFROnConfig(adversarial_steps=-1)
    with pytest.raises(ValueError, match="adversarial_step_size > 0"):
        SFROnConfig(adversarial_step_size=0.0)


def test_a_remain_step_that_distils_the_original_fits_its_predictions_not_the_data(pipeline, forget_remain):
    """remain_target="original": the remain loss is the distance to the frozen original's prediction on the same noisy
    images and (dropped) labels, so it is exactly zero, with zero gradients, until the weights move; the default
    fits the data's noise."""
    family = family_for(pipeline)
    method = SFROn(SFROnConfig(forget_loss="ascent", remain_target="original"), family)
    assert method.original is not None  # ascent needs no θ₀, the distilling remain step does
    remain = BatchSampler(forget_remain[1], family, BATCH, seed=0, stream=REMAIN_STREAM).batch(0)
    remain_phase = method.phases[1]
    kwargs = dict(step=0, total_steps=STEPS, reduce_sum=lambda t: t, num_processes=1)
    terms = method.loss(remain_phase, family.denoiser, remain, **kwargs)
    terms["loss"].backward()
    assert terms["loss"].item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in family.denoiser.parameters())
    with torch.no_grad():
        next(family.denoiser.parameters()).add_(0.01)  # the weights move: the original's predictions are the target
    moved = method.loss(remain_phase, family.denoiser, remain, **kwargs)["loss"]
    assert moved.item() > 0
    data = SFROn(SFROnConfig(forget_loss="ascent", remain_target="data"), family)
    data = data.loss(remain_phase, family.denoiser, remain, **kwargs)
    assert data["loss"].item() > moved.item()  # an untrained model is far from the data's noise
    with pytest.raises(ValueError, match="remain_target must be one of"):
        SFROnConfig(remain_target="teacher")
