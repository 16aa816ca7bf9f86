"""Mixed precision in erase(): the frozen parts (VAE, text encoder) and the frozen copy θ₀ that remap and ESD target
live in the weight dtype while the trained denoiser stays fp32 (STYLE rule 13); afterwards every component is as the
user had it (rule 12). On the tiny layouts of sfr_diffusion.testing.layouts, one or two iterations each."""

import gc

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from datasets import Dataset, Features, Image, Value

from sfr_diffusion import ESDConfig, SFROnConfig, TrainingArguments, erase
from sfr_diffusion.families import family_for
from sfr_diffusion.methods.esd import ESD
from sfr_diffusion.methods.sfr_on import SFROn
from sfr_diffusion.testing.layouts import dit_pipeline, image_size, stable_diffusion_pipeline

FROZEN_PARTS = {"sd": ("vae", "text_encoder"), "dit": ("vae",)}
DENOISER = {"sd": "unet", "dit": "transformer"}
CONCEPT = {"sd": "cat", "dit": "class 0"}
REMAP = SFROnConfig(forget_loss="remap", mask_batches=1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """erase() builds its own Accelerator, and accelerate refuses a second mixed precision in one process."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def tiny_pipeline(family: str):
    pipe = (stable_diffusion_pipeline if family == "sd" else dit_pipeline)("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def training_data(family: str, pipe, count: int = 4) -> Dataset:
    """Random images at the pipeline's size: captioned cat / dog (SD) or labelled class 0 / 1 (DiT)."""
    size = image_size(pipe)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    if family == "sd":
        captions = [("a photo of a cat", "a photo of a dog")[i % 2] for i in range(count)]
        features = Features({"image": Image(), "text": Value("string")})
        return Dataset.from_dict({"image": images, "text": captions}, features=features)
    features = Features({"image": Image(), "label": Value("int64")})
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]}, features=features)


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def component_state(pipe) -> dict:
    """Per module component: parameter dtypes, every submodule's training flag, every parameter's requires_grad."""
    return {
        name: (dtypes(c), [m.training for m in c.modules()], [p.requires_grad for p in c.parameters()])
        for name, c in pipe.components.items()
        if isinstance(c, torch.nn.Module)
    }


class TrainingSnapshot:
    """A callback that records, at the first optimizer step, what the pipeline and the method's frozen copy hold.

    The frozen copy is the one module of the denoiser's class that erase() created: found by comparing the objects
    alive before the call with those alive during it (no patching of the library)."""

    def __init__(self, pipe, family: str):
        self.pipe, self.family = pipe, family
        self.denoiser_class = type(getattr(pipe, DENOISER[family]))
        self.existing = self._alive()  # strong references, so no new object can take an old one's id
        self.seen: dict | None = None

    def _alive(self) -> list[torch.nn.Module]:
        gc.collect()
        return [obj for obj in gc.get_objects() if type(obj) is self.denoiser_class]

    def __call__(self, event) -> None:
        if self.seen is not None:
            return
        parts = {name: getattr(self.pipe, name) for name in FROZEN_PARTS[self.family]}
        moments = [t for state in event.optimizer.state.values() for t in state.values() if t.dim() > 0]
        self.seen = {
            "parts": {
                name: (dtypes(p), any(q.requires_grad for q in p.parameters()), p.training)
                for name, p in parts.items()
            },
            "denoiser": dtypes(event.model),
            "trained": {p.dtype for p in event.model.parameters() if p.requires_grad},
            "adam_moments": {t.dtype for t in moments},
            "copies": [
                (dtypes(m), any(p.requires_grad for p in m.parameters()), m.training)
                for m in self._alive()
                if not any(m is old for old in self.existing)
            ],
        }


def run(pipe, family: str, mixed_precision: str, method=REMAP, steps: int = 1, callbacks=(), original="copy"):
    training = TrainingArguments(max_train_steps=steps, forget_batch_size=2, remain_batch_size=2,
                                 mixed_precision=mixed_precision, original=original)  # fmt: skip
    data = training_data(family, pipe)
    return erase(pipe, CONCEPT[family], method=method, data=data, training=training, evaluate=False,
                 callbacks=callbacks)  # fmt: skip


