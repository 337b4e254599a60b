"""The sweeps' TPE sampler (coordinator/samplers.py) keeps its relative search space across
asks instead of recomputing it: it must draw exactly what optuna's stock TPESampler draws
for the same seed and history, conditional params (finetune.k only with last_k) included."""

from __future__ import annotations

import math
import random
import warnings

import optuna
import pytest
from coordinator_helpers import make_spec
from optuna.trial import TrialState

from tunefleet import spec as specs
from tunefleet.coordinator import samplers
from tunefleet.spec import spec_from_dict, spec_to_dict

SPACE = {
    "optimizer.lr": "loguniform(1e-5, 1e-2)",
    "finetune.strategy": ["head_only", "last_k", "full"],
    "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
}


# SPACE as optuna's distributions, for studies rebuilt from trial rows.
DISTRIBUTIONS = {
    "optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    "finetune.strategy": optuna.distributions.CategoricalDistribution(
        ["head_only", "last_k", "full"]
    ),
    "finetune.k": optuna.distributions.CategoricalDistribution([1, 2]),
}


def rebuilt_study(sampler, history) -> optuna.Study:
    """A study rebuilt from (params, state, value) rows, as Sweeps._study does."""
    study = new_study(sampler)
    for params, state, value in history:
        study.add_trial(
            optuna.trial.create_trial(
                state=state, value=value, params=params, distributions=DISTRIBUTIONS
            )
        )
    return study


def sweep_block(space: dict = SPACE):
    data = spec_to_dict(make_spec("base"))
    data["sweep"] = {"space": space, "algorithm": "tpe", "metric": "accuracy", "mode": "max"}
    return specs.prepare(spec_from_dict(data), check_paths=False).sweep


def new_study(sampler) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.create_study(direction="maximize", sampler=sampler)


def score(params: dict, rng: random.Random) -> float:
    bonus = {"head_only": -0.05, "last_k": 0.0, "full": 0.02}[params["finetune.strategy"]]
    return 0.9 - 0.05 * (math.log10(params["optimizer.lr"]) + 3.5) ** 2 + bonus + rng.gauss(0, 0.01)


def run_sweep(sampler, seed: int, trials: int, concurrent: int) -> list[dict]:
    """Asks as the coordinator does (samplers.suggest) with `concurrent` trials in flight,
    ending them in a seeded order: most COMPLETE, some PRUNED (with an intermediate value),
    some FAIL. Returns every trial's params, in order."""
    s = sweep_block()
    study = new_study(sampler)
    rng = random.Random(seed)
    running: list[optuna.Trial] = []
    drawn: list[dict] = []
    while len(drawn) < trials or running:
        while len(running) < concurrent and len(drawn) < trials:
            trial = study.ask()
            drawn.append(samplers.suggest(trial, s))
            running.append(trial)
        trial = running.pop(rng.randrange(len(running)))
        fate = rng.random()
        if fate < 0.1:
            study.tell(trial.number, state=TrialState.FAIL)
        elif fate < 0.2:
            trial.report(score(trial.params, rng), 1)
            study.tell(trial.number, state=TrialState.PRUNED)
        else:
            study.tell(trial.number, score(trial.params, rng))
    return drawn


@pytest.mark.parametrize("seed", [0, 7])
def test_tpe_draws_what_optunas_draws(seed):
    stock = run_sweep(optuna.samplers.TPESampler(seed=seed), seed, trials=70, concurrent=6)
    ours = run_sweep(samplers.TPESampler(seed=seed), seed, trials=70, concurrent=6)
    assert ours == stock
    assert any("finetune.k" in p for p in stock)  # the conditional param was drawn
    assert any("finetune.k" not in p for p in stock)


def test_tpe_draws_what_optunas_draws_in_a_rebuilt_study():
    """A study rebuilt from trial rows (Sweeps._study's add_trial) whose finished trials all
    chose last_k: finetune.k is then in the intersection, until a trial without it ends."""
    s = sweep_block()
    history = []
    rng = random.Random(3)
    for i in range(14):
        params = {"optimizer.lr": 10 ** rng.uniform(-5, -2), "finetune.strategy": "last_k"}
        params["finetune.k"] = rng.choice([1, 2])
        state = TrialState.RUNNING if i >= 12 else TrialState.COMPLETE
        history.append(
            (params, state, score(params, rng) if state == TrialState.COMPLETE else None)
        )

    def draws(sampler) -> list[dict]:
        study = rebuilt_study(sampler, history)
        tell = random.Random(5)
        drawn = []
        for _ in range(25):
            trial = study.ask()
            drawn.append(samplers.suggest(trial, s))
            study.tell(trial.number, score(trial.params, tell))
        return drawn

    stock = draws(optuna.samplers.TPESampler(seed=11))
    assert draws(samplers.TPESampler(seed=11)) == stock
    with_k = sampler_space_after(history)
    assert "finetune.k" in with_k


def sampler_space_after(history) -> dict:
    """What our sampler infers as the relative space right after the rebuilt history."""
    sampler = samplers.TPESampler(seed=0)
    study = rebuilt_study(sampler, history)
    frozen = study._storage.get_trial(study.ask()._trial_id)
    return sampler.infer_relative_search_space(study, frozen)
