"""Forget-remain balanced weight saliency (SPEC §1, saliency mask S)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sfr_diffusion.saliency import (
    check_mask_matches,
    diagonal_fisher,
    load_mask,
    mask_density,
    saliency_mask,
    save_mask,
    weight_groups,
)

# Entries chosen around the threshold: zero/zero (ratio exactly 1), equal values (exactly 1), 2x, 0.5x, x/0 (huge).
FISHER_FORGET = {
    "a": torch.tensor([0.0, 1e-3, 2.0, 0.5, 3.0, 0.0]),
    "b": torch.tensor([[4.0, 1.0], [1.0, 0.25]]),
}
FISHER_REMAIN = {
    "a": torch.tensor([0.0, 1e-3, 1.0, 1.0, 0.0, 5.0]),
    "b": torch.tensor([[1.0, 1.0], [2.0, 0.25]]),
}


@pytest.mark.parametrize(
    "gamma, expected_a, expected_b",
    [
        (0.0, [1, 1, 1, 1, 1, 1], [[1, 1], [1, 1]]),
        (0.4, [1, 1, 1, 1, 1, 0], [[1, 1], [1, 1]]),
        (1.0, [1, 1, 1, 0, 1, 0], [[1, 1], [0, 1]]),
        (1.5, [0, 0, 1, 0, 1, 0], [[1, 0], [0, 0]]),
        (10.0, [0, 0, 0, 0, 1, 0], [[0, 0], [0, 0]]),
    ],
)
def test_saliency_mask_thresholds_the_fisher_ratio(gamma, expected_a, expected_b):
    mask = saliency_mask(FISHER_FORGET, FISHER_REMAIN, gamma=gamma)

    assert mask.keys() == {"a", "b"}
    assert all(m.dtype == torch.bool for m in mask.values())
    assert mask["a"].tolist() == [bool(v) for v in expected_a]
    assert mask["b"].tolist() == [[bool(v) for v in row] for row in expected_b]


def test_saliency_mask_keeps_a_ratio_exactly_equal_to_gamma():
    # With ε = 0 the ratio 2/1 is exactly 2.0, so γ = 2 sits on the boundary and ≥ must keep it.
    mask = saliency_mask({"w": torch.tensor([2.0, 1.999])}, {"w": torch.tensor([1.0, 1.0])}, gamma=2.0, eps=0.0)

    assert mask["w"].tolist() == [True, False]


def test_saliency_mask_is_a_threshold_not_a_top_k():
    # Every ratio is ≥ γ: a threshold keeps them all, a top-k would drop some.
    forget = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    remain = {"w": torch.tensor([0.5, 0.5, 0.5, 0.5])}

    assert mask_density(saliency_mask(forget, remain, gamma=1.0)) == 1.0


def test_saliency_mask_rejects_different_parameter_sets():
    with pytest.raises(ValueError, match="different parameters"):
        saliency_mask({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_diagonal_fisher_is_the_mean_of_squared_batch_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]

    def loss_of(x, y):
        return (model(x) - y).pow(2).mean()

    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for x, y in batches:
        gradients = torch.autograd.grad(loss_of(x, y), list(model.parameters()))
        for (name, _), gradient in zip(model.named_parameters(), gradients, strict=True):
            expected[name] += gradient.pow(2) / len(batches)

    fisher = diagonal_fisher(model, (lambda x=x, y=y: loss_of(x, y) for x, y in batches))

    assert fisher.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name])
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_the_streamed_fisher_equals_the_one_from_stored_gradients_and_never_holds_them(checkpointing):
    """Squared as backward accumulates each gradient (and freed then) or after backward: the same estimate; streamed,
    no parameter has a gradient once its square is taken, so at most the ones in flight exist together."""
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    unet = digits_ddpm_pipeline(seed=0).unet
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 1, 8, 8, generator=generator), torch.randint(0, 10, (4,), generator=generator))
               for _ in range(2)]  # fmt: skip

    def losses():
        for x, labels in batches:
            yield lambda x=x, labels=labels: unet(x, torch.full((4,), 10), class_labels=labels).sample.pow(2).mean()

    grads_alive = []

    def backward(loss):
        loss.backward()
        grads_alive.append(sum(p.grad is not None for p in unet.parameters()))

    streamed = diagonal_fisher(unet, losses(), backward=backward)
    stored = diagonal_fisher(unet, losses(), streamed=False)

    assert grads_alive == [0, 0]
    for name, value in stored.items():
        torch.testing.assert_close(streamed[name], value, rtol=1e-6, atol=0)
    assert any(bool(value.any()) for value in stored.values())


def test_diagonal_fisher_averages_each_gradient_with_reduce_before_squaring():
    model = torch.nn.Linear(2, 1)
    halved = diagonal_fisher(model, [lambda: model(torch.ones(1, 2)).sum()], reduce=lambda grad: grad / 2)
    plain = diagonal_fisher(model, [lambda: model(torch.ones(1, 2)).sum()])
    for name, value in plain.items():
        torch.testing.assert_close(halved[name], value / 4)


def test_diagonal_fisher_skips_frozen_parameters_and_uses_the_given_backward():
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    calls = []

    def backward(loss):
        calls.append(loss.item())
        loss.backward()

    fisher = diagonal_fisher(model, [lambda: model(torch.ones(1, 2)).sum()] * 2, backward=backward)

    assert set(fisher) == {"weight"}
    assert len(calls) == 2


def test_diagonal_fisher_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        diagonal_fisher(torch.nn.Linear(2, 1), [])


def test_mask_round_trips_through_boolean_safetensors(tmp_path):
    mask = saliency_mask(FISHER_FORGET, FISHER_REMAIN, gamma=1.0)
    path = tmp_path / "mask.safetensors"

    save_mask(mask, path)

    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(mask)
        for name in f.keys():
            assert f.get_slice(name).get_dtype() == "BOOL"
            assert f.get_tensor(name).dtype == torch.bool
    loaded = load_mask(path)
    assert loaded.keys() == mask.keys()
    for name in mask:
        assert torch.equal(loaded[name], mask[name])


def test_save_mask_stores_other_dtypes_as_bool(tmp_path):
    path = tmp_path / "mask.safetensors"

    save_mask({"w": torch.tensor([0, 1, 1], dtype=torch.int64)}, path)

    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("w").dtype == torch.bool


def test_load_mask_rejects_a_non_boolean_file(tmp_path):
    path = tmp_path / "not_a_mask.safetensors"
    save_file({"w": torch.ones(3, dtype=torch.int64), "v": torch.ones(2, dtype=torch.bool)}, str(path))

    with pytest.raises(ValueError, match="not a boolean saliency mask"):
        load_mask(path)


@pytest.fixture
def small_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)  # frozen parameters need no mask entry
    return model


def full_mask(model):
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters() if p.requires_grad}


def test_check_mask_matches_accepts_a_matching_mask(small_model):
    check_mask_matches(full_mask(small_model), small_model)


def test_check_mask_matches_rejects_a_missing_name(small_model):
    mask = full_mask(small_model)
    del mask["0.bias"]

    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        check_mask_matches(mask, small_model)


def test_check_mask_matches_rejects_an_unexpected_name(small_model):
    mask = {**full_mask(small_model), "1.bias": torch.ones(1, dtype=torch.bool)}

    with pytest.raises(ValueError, match=r"unexpected \['1.bias'\]"):
        check_mask_matches(mask, small_model)


def test_check_mask_matches_rejects_a_wrong_shape(small_model):
    mask = full_mask(small_model)
    mask["0.weight"] = torch.ones(3, 2, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"0.weight has shape \(3, 2\), expected \(2, 3\)"):
        check_mask_matches(mask, small_model)


def test_the_forget_step_in_chunks_equals_one_step_and_holds_no_more_than_one_tensor():
    """Stepping the optimizer chunk by chunk (each chunk's non-salient weights held meanwhile) gives the very weights
    and Adam state of one step with every non-salient weight held, and copies at most the largest tensor's share."""
    from sfr_diffusion.training import ForgetMask

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(2):  # Adam moments from earlier steps, which would move non-salient weights
            model(torch.randn(8, 6)).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        model(torch.randn(8, 6)).pow(2).sum().backward()
        return model, optimizer

    torch.manual_seed(1)
    mask = ForgetMask.from_mask(
        {name: torch.rand(p.shape) < 0.5 for name, p in model_and_optimizer()[0].named_parameters()}
    )
    mask.keep["2.bias"] = torch.ones(3, dtype=torch.bool)  # one fully salient tensor
    mask = ForgetMask.from_mask(mask.keep)
    results = []
    for stepper in (mask.step, mask.step_at_once):
        model, optimizer = model_and_optimizer()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        mask.mask_gradients(model.named_parameters())
        stepper(optimizer, model.named_parameters())
        for name, param in model.named_parameters():
            assert torch.equal(param[~mask.keep[name]], before[name][~mask.keep[name]]), name
        state = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
        results.append(([p.detach().clone() for p in model.parameters()], state))
    (chunked, chunked_state), (at_once, at_once_state) = results
    assert all(torch.equal(a, b) for a, b in zip(chunked + chunked_state, at_once + at_once_state, strict=True))
    named = list(model.named_parameters())
    largest = max(int((~mask.keep[n]).sum()) for n, _ in named)
    chunks = mask.chunks(named)
    assert len(chunks) > 1 and [n for c in chunks for n, _ in c] == [n for n, _ in named]
    assert all(sum(int((~mask.keep[n]).sum()) for n, _ in chunk) <= largest for chunk in chunks)


def test_weight_groups_split_consecutive_parameters_evenly_and_never_empty():
    params = {"a": torch.zeros(6), "b": torch.zeros(2), "c": torch.zeros(2), "d": torch.zeros(10)}
    assert weight_groups(params, 1) == [["a", "b", "c", "d"]]
    assert weight_groups(params, 2) == [["a", "b", "c"], ["d"]]
    groups = weight_groups(params, 8)
    assert [name for group in groups for name in group] == list(params) and all(groups)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_fisher_measured_group_by_group_gives_the_same_mask_holding_one_group_at_a_time(lora, monkeypatch):
    """mask_groups=3: the same mask as in one pass (SFR-on decides each weight on its own estimates), each Fisher
    estimate covering about a third of the measured weights."""
    from sfr_diffusion import SFROnConfig, TrainingArguments, erase
    from sfr_diffusion import training as training_module
    from sfr_diffusion.digits.models import digits_ddpm_pipeline

    measured = []

    def recording_fisher(model, *args, **kwargs):
        fisher = diagonal_fisher(model, *args, **kwargs)
        measured.append(sum(f.numel() for f in fisher.values()))
        return fisher

    monkeypatch.setattr(training_module, "diagonal_fisher", recording_fisher)
    masks = {}
    for groups in (1, 3):
        pipe = digits_ddpm_pipeline(seed=0)
        pipe.set_progress_bar_config(disable=True)
        training = TrainingArguments(max_train_steps=1, forget_batch_size=4, remain_batch_size=4,
                                     lora_rank=2 if lora else None)  # fmt: skip
        result = erase(pipe, "three", method=SFROnConfig(mask_batches=1, mask_groups=groups), training=training,
                       evaluate=False)  # fmt: skip
        masks[groups] = result.mask
    (whole, whole_remain), parts = measured[:2], measured[2:]  # once for each set in one pass
    assert whole == whole_remain and len(parts) == 6 and parts[0::2] == parts[1::2]  # in three groups, twice each
    assert sum(parts[0::2]) == whole and max(parts) < 0.6 * whole
    assert masks[1].keys() == masks[3].keys()
    assert all(torch.equal(masks[1][name], masks[3][name]) for name in masks[1])
