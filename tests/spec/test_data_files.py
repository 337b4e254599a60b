"""`ftctl validate` looks into the local data files: a column or label typo is caught before
the job is queued, with the field, the file and line, what exists and a did-you-mean."""

from __future__ import annotations

import json
import time

import pytest

from tunefleet.spec import SpecError, data_files, load_job_file, validate
from tunefleet.spec.data_files import count_classes, read_labels

JOB = """\
name: topics
model: {{source: hf, name: bert-base-uncased{labels}}}
data: {{source: {source}, train: {train}, eval: {eval}{extra}}}
"""


def job(tmp_path, *, train="train.csv", eval="eval.csv", source="csv", labels="", extra=""):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(train=train, eval=eval, source=source, labels=labels, extra=extra))
    return path


def errors(path) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    return {e.path: e.message for e in info.value.errors}


def csv_files(tmp_path, train="text,label\na,pos\nb,neg\n", eval="text,label\nc,pos\n"):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "eval.csv").write_text(eval)


def test_a_good_job_passes(tmp_path):
    csv_files(tmp_path)
    load_job_file(job(tmp_path))
    load_job_file(job(tmp_path, labels=", labels: [neg, pos]"))


def test_a_label_column_not_in_the_header_names_the_file_columns_and_the_close_one(tmp_path):
    csv_files(tmp_path)
    got = errors(job(tmp_path, extra=", label_column: lable"))
    msg = got["data.label_column"]
    assert (
        str(tmp_path / "train.csv") in msg
        and "(data.train) or " in msg
        and "eval.csv (data.eval)" in msg
    )
    assert (
        "eval.csv (data.eval); the columns of " in msg
        and "train.csv: text, label; did you mean 'label'?" in msg
    )


def test_a_semicolon_separated_file_is_named_so(tmp_path):
    csv_files(tmp_path, train="text;label\na;pos\n")
    msg = errors(job(tmp_path))["data.label_column"]
    assert "looks separated by ';'" in msg and "comma-separated" in msg


def test_the_default_text_column_is_checked_too(tmp_path):
    csv_files(tmp_path, train="sentence,label\na,pos\n", eval="sentence,label\nb,pos\n")
    msg = errors(job(tmp_path))["data.text_column"]
    assert "'text' (the default) is not a column" in msg and "sentence, label" in msg


def test_a_label_typo_against_model_labels_names_file_line_and_suggestion(tmp_path):
    csv_files(tmp_path, train='text,label\na,pos\n"b\nc",neg\nd,pso\n')
    got = errors(job(tmp_path, labels=", labels: [neg, pos]"))
    assert got["data.train"] == (
        f"{tmp_path / 'train.csv'}: line 5, column 'label': label 'pso' is not in "
        "model.labels (neg, pos); did you mean 'pos'?"
    )


def test_an_eval_label_unknown_to_train_is_caught_without_model_labels(tmp_path):
    csv_files(tmp_path, eval="text,label\nc,pos\nd,nuetral\n")
    msg = errors(job(tmp_path))["data.eval"]
    assert "eval.csv: line 3, column 'label': label 'nuetral' is not one of the training" in msg


def test_integer_labels_are_class_ids_below_the_model_labels_count(tmp_path):
    csv_files(tmp_path, train="text,label\na,0\nb,1\nc,2\n", eval="text,label\na,1\n")
    msg = errors(job(tmp_path, labels=", labels: [neg, pos]"))["data.train"]
    assert "line 4" in msg and "label '2' is out of range for the 2 names in model.labels" in msg


def test_a_name_beside_a_train_file_of_class_ids_is_said_to_be_no_class_id(tmp_path):
    """Train labels 0/1 named by model.labels, eval labels written as those names: the
    message said "label 'pos' is out of range for the 2 names in model.labels", though
    'pos' is one of them."""
    csv_files(tmp_path, train="text,label\na,0\nb,1\n", eval="text,label\nc,pos\n")
    got = errors(job(tmp_path, labels=", labels: [neg, pos]"))
    assert got["data.eval"] == (
        f"{tmp_path / 'eval.csv'}: line 2, column 'label': label 'pos' is not a class id: the "
        f"labels of {tmp_path / 'train.csv'} are class ids 0..1, which model.labels names; "
        "write ids here too"
    )


def test_integer_labels_written_as_floats_are_class_ids_too(tmp_path):
    csv_files(tmp_path, train="text,label\na,0.0\nb,1.0\n", eval="text,label\na,1\n")
    load_job_file(job(tmp_path, labels=", labels: [neg, pos]"))
    csv_files(tmp_path, train="text,label\na,0.0\nb,2.0\n", eval="text,label\na,1\n")
    msg = errors(job(tmp_path, labels=", labels: [neg, pos]"))["data.train"]
    assert "line 3" in msg and "label '2.0' is out of range for the 2 names" in msg


def test_an_empty_label_is_reported(tmp_path):
    csv_files(tmp_path, train="text,label\na,pos\nb,\n")
    assert "line 3, column 'label': the label is empty" in errors(job(tmp_path))["data.train"]


