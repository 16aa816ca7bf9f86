"""θ₀, the original denoiser, where a loss needs its predictions: the targets of remap and ESD and of the remain step
that distils the original.

One interface, ``predict(x_t, timesteps, conditions)`` (no gradient), three ways to have it:

- ``copy``: a frozen copy of the denoiser, in the weight dtype under mixed precision; one more denoiser in the
  accelerator's memory, predicting as training goes;
- the denoiser with its LoRA adapters switched off (:class:`sfr_diffusion.adapters.WithoutAdapters`): no copy, used
  whenever adapters train;
- ``precomputed``: no copy either. Before the first step, while the denoiser still *is* θ₀, the trainer asks every
  iteration's questions (:meth:`PrecomputedOriginal.recording`); the answers are kept on the CPU and given back, in
  the same order, when training asks again. They cost host memory (iterations × batch × one sample, see
  :attr:`PrecomputedOriginal.nbytes`) and the early stop of ``--stop_when_forgotten`` wastes those not asked for.
"""

from __future__ import annotations

import contextlib
from collections import deque

import torch

from .adapters import WithoutAdapters, has_adapters
from .families import copy_in_dtype

ORIGINALS = ("precomputed", "copy")  # how a run has θ₀ when full weights train (TrainingArguments.original)


class FrozenOriginal:
    """θ₀ as a module that never trains (a frozen copy, or the denoiser with its adapters off)."""

    def __init__(self, family, module: torch.nn.Module):
        self.family, self.module = family, module

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        self.module.to(x_t.device)
        with torch.no_grad():
            return self.family.predict(self.module, x_t, timesteps, conditions)


class PrecomputedOriginal:
    """θ₀'s predictions, made by the denoiser before its first step and given back in the order they were made.

    Each prediction is kept with the question it answers (timesteps, conditions, the input's shape and sum), and a
    question asked out of order is an error, never a wrong target."""

    def __init__(self, family):
        self.family = family
        self._answers: deque[tuple[tuple, torch.Tensor]] = deque()
        self._recording_from: torch.nn.Module | None = None

    @contextlib.contextmanager
    def recording(self, denoiser: torch.nn.Module):
        """Answer (and keep) every question asked meanwhile with `denoiser`, which must still be the original."""
        training = denoiser.training
        denoiser.eval()  # as a frozen copy would run: no dropout
        self._recording_from = denoiser
        try:
            yield self
        finally:
            self._recording_from = None
            denoiser.train(training)

    def discard(self) -> None:
        """Forget the answers not given back (a run that stopped early)."""
        self._answers.clear()

    @property
    def pending(self) -> int:
        """Answers made and not yet given back."""
        return len(self._answers)

    @property
    def nbytes(self) -> int:
        return sum(answer.numel() * answer.element_size() for _, answer in self._answers)

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        question = _question(x_t, timesteps, conditions)
        if self._recording_from is not None:
            with torch.no_grad():
                answer = self.family.predict(self._recording_from, x_t, timesteps, conditions)
            self._answers.append((question, answer.detach().cpu()))
            return answer
        if not self._answers:
            raise RuntimeError(
                "θ₀ was asked for a prediction that was not precomputed: the run went past the iterations recorded "
                "before the first step."
            )
        recorded, answer = self._answers.popleft()
        if not _same_question(recorded, question):
            raise RuntimeError(
                "θ₀ was asked a question other than the one precomputed for this point of training (different "
                "timesteps, conditions or inputs): the batches were not drawn as they were before the first step."
            )
        return answer.to(x_t.device)


def _question(x_t: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor) -> tuple:
    conditions = conditions.detach().cpu() if torch.is_tensor(conditions) else conditions
    return (
        tuple(x_t.shape),
        timesteps.detach().cpu().tolist(),
        conditions.tolist() if torch.is_tensor(conditions) else conditions,
        float(x_t.detach().double().sum()),
        float(x_t.detach().double().abs().sum()),
    )


def _same_question(recorded: tuple, asked: tuple) -> bool:
    """Equal timesteps, conditions and shape; inputs equal up to the last bits of a recomputed VAE encoding."""
    if recorded[:3] != asked[:3]:
        return False
    scale = max(recorded[4], 1.0)
    return abs(recorded[3] - asked[3]) <= 1e-4 * scale and abs(recorded[4] - asked[4]) <= 1e-4 * scale


def make_original(family, how: str = "copy") -> FrozenOriginal | PrecomputedOriginal:
    """θ₀ for a method's targets: the denoiser with its adapters off when adapters train (whatever `how` says),
    else a frozen copy in the family's frozen dtype (``copy``) or predictions recorded before the first step
    (``precomputed``, recorded by the trainer)."""
    if how not in ORIGINALS:
        raise ValueError(f"original must be one of {ORIGINALS}, got {how!r}.")
    if has_adapters(family.denoiser):
        return FrozenOriginal(family, WithoutAdapters(family.denoiser))
    if how == "precomputed":
        return PrecomputedOriginal(family)
    return FrozenOriginal(family, copy_in_dtype(family.denoiser, family.frozen_dtype).requires_grad_(False).eval())
