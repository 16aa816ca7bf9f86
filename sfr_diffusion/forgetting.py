"""When a concept counts as forgotten: the rule every benchmark, report and early stop shares.

A tracked evaluation is a record ``{"step": n, "FA": ..., "RA": ..., ...}`` (see
:attr:`sfr_diffusion.training.TrainingOutcome.history`). It *satisfies the rule* when FA ≤ 1% (`FA_TARGET`) while
RA stays within 1 point of the base model's (`RA_TOLERANCE`). A concept is forgotten from the first evaluation after
which the rule holds at every later one: a run whose FA touches 0 once and climbs back has not forgotten, however
early the dip (a single lucky draw of the judged samples is not forgetting). Each tracked evaluation draws fresh
noise (:func:`evaluation_seed`), so "held at every later evaluation" is held over independent draws.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

FA_TARGET = 0.01  # FA ≤ 1%: at most 1 in 100 samples generated for the erased concept is judged to show it
RA_TOLERANCE = 0.01  # RA ≥ the base model's − 1 point
# Judge accuracies are float32 means (e.g. 441/450): a share exactly on a boundary must count as on it, whatever the
# rounding of `base_ra - RA_TOLERANCE`. Far below the resolution of any sample count we judge.
_SLACK = 1e-6
# Separates the seeds of tracked evaluations (see evaluation_seed): any fixed entropy would do.
_EVALUATION_STREAM = 0x5EED


def is_forgotten(record: Mapping, base_ra: float) -> bool:
    """Whether one evaluation satisfies the rule: FA ≤ `FA_TARGET` and RA ≥ `base_ra` − `RA_TOLERANCE`.

    A record without FA or RA (an evaluator that measured none, e.g. a text concept that names no digit) is an
    error: nothing can be said about forgetting from it.
    """
    fa, ra = record.get("FA"), record.get("RA")
    if fa is None or ra is None:
        raise ValueError(
            f"Evaluation at step {record.get('step', '?')} has no FA or RA ({sorted(record)}): whether the concept "
            "is forgotten needs both (the digits world judges digits only)."
        )
    return fa <= FA_TARGET + _SLACK and ra >= base_ra - RA_TOLERANCE - _SLACK


def held_for(history: Sequence[Mapping], base_ra: float) -> int:
    """How many evaluations at the end of `history` satisfy the rule consecutively (0 if the last one does not)."""
    count = 0
    for record in reversed(history):
        if not is_forgotten(record, base_ra):
            break
        count += 1
    return count


def iterations_to_forget(history: Sequence[Mapping], base_ra: float) -> int | None:
    """The step of the first evaluation from which the rule holds at every later evaluation (that one included).

    None when the last evaluation does not satisfy it: the run ended not forgotten, whatever it reached before.
    A run that satisfies the rule, loses it and regains it counts from the regain.
    """
    count = held_for(history, base_ra)
    return history[len(history) - count]["step"] if count else None


def evaluation_seed(seed: int, step: int | None = None) -> int:
    """The seed of the samples judged at tracked evaluation `step` of a run seeded `seed`.

    Step 0 and None (the evaluations before and after erasing) use `seed` itself, so the base model is judged on the
    same noise with or without tracking, and "before" and "after" are a paired comparison. Every later step draws
    fresh noise, a pure function of (seed, step): repeated evaluations are independent draws (the same seed each
    time would let one lucky draw decide "forgotten"), and a resumed run judges each step as the uninterrupted run
    does.
    """
    if not step:
        return seed
    return int(np.random.SeedSequence([_EVALUATION_STREAM, seed, step]).generate_state(1)[0])


def default_guidance_scale(pipeline) -> float:
    """The guidance scale a pipeline samples with when not told (DiT 4.0, Stable Diffusion 7.5, our DDPM 1.0)."""
    parameter = inspect.signature(type(pipeline).__call__).parameters.get("guidance_scale")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{type(pipeline).__name__} takes no guidance_scale with a default: nothing to sweep.")
    return float(parameter.default)


def sweep_guidance(evaluate: Callable[[float], dict], scales: Iterable[float], default_guidance: float) -> dict:
    """Evaluate at every guidance scale in `scales` and at `default_guidance`; the worst case over them.

    A concept erased at one guidance can come back at another (stronger guidance amplifies whatever conditional
    signal is left), so forgetting is reported at its worst: the highest FA and the lowest RA over the scales.

    Returns ``{"per_guidance": {"1.0": metrics, ...}, "default_guidance": g, "FA_worst", "RA_worst",
    "worst_guidance"}``, scales in ascending order. ``worst_guidance`` is the scale of the highest FA (ties: the
    lower RA, then the lower scale), or of the lowest RA when no FA was measured; ``FA_worst`` is then None.
    """
    chosen = sorted({float(s) for s in scales} | {float(default_guidance)})
    if any(s < 0 for s in chosen):
        raise ValueError(f"Guidance scales must be >= 0, got {chosen}.")
    per_guidance = {str(s): evaluate(s) for s in chosen}
    fas = [m["FA"] for m in per_guidance.values() if m.get("FA") is not None]
    has_fa = len(fas) == len(per_guidance)

    def badness(scale: float) -> tuple:
        metrics = per_guidance[str(scale)]
        return (metrics["FA"] if has_fa else 0.0, -metrics["RA"], -scale)

    worst = max(chosen, key=badness)
    return {
        "per_guidance": per_guidance,
        "default_guidance": float(default_guidance),
        "FA_worst": max(fas) if has_fa else None,
        "RA_worst": min(m["RA"] for m in per_guidance.values()),
        "worst_guidance": worst,
    }


def forgotten_at_every_guidance(sweep: Mapping, base_sweep: Mapping) -> bool:
    """Whether the rule holds at every guidance scale of `sweep` (a :func:`sweep_guidance` result), each scale's RA
    against the base model's RA at that same scale in `base_sweep` (stronger guidance changes RA by itself)."""
    base = base_sweep["per_guidance"]
    missing = sorted(set(sweep["per_guidance"]) - set(base))
    if missing:
        raise ValueError(f"The base model was not measured at guidance {missing}: nothing to compare RA with.")
    return all(is_forgotten(metrics, base[scale]["RA"]) for scale, metrics in sweep["per_guidance"].items())