def test_jsonl_keys_and_labels(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"txt": "c", "label": "pos"}) + "\n")
    got = errors(job(tmp_path, source="jsonl", train="train.jsonl", eval="eval.jsonl"))
    assert "'text' (the default) is not a column of" in got["data.text_column"]
    assert (
        "eval.jsonl" in got["data.text_column"] and "did you mean 'txt'?" in got["data.text_column"]
    )
    (tmp_path / "eval.jsonl").write_text('{"text": "c", "label": "pos"}\nnot json\n')
    got = errors(job(tmp_path, source="jsonl", train="train.jsonl", eval="eval.jsonl"))
    assert "eval.jsonl: line 2 is not valid JSON" in got["data.eval"]


def test_nothing_is_read_with_check_paths_off_or_for_data_classes(tmp_path):
    csv_files(tmp_path, train="text,label\na,pos\nb,zzz\n")
    spec = load_job_file(job(tmp_path, extra=", classes: [0, 1]"))  # data.classes relabels
    assert spec.data.classes
    from tunefleet.spec import spec_from_dict

    bad = spec_from_dict({"name": "t", "model": {"source": "hf", "name": "x"},
                          "data": {"source": "csv", "train": "/nope/train.csv",
                                   "label_column": "y"}})  # fmt: skip
    assert validate(bad, check_paths=False) == []


def test_the_pass_over_a_label_column_stops_at_its_caps(tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "".join(f"t,{i % 3}\n" for i in range(50)))
    monkeypatch.setattr(data_files, "MAX_ROWS", 10)
    labels = read_labels(str(path), "csv", "label")
    assert not labels.complete and set(labels.first_line) == {"0", "1", "2"}
    assert count_classes(str(path), "csv", "label") is None  # a partial pass cannot count


def test_a_million_row_label_pass_is_cheap(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "some words here,pos\n" * 200_000)
    started = time.monotonic()
    labels = read_labels(str(path), "csv", "label")
    assert labels.complete and set(labels.first_line) == {"pos"}
    assert time.monotonic() - started < data_files.MAX_SECONDS


def test_count_classes_sizes_the_head_as_the_engine_would(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,sports\nb,world\nc,tech\nd,world\n")
    assert count_classes(str(path), "csv", "label") == (3, ["sports", "tech", "world"])
    path.write_text("text,label\na,0\nb,4\n")
    assert count_classes(str(path), "csv", "label") == (5, ["0", "1", "2", "3", "4"])
    path.write_text("text,label\na,0\nb,1000000000\n")  # row ids, not classes: no head
    assert count_classes(str(path), "csv", "label") is None


def test_huge_names_in_a_header_are_clipped_or_left_to_the_engine(tmp_path):
    wide = "c" * 100_000  # under csv's field limit: read, and clipped in the message
    csv_files(tmp_path, train=f"text,{wide}\na,1\n", eval=f"text,{wide}\nb,1\n")
    msg = errors(job(tmp_path))["data.label_column"]
    assert len(msg) < 2000 and "truncated" in msg
    huge = "c" * 200_000  # over it: the validator skips the file, the engine reports it
    csv_files(tmp_path, train=f"text,{huge}\na,1\n", eval=f"text,{huge}\nb,1\n")
    load_job_file(job(tmp_path))


def test_model_num_labels_must_hold_every_class_of_the_train_file(tmp_path):
    csv_files(tmp_path, train="text,label\na,x\nb,y\nc,z\n", eval="text,label\nd,x\n")
    msg = errors(job(tmp_path, labels=", num_labels: 2"))["model.num_labels"]
    assert msg.startswith("2 classes, but ") and "has 3 labels (x, y, z)" in msg
    csv_files(tmp_path, train="text,label\na,0\nb,3\n", eval="text,label\nd,0\n")
    msg = errors(job(tmp_path, labels=", num_labels: 2"))["model.num_labels"]
    assert "train.csv line 3 has class id 3; use at least 4" in msg
    load_job_file(job(tmp_path, labels=", num_labels: 4"))


def test_integer_labels_below_model_num_labels_are_classes_even_if_train_lacks_them(tmp_path):
    """With num_labels 3, class id 2 in eval is a class of the model, though no train row
    has it; 3 is not."""
    csv_files(tmp_path, train="text,label\na,0\nb,1\n", eval="text,label\nc,2\n")
    assert "class ids 0..1" in errors(job(tmp_path))["data.eval"]
    load_job_file(job(tmp_path, labels=", num_labels: 3"))
    csv_files(tmp_path, train="text,label\na,0\nb,1\n", eval="text,label\nc,3\n")
    assert "class ids 0..2" in errors(job(tmp_path, labels=", num_labels: 3"))["data.eval"]


def test_a_train_file_with_only_a_header_is_an_empty_split(tmp_path):
    csv_files(tmp_path, train="text,label\n")
    msg = errors(job(tmp_path))["data.train"]
    assert msg.endswith("train.csv: no rows, only the header; the train split is empty")
