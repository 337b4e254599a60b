"""load_data: every source, labels, filtering, padding and the errors users will see."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.data import is_deterministic, load_data
from tunefleet.worker.engine.data.images import prepare_fashion_mnist_root
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.task import Task

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat"]
VOCAB += ["a", "good", "bad", "movie", "dog", "ran", "very", "plot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizerFast

    # transformers 5 ignores `vocab_file=` here (every word becomes [UNK]); pass the dict.
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)})


def make_spec(model: dict | None = None, **data) -> spec_pb2.JobSpec:
    spec = spec_pb2.JobSpec(name="t")
    spec.model.source = "hf"
    for k, v in (model or {}).items():
        if isinstance(v, list):
            getattr(spec.model, k).extend(v)
        else:
            setattr(spec.model, k, v)
    data.setdefault("max_length", 16)
    data.setdefault("augment", "none")
    for k, v in data.items():
        if isinstance(v, list):
            getattr(spec.data, k).extend(v)
        else:
            setattr(spec.data, k, v)
    return spec


def write_rows(path: Path, rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        df.to_parquet(path)
    return str(path)


TRAIN = [
    {"text": "the cat sat on the mat", "label": "pos"},
    {"text": "a bad movie", "label": "neg"},
    {"text": "good", "label": "pos"},
    {"text": "the dog ran very very very good", "label": "mid"},
    {"text": "bad plot", "label": "neg"},
]
EVAL = [{"text": "good movie", "label": "pos"}, {"text": "the plot", "label": "neg"}]


@pytest.mark.parametrize(
    "ext,source", [(".csv", "csv"), (".jsonl", "jsonl"), (".parquet", "parquet")]
)
def test_string_labels_are_sorted_and_padding_is_dynamic(tmp_path, tokenizer, ext, source):
    train = write_rows(tmp_path / f"train{ext}", TRAIN)
    evl = write_rows(tmp_path / f"eval{ext}", EVAL)
    spec = make_spec(source=source, train=train, eval=evl, text_column="text", label_column="label")
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["mid", "neg", "pos"]
    assert bundle.num_labels == 3
    assert bundle.train.labels.tolist() == [2, 1, 2, 0, 1]
    assert bundle.eval.labels.tolist() == [2, 1]

    short = bundle.collate([bundle.train[1], bundle.train[2]])  # "a bad movie", "good"
    assert short["input_ids"].shape == (2, 5)  # [CLS] a bad movie [SEP]: padded to 5, not 16
    assert short["input_ids"][1].tolist() == [2, 11, 3, 0, 0]
    assert short["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert short["token_type_ids"].shape == (2, 5)
    assert short["labels"].dtype == torch.long and short["labels"].tolist() == [1, 2]
    assert all(v.dtype == torch.long for v in short.values())
    full = bundle.collate([bundle.train[i] for i in range(5)])
    assert full["input_ids"].shape == (5, 9)


def test_int_labels_and_truncation(tmp_path, tokenizer):
    rows = [{"text": "the cat " * 20, "label": 0}, {"text": "dog", "label": 3}]
    train = write_rows(tmp_path / "train.jsonl", rows)
    spec = make_spec(source="jsonl", train=train, text_column="text", label_column="label")
    spec.data.max_length = 8
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.num_labels == 4 and bundle.label_names == ["0", "1", "2", "3"]
    assert bundle.eval is None
    assert len(bundle.train[0]["input_ids"]) == 8
    assert bundle.collate([bundle.train[0], bundle.train[1]])["input_ids"].shape == (2, 8)


@pytest.mark.parametrize("big", ["1000000000", "99999999999999999999999"])
def test_an_integer_label_far_past_any_head_is_refused_naming_the_line(tmp_path, big, tokenizer):
    """A column of years or row ids is not class ids: refused before a billion-name head
    is built (or int64 overflows), naming the file, line and the limit."""
    train = tmp_path / "train.csv"
    train.write_text(f"text,label\nthe cat,0\na dog,{big}\n")
    spec = make_spec(source="csv", train=str(train))
    with pytest.raises(InvalidJobInput, match=f"line 3, column 'label': label '{big}' is past"):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))


def test_integer_labels_below_model_num_labels_are_classes_in_eval(tmp_path, tokenizer):
    """model.num_labels 3 with train ids {0, 1}: id 2 in eval is the model's third class
    (a rare class the train split lacks), not an unknown label; 3 still is one."""
    train = write_rows(
        tmp_path / "train.csv", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    )
    evl = write_rows(tmp_path / "eval.csv", [{"text": "c", "label": 2}])
    spec = make_spec(
        model={"num_labels": 3},
        source="csv", train=train, eval=evl, text_column="text", label_column="label",
    )  # fmt: skip
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.num_labels == 3 and bundle.label_names == ["0", "1", "2"]
    assert bundle.eval.labels.tolist() == [2]
    write_rows(tmp_path / "eval.csv", [{"text": "c", "label": 3}])
    with pytest.raises(
        InvalidJobInput, match=r"label '3' is not one of the training labels \(0, 1, 2\)"
    ):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))


def test_csv_digit_labels_are_ints_and_model_labels_name_them(tmp_path, tokenizer):
    train = write_rows(
        tmp_path / "train.csv", [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    )
    spec = make_spec(
        model={"labels": ["neg", "pos", "neutral"]},
        source="csv", train=train, text_column="text", label_column="label",
    )  # fmt: skip
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["neg", "pos", "neutral"] and bundle.num_labels == 3
    assert bundle.train.labels.tolist() == [1, 0]


def test_csv_labels_written_as_floats_are_class_ids(tmp_path, tokenizer):
    """pandas writes an integer label column that held a missing value as 1.0, 0.0: those
    are class ids, as 1.0 in JSON-lines or parquet is, not names '0.0', '1.0', '10.0'
    sorted as strings (and unknown to model.labels)."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\nthe cat,1.0\na dog,0.0\ngood,2.0\n")
    evl = tmp_path / "eval.csv"
    evl.write_text("text,label\nbad,2\n")
    spec = make_spec({"labels": ["a", "b", "c"]}, source="csv", train=str(train), eval=str(evl))
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["a", "b", "c"]
    assert bundle.train.labels.tolist() == [1, 0, 2] and bundle.eval.labels.tolist() == [2]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"text": {"body": "the cat"}, "label": "pos"}, "column 'text' .data.text_column.: the "
         "value is an object, not text"),
        ({"text": ["the", "cat"], "label": "pos"}, "column .text. .*: the value is a list, not"),
        ({"text": "the cat", "label": {"id": 1}}, "column 'label': label {'id': 1} is a JSON obj"),
    ],
)  # fmt: skip
def test_nested_jsonl_values_are_refused_naming_the_line(tmp_path, tokenizer, row, message):
    """A nested JSON value was tokenised (or named a class) as its Python repr."""
    rows = [{"text": "a dog", "label": "neg"}, row]
    train = write_rows(tmp_path / "train.jsonl", rows)
    spec = make_spec(source="jsonl", train=train)
    with pytest.raises(InvalidJobInput, match=f"train.jsonl: line 2, {message}"):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))
    rows[1] = {"text": 7, "label": "pos"}  # a number is text
    write_rows(tmp_path / "train.jsonl", rows)
    assert len(load_data(spec, Task(kind="text", tokenizer=tokenizer)).train) == 2