@pytest.mark.parametrize("family", ["sd", "dit"])
def test_bf16_freezes_the_frozen_parts_and_the_remap_copy_in_bf16_and_trains_in_fp32(family):
    pipe = tiny_pipeline(family)
    snapshot = TrainingSnapshot(pipe, family)
    run(pipe, family, "bf16", callbacks=(snapshot,))

    seen = snapshot.seen
    assert seen is not None, "no PhaseEvent reached the callback"
    for name in FROZEN_PARTS[family]:
        assert seen["parts"][name] == ({torch.bfloat16}, False, False), f"{name}: (dtypes, requires_grad, training)"
    assert seen["denoiser"] == {torch.float32} and seen["trained"] == {torch.float32}
    assert seen["adam_moments"] == {torch.float32}
    assert seen["copies"] == [({torch.bfloat16}, False, False)], "θ₀: one frozen bf16 copy in eval mode"


@pytest.mark.parametrize("mixed_precision", ["bf16", "no"])
def test_a_precomputed_original_makes_no_copy_of_the_denoiser(mixed_precision):
    pipe = tiny_pipeline("sd")
    snapshot = TrainingSnapshot(pipe, "sd")
    run(pipe, "sd", mixed_precision, callbacks=(snapshot,), original="precomputed")
    assert snapshot.seen is not None and snapshot.seen["copies"] == [], "θ₀ precomputed: no module but the denoiser"


@pytest.mark.parametrize("family", ["sd", "dit"])
def test_no_mixed_precision_keeps_everything_in_fp32(family):
    pipe = tiny_pipeline(family)
    snapshot = TrainingSnapshot(pipe, family)
    run(pipe, family, "no", callbacks=(snapshot,))

    seen = snapshot.seen
    for name in FROZEN_PARTS[family]:
        assert seen["parts"][name] == ({torch.float32}, False, False), name
    assert seen["denoiser"] == seen["trained"] == seen["adam_moments"] == {torch.float32}
    assert seen["copies"] == [({torch.float32}, False, False)]


def test_esd_copy_follows_the_weight_dtype_too():
    pipe = tiny_pipeline("sd")
    snapshot = TrainingSnapshot(pipe, "sd")
    run(pipe, "sd", "bf16", method=ESDConfig(), callbacks=(snapshot,))
    assert snapshot.seen["copies"] == [({torch.bfloat16}, False, False)]
    assert snapshot.seen["trained"] == {torch.float32}


@pytest.mark.parametrize("mixed_precision", ["bf16", "no"])
@pytest.mark.parametrize("family", ["sd", "dit"])
def test_after_erase_every_component_has_its_dtype_modes_and_requires_grad_back(family, mixed_precision):
    pipe = tiny_pipeline(family)
    # A user's state that the erasure must not "fix": a frozen part trainable and in training mode, some denoiser
    # weights frozen by the user.
    pipe.vae.train()
    denoiser = getattr(pipe, DENOISER[family])
    for i, param in enumerate(denoiser.parameters()):
        param.requires_grad_(i % 3 != 0)
    if family == "sd":
        pipe.text_encoder.requires_grad_(False)
    before = component_state(pipe)

    result = run(pipe, family, mixed_precision, steps=2)
    assert result.steps == 2
    assert component_state(pipe) == before


def test_a_bf16_pipeline_trains_in_fp32_and_is_given_back_in_bf16():
    """Trainable weights are fp32 whatever the pipeline was loaded in; the user's dtype comes back afterwards."""
    pipe = tiny_pipeline("sd").to(torch.bfloat16)
    before = component_state(pipe)
    snapshot = TrainingSnapshot(pipe, "sd")
    run(pipe, "sd", "bf16", callbacks=(snapshot,))
    assert snapshot.seen["trained"] == {torch.float32}
    assert snapshot.seen["parts"]["text_encoder"][0] == {torch.bfloat16}
    assert snapshot.seen["copies"] == [({torch.bfloat16}, False, False)]
    assert component_state(pipe) == before


@pytest.mark.parametrize("method_class, config", [(SFROn, REMAP), (ESD, ESDConfig())], ids=["remap", "esd"])
def test_the_frozen_copy_is_made_in_the_weight_dtype_of_the_preparation(method_class, config):
    pipe = tiny_pipeline("sd")
    family = family_for(pipe)
    with family.prepared_for_training(torch.bfloat16):
        method = method_class(config, family, anchor="")
        assert dtypes(method.original.module) == {torch.bfloat16} and method.original.module is not pipe.unet
        assert dtypes(pipe.unet) == {torch.float32}  # the copy was cast, not the denoiser it was taken from
    assert family.frozen_dtype == torch.float32
    assert dtypes(method_class(config, family, anchor="").original.module) == {torch.float32}  # outside: fp32


