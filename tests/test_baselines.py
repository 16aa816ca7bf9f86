"""Baselines in the shared framework: GA (plain ascent) and ESD (negative-guidance distillation)."""

import pytest
import torch
from accelerate.state import AcceleratorState

from sfr_diffusion.commands.erase import main
from sfr_diffusion.data import BatchSampler
from sfr_diffusion.families import family_for
from sfr_diffusion.losses import per_sample_mse
from sfr_diffusion.methods import ESD, GA, ESDConfig, GAConfig, get_method_class
from sfr_diffusion.training import TrainingArguments, run_erasure


def forget_batch(family, forget_remain, size=8):
    return BatchSampler(forget_remain[0], family, size, seed=0, stream=9).batch(0)


def call(method, batch):
    phase = method.phases[0]
    return method.loss(phase, method.family.denoiser, batch, step=0, total_steps=1, reduce_sum=lambda v: v,
                       num_processes=1)  # fmt: skip


def test_esd_target_is_the_original_guided_away_from_the_concept(pipeline, forget_remain):
    """At θ = θ₀ the ESD loss is exactly (1 + η)² ‖ε(x_t, c) − ε(x_t, ∅)‖²."""
    family = family_for(pipeline)
    method = ESD(ESDConfig(negative_guidance=2.0), family)
    batch = forget_batch(family, forget_remain)
    terms = call(method, batch)
    x_t, t = family.noisy(family.encode(batch.images), batch.draw), batch.draw.timesteps
    with torch.no_grad():
        conditional = family.predict(family.denoiser, x_t, t, batch.labels)
        unconditional = family.predict(family.denoiser, x_t, t, torch.full_like(batch.labels, family.null_class_id))
    expected = 9.0 * per_sample_mse(conditional, unconditional).mean()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_esd_targets_come_from_the_frozen_original(pipeline, forget_remain, accelerator, tmp_path):
    family = family_for(pipeline)
    method = ESD(ESDConfig(), family)
    frozen_before = {k: v.clone() for k, v in method.original.module.state_dict().items()}
    args = TrainingArguments(checkpoints_dir=str(tmp_path / "checkpoints"),
                             max_train_steps=3, forget_batch_size=8, remain_batch_size=8,
                             learning_rate=1e-2)  # fmt: skip
    run_erasure(accelerator=accelerator, method=method, forget=forget_remain[0], remain=forget_remain[1], args=args)
    assert all(torch.equal(v, method.original.module.state_dict()[k]) for k, v in frozen_before.items())
    assert any(not torch.equal(v, family.denoiser.state_dict()[k]) for k, v in frozen_before.items())


def test_ga_ascends_the_forget_loss_and_nothing_else(pipeline, forget_remain, accelerator, tmp_path):
    family = family_for(pipeline)
    method = GA(GAConfig(alpha=2.0), family)
    assert [phase.data for phase in method.phases] == ["forget"] and not method.uses_mask
    batch = forget_batch(family, forget_remain, size=64)
    terms = call(method, batch)
    assert terms["loss"].item() == pytest.approx(-2.0 * terms["forget_mse"].item(), rel=1e-6)
    before = terms["forget_mse"].item()
    args = TrainingArguments(checkpoints_dir=str(tmp_path / "checkpoints"),
                             max_train_steps=5, forget_batch_size=64, remain_batch_size=8,
                             learning_rate=1e-3)  # fmt: skip
    run_erasure(accelerator=accelerator, method=method, forget=forget_remain[0], remain=forget_remain[1], args=args)
    assert call(method, batch)["forget_mse"].item() > before


@pytest.mark.parametrize(("name", "config"), [("ga", GAConfig), ("esd", ESDConfig)])
def test_baselines_are_registered_and_validated(name, config):
    assert get_method_class(name).config_class is config
    with pytest.raises(ValueError):
        config(max_grad_norm=0.0)


def erase_command(argv: list[str]) -> dict:
    """The erase command's `main` in this process; returns what the export's unlearning_config.json records."""
    AcceleratorState._reset_state(True)
    try:
        return main(argv).config
    finally:
        AcceleratorState._reset_state(True)


def test_command_runs_esd_and_records_its_paper(tmp_path):
    summary = erase_command(["--method", "esd", "--negative_guidance", "3", "--max_train_steps", "2",
                            "--forget_batch_size", "8", "--remain_batch_size", "8", "--skip_eval",
                            "--output_dir", str(tmp_path / "esd")])  # fmt: skip
    assert summary["method"] == "esd" and "Gandikota" in summary["paper"]
    assert summary["method_config"] == {"negative_guidance": 3.0, "max_grad_norm": 1.0}
    assert summary["mask_statistics"] is None and "Gandikota" in (tmp_path / "esd" / "README.md").read_text()