def test_model_labels_fix_string_label_order(tmp_path, tokenizer):
    train = write_rows(tmp_path / "train.parquet", TRAIN)
    spec = make_spec(
        model={"labels": ["pos", "neg", "mid"]},
        source="parquet", train=train, text_column="text", label_column="label",
    )  # fmt: skip
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["pos", "neg", "mid"]
    assert bundle.train.labels.tolist() == [0, 1, 0, 2, 1]


def test_missing_column_names_file_column_and_alternatives(tmp_path, tokenizer):
    train = write_rows(tmp_path / "train.csv", TRAIN)
    spec = make_spec(source="csv", train=train, text_column="sentence", label_column="label")
    with pytest.raises(InvalidJobInput) as e:
        load_data(spec, Task(kind="text", tokenizer=tokenizer))
    msg = str(e.value)
    assert train in msg and "'sentence'" in msg and "text, label" in msg


def test_unknown_eval_label_names_file_row_and_column(tmp_path, tokenizer):
    train = write_rows(tmp_path / "train.csv", TRAIN)
    evl = write_rows(tmp_path / "eval.csv", [*EVAL, {"text": "cat", "label": "angry"}])
    spec = make_spec(source="csv", train=train, eval=evl, text_column="text", label_column="label")
    with pytest.raises(InvalidJobInput) as e:
        load_data(spec, Task(kind="text", tokenizer=tokenizer))
    msg = str(e.value)
    assert evl in msg and "line 4" in msg and "'label'" in msg and "'angry'" in msg


