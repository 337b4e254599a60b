"""Validation vs test in the spec: defaults per source, and the problems the validator names.

Fails on the code before data.test / data.validation_fraction existed: the fields are
unknown there, and torchvision's test split was the validation set by default."""

import pytest

from tunefleet.spec import SpecError, prepare, resolve_defaults


@pytest.fixture
def files(tmp_path):
    for name in ("train", "eval", "test"):
        (tmp_path / f"{name}.csv").write_text("text,label\nhello,a\n")
    (tmp_path / "vision").mkdir()
    return tmp_path


def csv_job(files, **data):
    return {
        "name": "t",
        "model": {"source": "hf", "name": "some/model"},
        "data": {"source": "csv", "train": str(files / "train.csv"), **data},
    }


def vision_job(files, **data):
    return {
        "name": "t",
        "model": {"source": "torchvision", "name": "smallcnn"},
        "data": {"source": "torchvision", "name": "CIFAR10", "root": str(files / "vision"), **data},
    }


def errors(job) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        prepare(job)
    return {e.path: e.message for e in info.value.errors}


def test_torchvision_carves_validation_and_tests_on_its_test_split(files):
    d = prepare(vision_job(files)).data
    assert (d.eval, d.validation_fraction, d.validation_seed, d.test) == ("", 0.1, 0, "test")
    assert d.limit_test == 0


def test_old_torchvision_yaml_that_validates_on_test_gets_no_second_test(files):
    d = prepare(vision_job(files, eval="test")).data
    assert (d.eval, d.validation_fraction, d.test) == ("test", 0.0, "none")


def test_csv_keeps_its_eval_as_validation_and_has_no_test_unless_given(files):
    d = prepare(csv_job(files, eval=str(files / "eval.csv"))).data
    assert (d.eval, d.validation_fraction, d.test) == (str(files / "eval.csv"), 0.0, "")
    d = prepare(csv_job(files, eval=str(files / "eval.csv"), test=str(files / "test.csv"))).data
    assert d.test == str(files / "test.csv")


@pytest.mark.parametrize(
    "job",
    [
        lambda f: vision_job(f),
        lambda f: vision_job(f, eval="test"),
        lambda f: vision_job(f, validation_fraction=0.25, validation_seed=3, mean=[0.5], std=[0.5]),
        lambda f: csv_job(f, validation_fraction=0.2, test=str(f / "test.csv")),
    ],
)
def test_defaults_are_idempotent_and_validate_again(files, job):
    spec = prepare(job(files))
    assert resolve_defaults(spec) == spec
    assert prepare(spec) == spec


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"test": "train"}, "data.test", "one of: test, none"),
        ({"eval": "test", "test": "test"}, "data.test", "also data.eval"),
        ({"validation_fraction": 1.0}, "data.validation_fraction", "[0, 1)"),
        ({"validation_fraction": -0.1}, "data.validation_fraction", "[0, 1)"),
        ({"eval": "test", "validation_fraction": 0.1}, "data.validation_fraction", "drop one"),
        ({"validation_seed": -1}, "data.validation_seed", ">= 0"),
        ({"limit_test": -1}, "data.limit_test", ">= 0"),
        ({"mean": [0.5, 0.5, 0.5]}, "data.std", "give both or neither"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.5]}, "data.std", "as many values"),
        ({"mean": [0.5, 0.5], "std": [0.5, 0.5]}, "data.mean", "one per channel"),
        ({"mean": [0.5], "std": [0.0]}, "data.std[0]", "> 0"),
    ],
)
def test_vision_data_role_problems_name_their_field(files, data, path, fragment):
    errs = errors(vision_job(files, **data))
    assert path in errs, errs
    assert fragment in errs[path]


def test_text_data_role_problems_name_their_field(files):
    errs = errors(
        csv_job(
            files,
            eval=str(files / "eval.csv"),
            test=str(files / "missing.csv"),
            validation_fraction=0.1,
            mean=[0.5],
            std=[0.5],
        )
    )
    assert "no such file" in errs["data.test"]
    assert "drop one" in errs["data.validation_fraction"]
    assert "image data only" in errs["data.mean"]
    same = str(files / "eval.csv")
    assert "also data.eval" in errors(csv_job(files, eval=same, test=same))["data.test"]


def test_early_stopping_needs_a_validation_set(files):
    job = csv_job(files)
    job["eval"] = {"early_stopping_patience": 2}
    assert "validation set" in errors(job)["eval.early_stopping_patience"]
    prepare({**job, "data": {**job["data"], "validation_fraction": 0.2}})  # carved: fine
    prepare({**vision_job(files), "eval": {"early_stopping_patience": 2}})  # carved by default
