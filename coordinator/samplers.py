"""The optuna samplers and pruners a sweep's study uses (coordinator/sweeps.py drives the
study; this picks and tunes what asks it).

TPE is optuna's own sampler. Every finished trial makes the coordinator ask the next one,
with the Scheduler's lock held, so two things are kept across asks instead of recomputed on
each:
- the relative search space: optuna recomputes it per ask as the intersection of the
  distributions of the study's finished trials, rescanning every trial after the oldest
  running one (a sweep always has up to max_concurrent of those) and deep-copying it. Here
  each finished trial is folded into the intersection once.
- the finished trials' params in the estimators' internal form (to_internal_repr, read
  twice per sampled space and ask, for every trial): a finished trial's params never
  change, so each is converted once per search space. Running trials (the constant liar's)
  are converted on every ask, as optuna does.
The draws are optuna's: same seed and history, same params (tests/coordinator/
test_samplers.py compares them with the stock sampler's, conditional params included).
The overrides reach into TPESampler's private helpers (`_get_internal_repr`, `_get_params`),
hence optuna is pinned to the major version those tests ran on (pyproject.toml).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from tunefleet.spec import sweep as space
from tunefleet.v1 import spec_pb2

GRID_PARAM = "grid_point"
# The median pruner judges a trial once this many trials have finished.
_MEDIAN_STARTUP_TRIALS = 2
# The trials optuna's IntersectionSearchSpace(include_pruned=True) takes as finished.
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A sweep's trials share a handful of distributions: each JSON is decoded once. optuna
# only reads them (a trial's distributions are compared by value), so one object serves
# every trial that has it.
_distribution = functools.lru_cache(maxsize=1024)(json_to_distribution)


class GridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not stop the study when the grid is exhausted: its stop() works
    only inside study.optimize, and the sweep ends itself once max_trials have ended."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class TPESampler(optuna.samplers.TPESampler):
    """optuna's TPESampler (its defaults: multivariate, no groups) whose relative search
    space is kept up to date trial by trial rather than recomputed on every ask."""

    def __init__(self, *, seed: int | None = None):
        super().__init__(seed=seed)
        self._space: dict[str, BaseDistribution] | None = None  # None: no trial finished
        self._folded: set[int] = set()  # numbers of the finished trials in self._space
        # search space (its items) -> finished trial number -> its params' internal values
        # in the space's order, or None when it lacks one of them.
        self._reprs: dict[tuple, dict[int, tuple[float, ...] | None]] = {}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        # As TPESampler's without groups: the distributions shared by every COMPLETE or
        # PRUNED trial (equal by value), sorted by name, less the single-valued ones.
        if not self._is_multivariate(study):
            return {}
        for t in study._get_trials(deepcopy=False, use_cache=True):
            if t.state not in _FINISHED or t.number in self._folded:
                continue  # a finished trial's distributions never change: fold it once
            self._folded.add(t.number)
            if self._space is None:
                self._space = dict(t.distributions)
            else:
                self._space = {
                    name: d for name, d in self._space.items() if t.distributions.get(name) == d
                }
        # Not deep-copied as optuna's is: the sampler only reads distributions.
        return {name: d for name, d in sorted((self._space or {}).items()) if not d.single()}

    def _get_internal_repr(
        self,
        trials: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
        study: optuna.Study,
    ) -> dict[str, np.ndarray]:
        # TPESampler._get_internal_repr, with the finished trials' rows kept.
        known = self._reprs.setdefault(tuple(search_space.items()), {})
        values: dict[str, list[float]] = {name: [] for name in search_space}
        columns = list(values.values())
        for trial in trials:
            if trial.state.is_finished():
                if trial.number not in known:
                    known[trial.number] = self._internal_row(trial, search_space, study)
                row = known[trial.number]
            else:
                row = self._internal_row(trial, search_space, study)
            if row is not None:
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
        return {k: np.asarray(v) for k, v in values.items()}

    def _internal_row(
        self, trial: FrozenTrial, search_space: dict[str, BaseDistribution], study: optuna.Study
    ) -> tuple[float, ...] | None:
        params = self._get_params(trial, study)
        if not search_space.keys() <= params.keys():
            return None
        return tuple(d.to_internal_repr(params[name]) for name, d in search_space.items())


def suggest(trial: optuna.Trial, s: spec_pb2.SweepSpec) -> dict:
    """A trial's point of the space (field path -> value), its conditions applied: what
    the coordinator's study asks and what the sampler process (sampler_process.py) asks
    for it, by the same code, so that both see the same distributions."""
    chosen: dict = {}
    for path in space.order(s.space):
        p = s.space[path]
        if not space.active(p, chosen):
            continue  # its condition does not hold: the base job's value stays
        if p.type == "choice":
            chosen[path] = trial.suggest_categorical(path, space.choice_values(path, p))
        elif p.type == "int":
            chosen[path] = trial.suggest_int(path, int(p.low), int(p.high))
        else:
            chosen[path] = trial.suggest_float(path, p.low, p.high, log=p.type == "loguniform")
    return chosen


class Elsewhere(optuna.samplers.BaseSampler):
    """The sampler of a coordinator's study whose trials the sampler process draws: the
    coordinator records each drawn trial (add_trial) and never asks this study itself."""

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError("this sweep's trials are drawn in the sampler process")


def tell(
    study: optuna.Study, number: int, value: float | None = None, state: TrialState | None = None
) -> None:
    """Study.tell, without the deep copy of the trial it returns (which nobody reads here:
    ~0.2 ms a tell at 100 trials, on every trial's end)."""
    from optuna.study._tell import _tell_with_warning

    _tell_with_warning(study, number, value, state)


def new_study(
    s: spec_pb2.SweepSpec,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner | None = None,
    name: str | None = None,
) -> optuna.Study:
    """An in-memory study for the sweep (its direction from `mode`)."""
    with warnings.catch_warnings():  # optuna flags its newer samplers as experimental
        warnings.simplefilter("ignore")
        return optuna.create_study(
            direction="minimize" if s.mode == "min" else "maximize",
            sampler=sampler,
            pruner=pruner,
            study_name=name,
        )


def add_trial(
    study: optuna.Study,
    state: TrialState,
    value: float | None,
    params: dict,
    distributions: dict[str, str],
    intermediate: dict[int, float],
    system_attrs: dict | None = None,
) -> None:
    """Adds a trial as stored (its distributions as optuna's JSON): how a study is rebuilt
    from the trial rows, and how the sampler process's mirror learns of a trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params,
                distributions={k: _distribution(d) for k, d in distributions.items()},
                system_attrs=system_attrs,
                intermediate_values=intermediate,
            )
        )


def add_running(study: optuna.Study, params: dict, distributions: dict[str, str]) -> None:
    """Adds a RUNNING trial with these params, as an ask and its suggests would leave it,
    without a sampler; storage calls, not add_trial, which deep-copies a whole template
    trial (~0.15 ms a trial)."""
    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id)
    for name, value in params.items():
        d = _distribution(distributions[name])
        storage.set_trial_param(trial_id, name, d.to_internal_repr(value), d)


def sampler(s: spec_pb2.SweepSpec, grid_size: int, asked: int) -> optuna.samplers.BaseSampler:
    # A rebuilt study (after a restart) must not draw the first trials' values again: its
    # seed moves on by the trials already asked.
    seed = s.seed + asked
    if s.algorithm == "grid":
        # The grid's points are enumerated by tunefleet.spec.sweep (conditions included),
        # so optuna's grid is over their indices: GridSampler does not know conditions.
        return GridSampler({GRID_PARAM: list(range(grid_size))}, seed=seed)
    if s.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return TPESampler(seed=seed)


def pruner(s: spec_pb2.SweepSpec) -> optuna.pruners.BasePruner:
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=_MEDIAN_STARTUP_TRIALS)
    if s.pruner == "asha":
        return ASHAPruner()
    return optuna.pruners.NopPruner()


class ASHAPruner(optuna.pruners.SuccessiveHalvingPruner):
    """ASHA (reduction factor 4) whose first rung is the trials' first validation.

    Optuna's default minimum resource ('auto') is a hundredth of the steps of the first
    trial to *finish*, so nothing is pruned until one has: with max_concurrent trials
    training at once, all of them run almost to the end first, and the compute ASHA saves
    shrinks as a sweep spreads over more workers (replaying a 12-point grid's real curves:
    33 % of the grid's steps with 2 at once, 43 % with 4, 57 % with 6). Every trial of a
    sweep validates on the same cadence (its eval.every_steps, else each epoch), so the
    earliest step any trial has reported is known from the first report on, and does not
    move when the study is rebuilt after a restart. Rungs are then at that step times 4,
    16, ...: 35 % of the grid's steps on the same replay whatever the concurrency.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._min_resource is None and trial.intermediate_values:
            reported = [min(trial.intermediate_values)]
            for other in study.get_trials(deepcopy=False):
                if other.intermediate_values:
                    reported.append(min(other.intermediate_values))
            self._min_resource = max(1, min(reported))
        return super().prune(study, trial)