def test_classes_subset_relabels_then_limits(tmp_path, tokenizer):
    train = write_rows(tmp_path / "train.csv", TRAIN)  # ids: mid 0, neg 1, pos 2
    evl = write_rows(tmp_path / "eval.csv", EVAL)
    spec = make_spec(
        source="csv", train=train, eval=evl, text_column="text", label_column="label",
        classes=[2, 1], limit_train=3, limit_eval=1,
    )  # fmt: skip
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["pos", "neg"] and bundle.num_labels == 2
    # kept rows 0 (pos), 1 (neg), 2 (pos); row 3 ("mid") dropped, row 4 cut by the limit
    assert bundle.train.labels.tolist() == [0, 1, 0]
    assert bundle.train[1]["input_ids"].tolist() == tokenizer("a bad movie")["input_ids"]
    assert len(bundle.eval) == 1 and bundle.eval.labels.tolist() == [0]

    spec.data.classes[:] = [7]
    with pytest.raises(InvalidJobInput, match="data.classes"):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))


def test_sentence_pairs_get_token_type_ids(tmp_path, tokenizer):
    rows = [{"a": "the cat", "b": "sat on", "y": 1}, {"a": "dog", "b": "ran", "y": 0}]
    train = write_rows(tmp_path / "train.jsonl", rows)
    spec = make_spec(
        source="jsonl", train=train, text_column="a", text_pair_column="b", label_column="y"
    )
    batch = load_data(spec, Task(kind="text", tokenizer=tokenizer)).train
    ex = batch[0]
    assert ex["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_empty_and_unreadable_files(tmp_path, tokenizer):
    task = Task(kind="text", tokenizer=tokenizer)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    spec = make_spec(source="csv", train=str(empty), text_column="text", label_column="label")
    with pytest.raises(InvalidJobInput, match="empty"):
        load_data(spec, task)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    spec.data.source, spec.data.train = "parquet", str(bad)
    with pytest.raises(InvalidJobInput, match=str(bad)):
        load_data(spec, task)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{oops\n')
    spec.data.source, spec.data.train = "jsonl", str(bad_json)
    with pytest.raises(InvalidJobInput, match="line 2"):
        load_data(spec, task)
    spec.data.train = str(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidJobInput, match="nope.jsonl"):
        load_data(spec, task)


def test_hf_dataset_saved_to_disk_uses_classlabel_names(tmp_path, tokenizer):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": ["good movie", "bad", "the cat"], "label": [1, 0, 1]}, features=features
    )
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(tmp_path / "d")
    spec = make_spec(
        source="hf", name=str(tmp_path / "d"), train="train", eval="validation",
        text_column="sentence", label_column="label",
    )  # fmt: skip
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.label_names == ["no", "yes"] and bundle.train.labels.tolist() == [1, 0, 1]
    assert len(bundle.eval) == 1
    spec.data.eval = "test"
    with pytest.raises(InvalidJobInput, match="train, validation"):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))


def test_text_dataset_and_collate_pickle(tmp_path, tokenizer):
    train = write_rows(tmp_path / "train.csv", TRAIN)
    spec = make_spec(source="csv", train=train, text_column="text", label_column="label")
    spec.data.num_workers = 2
    bundle = load_data(spec, Task(kind="text", tokenizer=tokenizer))
    assert bundle.num_workers == 2
    ds, collate = pickle.loads(pickle.dumps((bundle.train, bundle.collate)))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert [b["labels"].shape[0] for b in loader] == [2, 2, 1]


# --------------------------------------------------------------------------- images


def write_pngs(folder: Path, classes: dict[str, int], size=(12, 10), mode="RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
                folder / c / f"{i}.png"
            )


def test_imagefolder_shapes_labels_and_channels(tmp_path):
    write_pngs(tmp_path / "train", {"dog": 2, "cat": 3}, mode="L")
    write_pngs(tmp_path / "val", {"cat": 1}, mode="L")
    spec = make_spec(source="imagefolder", root=str(tmp_path), train="train", eval="val")
    task = Task(kind="image", image_size=16, in_channels=3)
    bundle = load_data(spec, task)
    assert bundle.label_names == ["cat", "dog"] and bundle.train.labels.tolist() == [0, 0, 0, 1, 1]
    batch = bundle.collate([bundle.train[i] for i in range(len(bundle.train))])
    assert batch["pixel_values"].shape == (5, 3, 16, 16)
    assert (
        batch["pixel_values"].dtype == torch.float32 and type(batch["pixel_values"]) is torch.Tensor
    )
    pixels = (
        batch["pixel_values"] * torch.tensor(task.std)[:, None, None]
        + torch.tensor(task.mean)[:, None, None]
    )
    assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)  # grey repeated, not recoloured
    assert bundle.eval.labels.tolist() == [0]
    gray = load_data(spec, Task(kind="image", image_size=8, in_channels=1, mean=(0.5,), std=(0.5,)))
    assert gray.train[0]["pixel_values"].shape == (1, 8, 8)
    assert gray.train[0]["pixel_values"].min() >= -1.0


