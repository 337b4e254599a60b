"""`ftctl plan` sizes the head as the run will: from the train file's labels when the spec
names none (it showed a 2-class head for a 3-class job)."""

from __future__ import annotations

from tunefleet.worker.engine.plan_preview import head_labels, plan_table


def head_params(table: str) -> int:
    row = next(line for line in table.splitlines() if line.startswith("head "))
    return int(row.split()[1].replace(",", ""))


def test_the_plan_counts_the_classes_in_the_train_file(bert_dir, text_spec, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,sports\nbad,world\nfine,tech\nok,world\n")
    spec = text_spec(bert_dir, (train, train))
    assert head_labels(spec) == (3, ["sports", "tech", "world"])
    hidden = 32  # the tiny BERT's
    assert head_params(plan_table(spec)) == hidden * 3 + 3


def test_model_labels_still_decide_when_given(bert_dir, text_spec, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,a\nbad,b\n")
    spec = text_spec(bert_dir, (train, train), model={"labels": ["a", "b", "c", "d"]})
    assert head_labels(spec)[0] == 4


def test_the_plan_counts_an_image_folders_classes(tmp_path):
    """data.source imagefolder: the head has one output per class folder holding an image,
    as the run builds it (the plan showed 2 for a 3-class folder: 1,026 resnet18 head
    parameters where training had 1,539). Hidden and empty folders are no classes."""
    from PIL import Image

    from tunefleet.spec import prepare

    for name in ("cat", "dog", "eel/deeper", ".ipynb_checkpoints", "empty"):
        (tmp_path / "train" / name).mkdir(parents=True)
    for name in ("cat", "dog", "eel/deeper", ".ipynb_checkpoints"):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "a.png")
    spec = prepare(
        {
            "name": "folders",
            "model": {"source": "torchvision", "name": "resnet18", "init": "random"},
            "data": {"source": "imagefolder", "root": str(tmp_path)},
        }
    )
    assert head_labels(spec) == (3, ["cat", "dog", "eel"])
    assert head_params(plan_table(spec)) == 512 * 3 + 3
