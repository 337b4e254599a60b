"""How a progress report is told apart from a measurement on the wire.

The engine reports its long stretches (training steps, building the frozen-feature
cache, evaluating, compressing) as metrics events whose phase is ``progress/<stage>``;
the coordinator stores every one of them but keeps them out of its step marks, and a
follower's bar draws them. Three rooms read the convention, so it is spelled once, here.
"""

from __future__ import annotations

PREFIX = "progress/"
STAGES = ("training", "caching", "evaluating", "compressing")


def phase_of(stage: str) -> str:
    """The metrics phase a progress report of `stage` carries."""
    return PREFIX + stage


def is_progress(phase: str) -> bool:
    """A progress report's phase, not a measurement's (train, eval, test...)."""
    return phase.startswith(PREFIX)


def stage_of(phase: str) -> str | None:
    """The stage of a progress phase ("progress/caching" -> "caching"), else None."""
    return phase[len(PREFIX) :] if is_progress(phase) else None