def test_a_bf16_erasure_gives_back_the_frozen_parts_bit_for_bit():
    """Cast down for the erasure, the VAE and text encoder must come back as the user's fp32 weights, not their bf16
    roundings cast back up (what the export would then ship)."""
    pipe = tiny_pipeline("sd")
    original = {
        name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in FROZEN_PARTS["sd"]
    }
    run(pipe, "sd", "bf16")
    for name, weights in original.items():
        current = getattr(pipe, name).state_dict()
        changed = [k for k, v in weights.items() if not torch.equal(v, current[k])]
        assert not changed, f"{name}: {len(changed)} of {len(weights)} tensors were rounded, e.g. {changed[:2]}"


def test_copy_in_dtype_equals_a_cast_copy_and_shares_nothing():
    """The frozen copy is made directly in the weight dtype: the same values as copying then casting, new storage,
    the original untouched; in fp32 an exact copy."""
    import copy

    from sfr_diffusion.families import copy_in_dtype
    from sfr_diffusion.testing.layouts import stable_diffusion_pipeline

    unet = stable_diffusion_pipeline("tiny").unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    for dtype in (torch.bfloat16, torch.float32):
        copied, reference = copy_in_dtype(unet, dtype), copy.deepcopy(unet).to(dtype)
        for (name, tensor), (_, expected) in zip(
            copied.state_dict().items(), reference.state_dict().items(), strict=True
        ):
            assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), name
        originals = {t.data_ptr() for t in unet.state_dict().values()}
        assert not originals & {t.data_ptr() for t in copied.state_dict().values()}
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in unet.state_dict().items())


def test_weights_that_do_not_train_are_frozen_parts_in_bf16_and_come_back_exactly():
    """With trainable="cross_attention" the rest of the UNet is frozen: under bf16 it is held in bf16 like the VAE
    (no per-forward autocast copy), the cross-attention weights train in fp32, and after erase() the frozen weights
    are the original fp32 values, bit for bit, while the trained ones moved."""
    pipe = tiny_pipeline("sd")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    seen = {}

    def record(event):
        for name, param in pipe.unet.named_parameters():
            seen.setdefault(name, (param.dtype, param.requires_grad))

    training = TrainingArguments(max_train_steps=1, forget_batch_size=2, remain_batch_size=2, mixed_precision="bf16",
                                 trainable="cross_attention")  # fmt: skip
    erase(pipe, CONCEPT["sd"], method=REMAP, data=training_data("sd", pipe), training=training, evaluate=False,
          callbacks=(record,))  # fmt: skip
    trained = {name for name in seen if ".attn2." in name}
    assert trained and all(seen[name] == (torch.float32, True) for name in trained)
    assert all(seen[name] == (torch.bfloat16, False) for name in seen if name not in trained)
    after = pipe.unet.state_dict()
    assert all(after[k].dtype == torch.float32 for k in after)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in trained)
    assert any(not torch.equal(after[k], before[k]) for k in trained)


def test_no_cudnn_attention_turns_cudnn_attention_off_while_erasing_only():
    from sfr_diffusion.commands.erase import parse_args
    from sfr_diffusion.training import attention_backends

    args = parse_args(["--pretrained_model_name_or_path", "x", "--concept", "c", "--no_cudnn_attention"])
    assert args.cudnn_attention is False and parse_args(["--concept", "c"]).cudnn_attention is True

    assert torch.backends.cuda.cudnn_sdp_enabled(), "torch's default"
    seen = []
    pipe = tiny_pipeline("sd")
    training = TrainingArguments(max_train_steps=2, forget_batch_size=2, remain_batch_size=2, cudnn_attention=False)
    erase(pipe, CONCEPT["sd"], method=REMAP, data=training_data("sd", pipe), training=training, evaluate=False,
          callbacks=(lambda event: seen.append(torch.backends.cuda.cudnn_sdp_enabled()),))  # fmt: skip
    assert seen and not any(seen), "cuDNN attention was on during an optimizer step"
    assert torch.backends.cuda.cudnn_sdp_enabled(), "torch's setting put back after erase()"

    with pytest.raises(RuntimeError), attention_backends(cudnn=False):  # put back when the erasure fails, too
        raise RuntimeError
    assert torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # a user who turned it off keeps it off
    try:
        with attention_backends(cudnn=True):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
