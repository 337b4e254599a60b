"""Unknown keys in a job YAML get "did you mean" the nearest field names of the message
at that path, and are still reported with every other problem in one go."""

from __future__ import annotations

import pytest

from tunefleet.spec import SpecError, load_job_file, parse_lenient


def _errors(data) -> dict[str, str]:
    return {e.path: e.message for e in parse_lenient(data)[1]}


@pytest.mark.parametrize(
    ("data", "path", "meant"),
    [
        ({"train": {"epoch": 3}}, "train.epoch", "epochs"),
        ({"train": {"batchsize": 8}}, "train.batchsize", "batch_size"),
        ({"optimiser": {"lr": 1e-3}}, "optimiser", "optimizer"),
        ({"finetune": {"stratgy": "full"}}, "finetune.stratgy", "strategy"),
        ({"finetune": {"K": 2}}, "finetune.K", "k"),
        ({"data": {"label_colum": "y"}}, "data.label_colum", "label_column"),
        ({"model": {"head": {"init_sdt": 0.1}}}, "model.head.init_sdt", "init_std"),
        ({"compression": {"prune": {"ammount": 0.3}}}, "compression.prune.ammount", "amount"),
    ],
)
def test_a_misspelt_field_names_the_field_meant(data, path, meant):
    message = _errors(data)[path]
    assert message.startswith(f"unknown field; did you mean {meant}")
    assert "expected one of: " in message  # the whole list is still there


def test_suggestions_come_from_the_message_at_that_path():
    # `lr` is a field of optimizer, not of train: no suggestion from elsewhere.
    message = _errors({"train": {"lrr": 1}})["train.lrr"]
    assert "did you mean" not in message
    assert message.startswith("unknown field; expected one of: epochs, ")


def test_nothing_close_means_no_guess():
    message = _errors({"data": {"colour": "blue"}})["data.colour"]
    assert message.startswith("unknown field; expected one of: source, name, ")


def test_every_problem_is_still_listed_with_its_path(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: {source: hf, name: prajjwal1/bert-tiny}\n"
        "data: {source: csv, train: train.csv, text_colum: text}\n"
        "train: {epoch: 2, batch_size: 0}\n"
        "optimizer: {name: rmsprop}\n"
    )
    with pytest.raises(SpecError) as info:
        load_job_file(job)
    problems = {e.path: e.message for e in info.value.errors}
    assert "did you mean text_column" in problems["data.text_colum"]
    assert "did you mean epochs" in problems["train.epoch"]
    assert {"train.batch_size", "optimizer.name"} <= set(problems)