def test_imagefolder_skips_hidden_entries_and_mixes_modes_and_extensions(tmp_path):
    """Jupyter's .ipynb_checkpoints is no class (in eval it was refused as unknown), a
    macOS ._x.png or a .cache folder holds no image (it failed mid-training); grayscale,
    RGBA and palette images in nested folders with upper-case extensions all load."""
    from PIL import Image

    def save(path: Path, mode: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (10, 12), 100).save(path)

    save(tmp_path / "train/cat/a.PNG", "L")
    save(tmp_path / "train/cat/deep/b.png", "P")
    save(tmp_path / "train/dog/c.JPG", "RGB")
    save(tmp_path / "train/dog/d.png", "RGBA")
    (tmp_path / "train/dog/notes.txt").write_text("not an image")
    (tmp_path / "train/cat/._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    save(tmp_path / "train/dog/.cache/e.png", "RGB")
    save(tmp_path / "train/.ipynb_checkpoints/f.png", "RGB")
    save(tmp_path / "val/cat/g.png", "RGB")
    (tmp_path / "val/.ipynb_checkpoints").mkdir()
    spec = make_spec(source="imagefolder", root=str(tmp_path), train="train", eval="val")
    bundle = load_data(spec, Task(kind="image", image_size=8, in_channels=3))
    assert bundle.label_names == ["cat", "dog"] and bundle.train.labels.tolist() == [0, 0, 1, 1]
    batch = bundle.collate([bundle.train[i] for i in range(len(bundle.train))])
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and len(bundle.eval) == 1


def test_imagefolder_corrupt_image_and_unknown_eval_class_are_named(tmp_path):
    write_pngs(tmp_path / "train", {"a": 1, "b": 1})
    write_pngs(tmp_path / "eval", {"a": 1, "zebra": 1})
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    spec = make_spec(source="imagefolder", root=str(tmp_path), train="train")
    bundle = load_data(spec, Task(kind="image", image_size=8))
    with pytest.raises(InvalidJobInput, match="broken.png"):
        [bundle.train[i] for i in range(len(bundle.train))]
    spec.data.eval = "eval"
    with pytest.raises(InvalidJobInput, match="zebra"):
        load_data(spec, Task(kind="image", image_size=8))


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST IDX file: magic (dtype 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_fashion_mnist(tmp_path_factory) -> Path:
    """A gzipped 'Debian' folder with tiny IDX files: 20 train, 10 test images of 28x28."""
    src = tmp_path_factory.mktemp("fmnist-src")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        for name, arr in (
            (f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28))),
            (f"{split}-labels-idx1-ubyte", np.arange(n) % 10),
        ):
            _write_idx(src / name, arr)
            (src / f"{name}.gz").write_bytes(gzip.compress((src / name).read_bytes()))
            (src / name).unlink()
    return src


def test_prepare_fashion_mnist_root_is_idempotent(fake_fashion_mnist, tmp_path):
    root = prepare_fashion_mnist_root(fake_fashion_mnist, tmp_path / "root")
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    ]  # fmt: skip
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    prepare_fashion_mnist_root(fake_fashion_mnist, root)
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before


