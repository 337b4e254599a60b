"""The `sweep:` block: its YAML shorthand, its checks (every problem with its path) and
its points (the grid, conditions honoured)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunefleet.spec import SpecError, load_job_file, prepare
from tunefleet.spec import sweep as space

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "name": "s",
    "model": {"source": "hf", "name": "org/model"},
    "data": {"source": "csv", "train": "/data/train.csv"},
}


def problems(sweep: dict, **base) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as e:
        prepare({**BASE, **base, "sweep": sweep}, check_paths=False)
    return [(p.path, p.message) for p in e.value.errors]


def test_shorthand_and_defaults():
    spec = prepare(
        {
            **BASE,
            "sweep": {
                "space": {
                    "finetune.strategy": ["head_only", "last_k"],
                    "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
                    "data.group_by_length": [True, False],
                }
            },
        },
        check_paths=False,
    )
    s = spec.sweep
    assert s.space["finetune.k"].values == ["1", "2"]
    assert s.space["data.group_by_length"].values == ["true", "false"]
    assert (s.algorithm, s.metric, s.mode, s.pruner) == ("grid", "accuracy", "max", "none")
    assert s.max_trials == 6 and s.max_concurrent == 2  # (1 + 2) strategies x 2
    points = space.grid(s)
    assert {"finetune.strategy": "head_only", "data.group_by_length": True} in points
    assert all(("finetune.k" in p) == (p["finetune.strategy"] == "last_k") for p in points)
    # The base keeps its gaps: defaults are resolved per trial.
    assert not spec.optimizer.HasField("lr")


def test_ranges_and_loss_mode():
    spec = prepare(
        {
            **BASE,
            "eval": {"metric": "loss"},
            "sweep": {
                "space": {"optimizer.lr": "loguniform(1e-5, 1e-2)", "train.epochs": "int(1, 3)"}
            },
        },
        check_paths=False,
    )
    s = spec.sweep
    assert (s.algorithm, s.metric, s.mode, s.max_trials) == ("tpe", "loss", "min", 10)
    assert (s.space["optimizer.lr"].type, s.space["optimizer.lr"].low) == ("loguniform", 1e-5)
    assert s.space["train.epochs"].type == "int"


def test_every_problem_has_its_path():
    found = problems(
        {
            "space": {
                "optimizer.lr": "loguniform(0, 1)",
                "optimizer.momentum": "between(1, 2)",
                "finetune": ["x"],
                "labels.team": ["a"],
                "name": ["a", "b"],
                "train.epochs": "uniform(1, 3)",
                "finetune.k": {"values": [1, 1], "when": {"finetune.strategy": "last_k"}},
                "finetune.strategy": {"values": ["full"], "when": {"finetune.k": "1"}},
            },
            "mode": "maximum",
            "max_concurrent": 0,
        }
    )
    paths = [p for p, _ in found]
    assert paths == [
        "sweep.space.optimizer.momentum",
        "sweep.space.finetune",
        "sweep.space.finetune.k.values[1]",
        "sweep.space.labels.team",
        "sweep.space.name",
        "sweep.space.optimizer.lr",
        "sweep.space.train.epochs",
        "sweep.space.finetune.k.when.finetune.strategy",
        "sweep.space.finetune.k.when",  # k waits for strategy, which waits for k
        "sweep.mode",
        "sweep.max_concurrent",
    ]
    messages = dict(found)
    assert "not a range" in messages["sweep.space.optimizer.momentum"]
    assert "is a section" in messages["sweep.space.finetune"]
    assert "given twice" in messages["sweep.space.finetune.k.values[1]"]
    assert "cannot be swept" in messages["sweep.space.name"]
    assert "loguniform needs low > 0" in messages["sweep.space.optimizer.lr"]
    assert "int(a, b)" in messages["sweep.space.train.epochs"]


def test_conditions_name_choice_values_and_form_no_circle():
    found = dict(
        problems(
            {
                "space": {
                    "finetune.strategy": ["full", "last_k"],
                    "finetune.k": {"values": [1], "when": {"finetune.strategy": "lastk"}},
                    "optimizer.name": {"values": ["sgd"], "when": {"optimizer.momentum": "0.9"}},
                    "optimizer.momentum": {"values": [0.9], "when": {"optimizer.name": "sgd"}},
                }
            }
        )
    )
    assert (
        "'lastk' is not one of finetune.strategy's values"
        in found["sweep.space.finetune.k.when.finetune.strategy"]
    )
    assert any("circle" in m for p, m in found.items() if p.startswith("sweep.space.optimizer"))


def test_every_point_is_validated_as_a_job():
    found = problems(
        {"space": {"finetune.strategy": ["full", "last_k"], "optimizer.lr": "uniform(-1, 1e-3)"}}
    )
    assert ("sweep.space.optimizer.lr", "-1.0: must be > 0, got -1") in found
    # A problem of the base job that only some points have names them.
    (k,) = [m for p, m in found if p == "finetune.k"]
    assert "with finetune.strategy=last_k" in k


def test_grid_needs_choices():
    found = dict(problems({"space": {"optimizer.lr": "uniform(1e-5, 1e-3)"}, "algorithm": "grid"}))
    assert "grid needs choices only; optimizer.lr is a range" in found["sweep.algorithm"]


def test_the_example_sweep_loads():
    spec = load_job_file(ROOT / "examples" / "minilm-sweep.yaml")
    assert spec.sweep.algorithm == "tpe" and spec.sweep.pruner == "median"
    assert spec.sweep.space["finetune.k"].when["finetune.strategy"] == "last_k"


_WORDS = st.sampled_from(
    ["optimizer.lr", "finetune.k", "finetune.strategy", "train.epochs", "last_k", "full",
     "uniform(1, 2)", "loguniform(0, 1)", "int(1, 1e30)", "choice", "values", "when", "type",
     "low", "high", "sweep", "name", "labels.x", ""]
) | st.text(max_size=10)  # fmt: skip
_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _WORDS
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_WORDS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_WORDS, _VALUES, max_size=4),
    st.dictionaries(
        st.sampled_from(["algorithm", "pruner", "metric", "mode", "max_trials", "seed"]),
        _SCALARS,
        max_size=3,
    ),
)
def test_random_sweep_blocks_fail_only_with_field_errors(space_block, settings_block):
    try:
        spec = prepare(
            {**BASE, "sweep": {"space": space_block, **settings_block}}, check_paths=False
        )
    except SpecError as e:
        assert e.errors and all(p.path for p in e.errors)
        return
    # Accepted: every point it can create is a valid job.
    for point in space.check_points(spec.sweep)[:20]:
        prepare(space.apply(spec, point), check_paths=False)


def test_a_negative_seed_is_refused_at_submit():
    # optuna's samplers seed numpy, which takes 0..2**32-1: a negative seed used to pass
    # validation and fail the sweep's first ask inside the coordinator.
    found = dict(problems({"space": {"optimizer.lr": [1e-3]}, "seed": -1}))
    assert found == {"sweep.seed": "must be >= 0, got -1"}


def test_a_condition_matches_its_choice_by_value_not_spelling():
    # YAML reads 1e-3 (no dot) as a string; the choice and the condition name one value.
    spec = prepare(
        {
            **BASE,
            "sweep": {
                "space": {
                    "optimizer.lr": ["1e-3", 0.0001],
                    "optimizer.weight_decay": {
                        "values": [0, 0.01],
                        "when": {"optimizer.lr": 0.001},
                    },
                    "train.epochs": {"values": [1, 2], "when": {"optimizer.lr": "1e-4"}},
                }
            },
        },
        check_paths=False,
    )
    points = space.grid(spec.sweep)
    assert len(points) == 4
    assert all(("optimizer.weight_decay" in p) == (p["optimizer.lr"] == 1e-3) for p in points)
    assert all(("train.epochs" in p) == (p["optimizer.lr"] == 1e-4) for p in points)
    found = dict(
        problems(
            {
                "space": {
                    "optimizer.lr": ["1e-3", "1e-4"],
                    "train.epochs": {"values": [1], "when": {"optimizer.lr": "1e-5"}},
                }
            }
        )
    )
    assert (
        "'1e-5' is not one of optimizer.lr's values: 1e-3, 1e-4"
        in found["sweep.space.train.epochs.when.optimizer.lr"]
    )


def test_swept_paths_resolve_against_the_files_folder_as_the_base_jobs_do(tmp_path, monkeypatch):
    # They were left relative: validate, submit and the SDK refused them ("relative path
    # 'a.csv': give an absolute path (ftctl and the SDK resolve paths against the YAML
    # file's folder)"), although the same value in the base job resolves.
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "job.yaml").write_text(
        "name: files\n"
        "model: {source: hf, name: org/model}\n"
        "data: {source: csv, train: a.csv}\n"
        "sweep:\n"
        "  space:\n"
        "    data.train: [a.csv, ./b.csv]\n"
        "    optimizer.lr: {values: [0.001, 0.01], when: {data.train: b.csv}}\n"
        "    model.name: [org/model, org/other]\n"
    )
    monkeypatch.chdir(ROOT)  # anywhere but the file's folder
    spec = load_job_file(tmp_path / "job.yaml")
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    assert list(spec.sweep.space["data.train"].values) == [a, b]
    assert spec.sweep.space["optimizer.lr"].when["data.train"] == b
    assert list(spec.sweep.space["model.name"].values) == ["org/model", "org/other"]  # hub ids
    points = space.grid(spec.sweep)
    assert len(points) == 6
    assert all(("optimizer.lr" in p) == (p["data.train"] == b) for p in points)


def test_a_yaml_boolean_choice_of_a_text_field_says_to_quote_it():
    # `precision: no` in the base job says "quote it"; in a sweep it became 'false', then
    # "'false' is not allowed; one of: no, bf16, fp16", which hides why.
    found = dict(problems({"space": {"train.precision": [False, "bf16"]}}))
    assert found == {
        "sweep.space.train.precision.values[0]": "expected a string, got False; quote it "
        "(YAML reads no/yes/on/off as booleans)"
    }


def test_a_swept_value_that_fails_only_with_some_others_names_them():
    # k without `when`: it fails only where strategy is full. The message said just
    # "1: only applies to strategy: last_k", although last_k is in the space.
    found = problems({"space": {"finetune.strategy": ["last_k", "full"], "finetune.k": [1, 2]}})
    assert found == [
        (
            "sweep.space.finetune.k",
            "1: only applies to strategy: last_k (with finetune.strategy=full)",
        ),
        (
            "sweep.space.finetune.k",
            "2: only applies to strategy: last_k (with finetune.strategy=full)",
        ),
    ]
