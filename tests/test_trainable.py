"""The weight selection: which denoiser weights train, validated, and honoured by the optimizer."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from sfr_diffusion.families import family_for
from sfr_diffusion.methods import SFROn, SFROnConfig
from sfr_diffusion.testing.layouts import stable_diffusion_pipeline
from sfr_diffusion.training import TrainingArguments, run_erasure, select_trainable


def tiny_text_unet() -> UNet2DConditionModel:
    return stable_diffusion_pipeline("tiny", seed=0).unet


def test_cross_attention_selection_picks_exactly_the_attn2_layers():
    unet = tiny_text_unet()
    chosen = select_trainable(unet, "cross_attention")
    assert chosen and all(".attn2." in name for name in chosen)
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable == set(chosen)
    rest = select_trainable(unet, "no_cross_attention")
    assert set(rest).isdisjoint(chosen) and len(rest) + len(chosen) == len(list(unet.parameters()))


def test_empty_and_unknown_selections_are_errors(pipeline):
    with pytest.raises(ValueError, match="matches no parameter of UNet2DModel"):
        select_trainable(pipeline.unet, "cross_attention")  # a class-conditional UNet has no cross-attention
    with pytest.raises(ValueError, match="valid"):
        select_trainable(pipeline.unet, "attention_only")
    with pytest.raises(ValueError, match="trainable must be one of"):
        TrainingArguments(trainable="attention_only")


def test_frozen_weights_do_not_move_during_erasure(pipeline, forget_remain, accelerator, tmp_path, monkeypatch):
    """A selection that leaves ``up_blocks`` frozen: those weights must stay put while the others move."""
    from sfr_diffusion import training

    monkeypatch.setitem(training.TRAINABLE, "test_no_up_blocks", lambda name: not name.startswith("up_blocks."))
    before = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    args = TrainingArguments(checkpoints_dir=str(tmp_path / "checkpoints"), max_train_steps=2, forget_batch_size=4,
                             remain_batch_size=4, learning_rate=1e-2, trainable="test_no_up_blocks")  # fmt: skip
    method = SFROn(SFROnConfig(mask_batches=1), family_for(pipeline))
    forget, remain = forget_remain
    run_erasure(accelerator=accelerator, method=method, forget=forget, remain=remain, args=args)
    after = pipeline.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("up_blocks."))
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("up_blocks."))