def test_torchvision_fashion_mnist_classes_and_native_size(fake_fashion_mnist, tmp_path):
    root = prepare_fashion_mnist_root(fake_fashion_mnist, tmp_path)
    spec = make_spec(
        source="torchvision", name="FashionMNIST", root=str(root), train="train", eval="test",
        classes=[9, 0], limit_train=3,
    )  # fmt: skip
    bundle = load_data(
        spec, Task(kind="image", image_size=28, in_channels=1, mean=(0.28,), std=(0.35,))
    )
    assert bundle.label_names == ["Ankle boot", "T-shirt/top"] and bundle.num_labels == 2
    assert bundle.train.labels.tolist() == [1, 0, 1]  # rows 0 (class 0), 9 (class 9), 10 (0)
    assert bundle.train[0]["pixel_values"].shape == (1, 28, 28)
    assert bundle.eval.labels.tolist() == [1, 0]
    assert is_deterministic(spec)


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_augment_presets_keep_shapes(fake_fashion_mnist, tmp_path, augment):
    root = prepare_fashion_mnist_root(fake_fashion_mnist, tmp_path)
    spec = make_spec(source="torchvision", name="FashionMNIST", root=str(root), augment=augment)
    for size in (28, 32):
        bundle = load_data(spec, Task(kind="image", image_size=size, in_channels=3))
        batch = bundle.collate([bundle.train[i] for i in range(8)])
        assert batch["pixel_values"].shape == (8, 3, size, size)
        assert bundle.eval[0]["pixel_values"].shape == (3, size, size)  # carved from train
        assert bundle.test[0]["pixel_values"].shape == (3, size, size)  # the test split
        assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (18, 2, 10)
    assert is_deterministic(spec) == (augment == "none")
    if augment != "none":  # random: two reads of the same example differ
        assert not torch.equal(bundle.train[0]["pixel_values"], bundle.train[0]["pixel_values"])
    else:
        assert torch.equal(bundle.train[0]["pixel_values"], bundle.train[0]["pixel_values"])


def test_torchvision_missing_root_is_invalid_input(tmp_path):
    spec = make_spec(source="torchvision", name="FashionMNIST", root=str(tmp_path))
    with pytest.raises(InvalidJobInput, match="prepare_fashion_mnist_root"):
        load_data(spec, Task(kind="image", image_size=28, in_channels=1, mean=(0.5,), std=(0.5,)))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    root = prepare_fashion_mnist_root(DEBIAN_FASHION_MNIST, tmp_path)
    spec = make_spec(
        source="torchvision", name="FashionMNIST", root=str(root), eval="test",
        limit_train=64, limit_eval=32,
    )  # fmt: skip
    bundle = load_data(
        spec, Task(kind="image", image_size=28, in_channels=1, mean=(0.28,), std=(0.35,))
    )
    assert len(bundle.train) == 64 and len(bundle.eval) == 32 and bundle.num_labels == 10
    batch = bundle.collate([bundle.train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 28, 28)


def test_corrupt_image_error_survives_dataloader_workers(tmp_path):
    write_pngs(tmp_path / "train", {"a": 1})
    (tmp_path / "train" / "a" / "zz-broken.png").write_bytes(b"garbage")
    bundle = load_data(
        make_spec(source="imagefolder", root=str(tmp_path)), Task(kind="image", image_size=8)
    )
    loader = torch.utils.data.DataLoader(
        bundle.train, batch_size=2, num_workers=1, collate_fn=bundle.collate
    )
    with pytest.raises(InvalidJobInput, match="zz-broken.png"):
        list(loader)


def test_default_max_length_is_the_models_own_limit(tmp_path, bert_dir):
    """Unset data.max_length (0) keeps what the model can take (here its 64 positions),
    as a Trainer script's truncation=True does, not a fixed 128 (which this model could not
    even embed) nor a cut shorter than the model allows; an explicit value still wins."""
    from engine_helpers import FILLER, NEG, POS

    from tunefleet.spec import prepare
    from tunefleet.worker.engine import data, models

    path = tmp_path / "long.csv"
    rows = ["text,label", " ".join([*FILLER * 30, POS[0]]) + ",pos", f"{NEG[0]} {NEG[1]},neg"]
    path.write_text("\n".join(rows) + "\n")
    job = {
        "name": "long",
        "model": {"source": "hf", "name": str(bert_dir)},
        "data": {"source": "csv", "train": str(path)},
    }
    spec = prepare(job)
    assert spec.data.max_length == 0
    bundle = data.load_data(spec, models.resolve_task(spec))
    assert sorted(bundle.train.lengths) == [4, 64]  # [CLS] two words [SEP]; cut at 64
    job["data"]["max_length"] = 16
    spec = prepare(job)
    bundle = data.load_data(spec, models.resolve_task(spec))
    assert max(bundle.train.lengths) == 16


def test_text_limit_takes_the_smaller_of_tokenizer_and_positions_at_most_512(tmp_path):
    from types import SimpleNamespace

    from tunefleet.worker.engine.models import text_limit

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    assert text_limit(SimpleNamespace(model_max_length=128), str(tmp_path)) == 128
    assert text_limit(SimpleNamespace(model_max_length=int(1e30)), str(tmp_path)) == 512
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert text_limit(SimpleNamespace(model_max_length=8192), str(tmp_path)) == 512
    assert text_limit(SimpleNamespace(), str(tmp_path / "nowhere")) == 512
