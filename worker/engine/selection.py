"""Which evaluated step is exported: the best by `eval.metric`, ties broken toward the model
that is best by the loss, then toward the later step.

Why ties need a rule: accuracy and macro F1 saturate. On an easy task every evaluation may
score macro_f1 = 1.0, and "first strictly better wins" then exports the least-trained model
(step 10, eval loss 0.587, instead of step 60, eval loss 0.013). So:

- metric accuracy / macro_f1: higher wins; on a tie the lower eval loss wins; on a tie of
  both, the later step (it trained longer on the same evidence).
- metric loss: lower wins; on a tie, the later step.

Ties: accuracy and macro F1 are ratios of counts, so two evaluations that classify the same
examples alike give the same float, and real differences are at least 1/N of the eval set.
Macro F1 is a mean of per-class ratios, though, and the same value reached through other
counts can differ in the last bits; a relative tolerance of 1e-9 (far below any 1/N) absorbs
that noise and nothing else. The loss is a continuous mean: only exact equality is a tie.

Pure and torch-free: the trainer feeds it each evaluation (`track`) and asks it why the
exported step was chosen (`reason`); the state lives in TrainerState (checkpointed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

RATIO_TOLERANCE = 1e-9


class SelectionState(Protocol):
    """The best-so-far fields of TrainerState."""

    best_value: float | None
    best_step: int
    best_metrics: dict[str, float]
    best_tied_steps: list[int]
    evals_since_best: int
    global_step: int


def same_value(name: str, a: float, b: float) -> bool:
    """Whether two values of metric `name` are a tie (see the module docstring)."""
    if name == "loss":
        return a == b
    return math.isclose(a, b, rel_tol=RATIO_TOLERANCE, abs_tol=RATIO_TOLERANCE)


def _improves(name: str, new: float, old: float) -> bool:
    return new < old if name == "loss" else new > old


def track(state: SelectionState, name: str, step: int, metrics: Mapping[str, float]) -> bool:
    """Record the evaluation of `step`; True when it becomes the best (to save its weights).

    An evaluation with a non-finite figure never becomes the best. Early stopping counts
    evaluations without improvement: a tie won on a lower loss is one (the model got better
    while the metric stayed saturated); a tie won only by being later is not, so a run that
    stopped learning still stops.
    """
    if not all(math.isfinite(v) for v in metrics.values()):
        state.evals_since_best += 1
        return False
    value = metrics[name]
    tied: list[int] = []
    if state.best_value is None or state.best_step < 0:
        wins = improved = True
    elif same_value(name, value, state.best_value):
        new_loss, best_loss = metrics["loss"], state.best_metrics.get("loss", math.inf)
        wins = name == "loss" or not new_loss > best_loss
        improved = name != "loss" and new_loss < best_loss
        # The tie's loser joins the list of steps the exported one tied with.
        tied = [*state.best_tied_steps, state.best_step if wins else step]
    else:
        wins = improved = _improves(name, value, state.best_value)
    state.evals_since_best = 0 if improved else state.evals_since_best + 1
    if not wins:
        if tied:
            state.best_tied_steps = tied
        return False
    state.best_value, state.best_step, state.best_metrics = value, step, dict(metrics)
    state.best_tied_steps = tied
    return True


def tie_note(state: SelectionState, name: str) -> str:
    """How the best step won its ties ("" when it had none), e.g. "tied with steps 10, 30;
    lowest eval loss 0.0130"."""
    ties = sorted(state.best_tied_steps)
    if not ties:
        return ""
    tied = f"tied with step{'s' if len(ties) > 1 else ''} {_steps(ties)}"
    if name == "loss":
        return f"{tied}; the later step"
    return f"{tied}; lowest eval loss {state.best_metrics['loss']:.4f}"


# A saturated metric ties at every evaluation: past this many steps the list is cut to its
# ends (a run of 3,000 steps, evaluated every 10, had one log line of 300 step numbers).
_MAX_LISTED_TIES = 6


def _steps(ties: list[int]) -> str:
    if len(ties) <= _MAX_LISTED_TIES:
        return ", ".join(str(s) for s in ties)
    ends = [*ties[:3], "...", *ties[-2:]]
    return ", ".join(str(s) for s in ends) + f" ({len(ties)} steps)"


def reason(state: SelectionState, name: str) -> str:
    """Why `state.best_step` is the one exported, e.g. "macro_f1 1.0000 (tied with steps
    10, 30; lowest eval loss 0.0130)", or "best macro_f1 0.9800" without ties."""
    note = tie_note(state, name)
    value = f"{name} {state.best_value:.4f}"
    return f"{value} ({note})" if note else f"best {value}"


def load_selected(
    model: Any,
    state: SelectionState,
    name: str,
    best_file: Path,
    *,
    validated: bool,
    load: Callable[[Any, Path], None],
) -> dict:
    """Load the best evaluated weights (`best_file`) into `model` unless it holds them;
    returns which step is exported and why: {"step": int, "reason": str}. Without a best
    (no validation set, or no evaluation with every figure finite) the last step is."""
    if state.best_step >= 0 and best_file.is_file():
        if state.best_step != state.global_step:  # else the weights in memory are the best
            load(model, best_file)  # RunWeights.load: the file may hold the trained part only
        return {"step": state.best_step, "reason": reason(state, name)}
    why = "no finite evaluation" if validated else "no validation set"
    return {"step": state.global_step, "reason": f"the last step ({why})"}