def test_top_fraction_mask_is_one_global_threshold():
    from sfr_diffusion.saliency import mask_density, top_fraction_mask

    scores = {"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([[4.0, 2.0], [6.0, 0.0]])}
    mask = top_fraction_mask(scores, 3 / 7)
    assert mask["a"].tolist() == [False, True, False] and mask["b"].tolist() == [[True, False], [True, False]]
    assert mask_density(top_fraction_mask(scores, 1.0)) == 1.0
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mask(scores, 0.0)


def test_rl_relabels_forget_images_with_remain_conditions(pipeline, forget_remain):
    from sfr_diffusion.methods.base import random_remain_conditions

    family = family_for(pipeline)
    forget = forget_batch(family, forget_remain, size=64)
    remain = BatchSampler(forget_remain[1], family, 32, seed=0, stream=8).batch(0)
    wrong = random_remain_conditions(forget, remain)
    assert (wrong != 3).all() and set(wrong.tolist()) <= set(remain.labels.tolist()) and len(set(wrong.tolist())) > 3
    assert torch.equal(wrong, random_remain_conditions(forget, remain))


def test_rl_remaps_the_forget_condition_onto_a_wrong_ones_prediction(pipeline, forget_remain):
    """SalUn's diffusion form ‖ε_θ(x_t | c′) − ε_θ(x_t | c)‖²: the gradient flows through the forgotten side."""
    from sfr_diffusion.methods import RL, RLConfig
    from sfr_diffusion.methods.base import random_remain_conditions

    family = family_for(pipeline)
    model = family.denoiser
    method = RL(RLConfig(remain_weight=0.0, label_dropout=0.0), family)
    forget = forget_batch(family, forget_remain, size=16)
    remain = BatchSampler(forget_remain[1], family, 16, seed=0, stream=8).batch(0)
    model.zero_grad()
    terms = method.loss(method.phases[0], model, {"forget": forget, "remain": remain}, step=0, total_steps=1,
                        reduce_sum=lambda v: v, num_processes=1)  # fmt: skip
    x_t, t = family.noisy(family.encode(forget.images), forget.draw), forget.draw.timesteps
    wrong = random_remain_conditions(forget, remain)
    with torch.no_grad():
        expected = per_sample_mse(family.predict(model, x_t, t, forget.labels), family.predict(model, x_t, t, wrong))
    assert terms["forget_remap"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    terms["loss"].backward()
    embedding_grad = model.class_embedding.weight.grad
    assert embedding_grad[3].abs().sum() > 0  # the forgotten class's embedding moves...
    assert embedding_grad[sorted(set(wrong.tolist()))].abs().sum() == 0  # ...the wrong conditions' do not
    model.zero_grad()


def test_salun_moves_only_its_salient_weights(pipeline, forget_remain, accelerator, tmp_path):
    from sfr_diffusion.methods import SalUn, SalUnConfig
    from sfr_diffusion.saliency import load_mask

    family = family_for(pipeline)
    method = SalUn(SalUnConfig(mask_ratio=0.3, mask_batches=1), family)
    assert [phase.data for phase in method.phases] == [("forget", "remain")] and method.uses_mask
    before = {k: v.detach().clone() for k, v in family.denoiser.named_parameters()}
    args = TrainingArguments(checkpoints_dir=str(tmp_path / "checkpoints"),
                             max_train_steps=3, forget_batch_size=8, remain_batch_size=8,
                             learning_rate=1e-2)  # fmt: skip
    result = run_erasure(accelerator=accelerator, method=method, forget=forget_remain[0], remain=forget_remain[1],
                         args=args)  # fmt: skip
    assert result.mask_statistics["density"] == pytest.approx(0.3, abs=0.01)
    mask = load_mask(tmp_path / "checkpoints" / "saliency_mask.safetensors")
    after = dict(family.denoiser.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(after[name].detach()[~keep], before[name][~keep]), name
    assert any(not torch.equal(after[n].detach()[m], before[n][m]) for n, m in mask.items() if m.any())


def test_sfr_on_without_online_is_one_joint_step(pipeline, forget_remain):
    from sfr_diffusion.methods import SFROn, SFROnConfig

    family = family_for(pipeline)
    joint = SFROn(SFROnConfig(online=False, use_mask=False, temperature=0.0), family)  # the paper's "R" ablation
    assert [(p.name, p.data) for p in joint.phases] == [("joint", ("forget", "remain"))]
    batches = {"forget": forget_batch(family, forget_remain), "remain": forget_batch(family, forget_remain)}
    kwargs = dict(step=0, total_steps=1, reduce_sum=lambda v: v, num_processes=1)
    terms = joint.loss(joint.phases[0], family.denoiser, batches, **kwargs)
    online = SFROn(SFROnConfig(use_mask=False, temperature=0.0), family)
    forget = online.loss(online.phases[0], family.denoiser, batches["forget"], **kwargs)
    remain = online.loss(online.phases[1], family.denoiser, batches["remain"], **kwargs)
    assert terms["loss"].item() == pytest.approx((forget["loss"] + remain["loss"]).item(), rel=1e-5)


@pytest.mark.parametrize("options", [["--method", "salun"], ["--method", "rl"], ["--no_online", "--no_mask"]])
def test_command_runs_the_joint_methods(tmp_path, options):
    summary = erase_command([*options, "--max_train_steps", "2", "--forget_batch_size", "8", "--remain_batch_size",
                             "8", "--skip_eval", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert summary["steps"] == 2 and (tmp_path / "out" / "model_index.json").exists()
    assert (summary["mask_statistics"] is not None) == (options[-1] == "salun")
