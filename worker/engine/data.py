"""Datasets for the engine: a resolved `DataSpec` in, train/validation/test datasets and a
collate out (which split plays which role: splits.py).

`load_data(spec, task)` reads every source the spec allows (csv, jsonl, parquet, hf,
torchvision, imagefolder), turns labels into ids 0..N-1, applies `data.classes` and the
`limit_*` fields, and returns a `DataBundle`. The trainer builds the DataLoaders.

Text is tokenised once, up front, in batches (fast tokenizers run that in Rust), and stored as
one flat int32 array per field plus offsets; the collate pads each batch to its own longest
example (dynamic padding), which is what `DataCollatorWithPadding` does, without the
per-example Python dicts. Images are decoded lazily and go through a transforms.v2 pipeline.

Labels. A label column holding integers is used as class ids (N = max + 1, or the size given
by `model.labels` / `model.num_labels`); one holding strings maps to the sorted set of train
labels, or to the order of `model.labels` when given. Without `data.classes`, `model.labels`
names the data's label ids; with it, `model.labels` names the kept classes, in the order of
`data.classes` (both describe the head). Eval labels must be known to train.

Errors about the input (missing file or column, unknown label, empty split, unreadable image)
raise `InvalidJobInput` naming the file, row and column. Rows are counted from 1, the CSV
header not included.

Every dataset returned has a `labels` attribute (numpy int64, final ids) so callers can look
at the class balance or cache features without iterating the data.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunefleet.worker.engine import cifar, splits
from tunefleet.worker.engine.errors import InvalidJobInput

TEXT_SOURCES = ("csv", "jsonl", "parquet", "hf")
IMAGE_SOURCES = ("torchvision", "imagefolder")
TORCHVISION_DATASETS = ("FashionMNIST", "MNIST", "CIFAR10", "CIFAR100")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_TOKENIZE_CHUNK = 8192
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass
class Task:
    """What the model needs from the data; filled in by the trainer from the model it built."""

    kind: str  # "text" | "image"
    tokenizer: Any = None  # HF tokenizer for text
    image_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    in_channels: int = 3


@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset | None
    collate: Callable
    label_names: list[str]
    num_labels: int
    num_workers: int = 0  # data.num_workers, for the trainer's DataLoaders
    test: torch.utils.data.Dataset | None = None  # evaluated once, after training
    notes: list[str] = field(default_factory=list)  # for the job's log (where validation is from)


def is_deterministic(spec) -> bool:
    """True when the train split yields the same tensors every epoch (no augmentation)."""
    return spec.data.augment in ("", "none")


def load_data(spec, task: Task) -> DataBundle:
    """Load, label, filter and prepare both splits of `spec.data` for `task`."""
    d = spec.data
    allowed = {"text": TEXT_SOURCES, "image": IMAGE_SOURCES}.get(task.kind)
    if allowed is None:
        raise ValueError(f"unknown task kind {task.kind!r}")
    if d.source not in allowed:
        raise InvalidJobInput(
            f"data.source: {d.source!r} does not suit a {task.kind} model ({', '.join(allowed)})"
        )
    if task.kind == "text" and task.tokenizer is None:
        raise ValueError("Task(kind='text') needs a tokenizer")
    bundle = _load_text(spec, task) if task.kind == "text" else _load_images(spec, task)
    bundle.num_workers = d.num_workers if d.HasField("num_workers") else 0
    return bundle


# --------------------------------------------------------------------------- labels


@dataclass
class _LabelSpace:
    """How raw label values become ids: by name (`index`) or as integers below `size`."""

    names: list[str]
    index: dict[str, int] | None = None
    size: int = 0

    def encode(self, values: Sequence, *, where: str, column: str, describe=None) -> np.ndarray:
        describe = describe or _row
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if self.index is not None:
                key = _label_str(v)
                got = self.index.get(key) if key is not None else None
            else:
                got = _label_int(v)
                if got is not None and not 0 <= got < self.size:
                    got = None
            if got is None:
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: label {v!r} is not one of the "
                    f"training labels ({_preview(self._known())})"
                )
            out[i] = got
        return out

    def _known(self) -> list:
        return list(self.index) if self.index is not None else list(range(self.size))


def _label_str(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip() if isinstance(v, str) else str(v)


def _label_int(v) -> int | None:
    if isinstance(v, (bool, np.bool_, int, np.integer)) or (
        isinstance(v, str) and _INT_RE.match(v)
    ):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return None


def _row(i: int) -> str:
    return f"row {i + 1}"


def _preview(items: list, n: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _build_label_space(
    values: Sequence,
    *,
    spec,
    where: str,
    column: str,
    class_names: list[str] | None = None,
    describe=None,
    as_names: bool = False,
) -> _LabelSpace:
    """The train split's label space; `class_names` come from the dataset (ClassLabel, ...).

    `as_names` keeps labels as names even when they look like integers (folder names).
    """
    describe = describe or _row
    for i, v in enumerate(values):
        if _label_str(v) in (None, ""):
            raise InvalidJobInput(f"{where}: {describe(i)}, column {column!r}: the label is empty")
    model_labels = list(spec.model.labels) if not spec.data.classes else []
    as_ints = [_label_int(v) for v in values]
    if not as_names and all(x is not None for x in as_ints):
        ints = np.asarray(as_ints, dtype=np.int64)
        if len(ints) and ints.min() < 0:
            i = int(np.argmin(ints))
            raise InvalidJobInput(
                f"{where}: {describe(i)}, column {column!r}: "
                f"label {values[i]!r} is negative; integer labels must be class ids 0..N-1"
            )
        size = int(ints.max()) + 1 if len(ints) else 0
        names = model_labels or list(class_names or [])
        if names:
            if size > len(names):
                i = int(np.argmax(ints))
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: "
                    f"label {values[i]} is out of range for the {len(names)} names in "
                    + ("model.labels" if model_labels else "the dataset's class list")
                )
            size = len(names)
        else:
            names = [str(i) for i in range(size)]
        return _LabelSpace(names=names, size=size)
    keys = [_label_str(v) for v in values]
    names = model_labels or sorted(set(keys))
    index = {n: i for i, n in enumerate(names)}
    if model_labels:
        for i, k in enumerate(keys):
            if k not in index:
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: "
                    f"label {k!r} is not in model.labels ({_preview(names)})"
                )
    return _LabelSpace(names=names, index=index, size=len(names))


# --------------------------------------------------------------------------- tables


@dataclass
class _Table:
    """Columns of one split, read whole; `where` names it in messages."""

    where: str
    columns: dict[str, Callable[[], list]]
    num_rows: int
    class_names: dict[str, list[str]] = field(default_factory=dict)

    def column(self, name: str, field_name: str) -> list:
        if name not in self.columns:
            raise InvalidJobInput(
                f"{self.where}: no column {name!r} ({field_name}); available columns: "
                f"{', '.join(self.columns) or '(none)'}"
            )
        return self.columns[name]()


def _read_file_table(path: str, source: str) -> _Table:
    import pandas as pd

    if not path:
        raise InvalidJobInput(f"data: no file given for a {source} source")
    if not os.path.isfile(path):
        raise InvalidJobInput(f"{path}: no such file")
    try:
        if source == "csv":
            # Everything as written: no NaN for "NA", no 007 -> 7; labels are parsed later.
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif source == "parquet":
            df = pd.read_parquet(path)
        else:
            return _read_jsonl(path)
    except InvalidJobInput:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a bad file
        raise InvalidJobInput(f"{path}: cannot read as {source}: {e}") from e
    cols = {str(c): (lambda c=c: df[c].tolist()) for c in df.columns}
    return _Table(where=path, columns=cols, num_rows=len(df))


def _read_jsonl(path: str) -> _Table:
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidJobInput(f"{path}: line {lineno} is not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise InvalidJobInput(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
    names = list(dict.fromkeys(k for r in rows for k in r))
    cols = {n: (lambda n=n: [r.get(n) for r in rows]) for n in names}
    return _Table(where=path, columns=cols, num_rows=len(rows))


def _load_hf_split(spec, split: str, which: str = "train"):
    import datasets

    name, config = spec.data.name, spec.data.config or None
    where = f"hf dataset {name!r}" + (f" ({config})" if config else "") + f", split {split!r}"
    try:
        if os.path.isdir(name) and (
            os.path.isfile(os.path.join(name, "dataset_dict.json"))
            or os.path.isfile(os.path.join(name, "state.json"))
        ):
            obj = datasets.load_from_disk(name)
            if isinstance(obj, datasets.DatasetDict):
                if split not in obj:
                    raise InvalidJobInput(f"{where}: no such split; available: {', '.join(obj)}")
                obj = obj[split]
            elif which != "train":
                raise InvalidJobInput(
                    f"data.{which}: {name} holds a single split (saved from a Dataset, not a "
                    "DatasetDict); it can only be the train split"
                )
            return obj, where
        return datasets.load_dataset(name, config, split=split), where
    except InvalidJobInput:
        raise
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Not found / unknown split / bad config: the same spec fails the same way again.
        # Network errors are not caught: the worker may retry those.
        raise InvalidJobInput(f"{where}: {type(e).__name__}: {e}") from e


def _hf_table(ds, where: str) -> _Table:
    import datasets

    def col(n):
        return lambda: list(ds[n])

    names = {n: list(f.names) for n, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    return _Table(
        where=where,
        columns={n: col(n) for n in ds.column_names},
        num_rows=len(ds),
        class_names=names,
    )


def _read_split(spec, which: str) -> _Table:
    d = spec.data
    target = getattr(d, which)  # train | eval | test
    if d.source == "hf":
        ds, where = _load_hf_split(spec, target or "train", which)
        table = _hf_table(ds, where)
    else:
        table = _read_file_table(target, d.source)
    if table.num_rows == 0:
        raise InvalidJobInput(f"{table.where}: the {which} split is empty")
    return table


# --------------------------------------------------------------------------- text


class TokenizedTextDataset(Dataset):
    """Pre-tokenised examples stored flat: field arrays sliced by `offsets`."""

    def __init__(self, fields: dict[str, np.ndarray], offsets: np.ndarray, labels: np.ndarray):
        self.fields = fields
        self.offsets = offsets
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        s, e = self.offsets[i], self.offsets[i + 1]
        item = {k: v[s:e] for k, v in self.fields.items()}
        item["labels"] = int(self.labels[i])
        return item

    @property
    def lengths(self) -> np.ndarray:  # tokens per example, e.g. for length-grouped batches
        return np.diff(self.offsets)


class TextCollator:
    """Pads a batch to its longest example, the way the tokenizer's own `pad` would."""

    def __init__(self, pad_token_id: int, pad_token_type_id: int = 0, padding_side="right"):
        self.pad_values = {"input_ids": pad_token_id, "token_type_ids": pad_token_type_id}
        self.left = padding_side == "left"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        n = len(examples)
        lengths = [len(ex["input_ids"]) for ex in examples]
        width = max(lengths)
        keys = [k for k in examples[0] if k != "labels"]
        out = {k: np.full((n, width), self.pad_values.get(k, 0), dtype=np.int64) for k in keys}
        mask = np.zeros((n, width), dtype=np.int64)
        for i, (ex, length) in enumerate(zip(examples, lengths, strict=True)):
            span = slice(width - length, width) if self.left else slice(0, length)
            for k in keys:
                out[k][i, span] = ex[k]
            mask[i, span] = 1
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        batch["attention_mask"] = torch.from_numpy(mask)
        batch["labels"] = torch.tensor([ex["labels"] for ex in examples], dtype=torch.long)
        return batch


def _as_text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def _tokenize(tokenizer, texts: list, pairs: list | None, max_length: int):
    want_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    fields: dict[str, list[np.ndarray]] = {"input_ids": []}
    if want_types:
        fields["token_type_ids"] = []
    lengths: list[np.ndarray] = []
    for s in range(0, len(texts), _TOKENIZE_CHUNK):
        a = [_as_text(t) for t in texts[s : s + _TOKENIZE_CHUNK]]
        b = [_as_text(t) for t in pairs[s : s + _TOKENIZE_CHUNK]] if pairs is not None else None
        enc = tokenizer(
            a, b, truncation=True, max_length=max_length, padding=False,
            return_attention_mask=False, return_token_type_ids=want_types,
        )  # fmt: skip
        ids = enc["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        lengths.append(lens)
        total = int(lens.sum())
        for k in fields:
            dtype = np.int32 if k == "input_ids" else np.int8
            fields[k].append(np.fromiter(chain.from_iterable(enc[k]), dtype=dtype, count=total))
    lens = np.concatenate(lengths)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return {k: np.concatenate(v) for k, v in fields.items()}, offsets


def _load_text(spec, task: Task) -> DataBundle:
    d = spec.data
    text_col, pair_col, label_col = d.text_column or "text", d.text_pair_column, d.label_column
    label_col = label_col or "label"
    tables = {"train": _read_split(spec, "train")}
    if d.eval:
        tables["eval"] = _read_split(spec, "eval")
    if splits.test_source(d):
        tables["test"] = _read_split(spec, "test")

    raw: dict[str, dict[str, list]] = {}
    for name, table in tables.items():
        raw[name] = {
            "text": table.column(text_col, "data.text_column"),
            "label": table.column(label_col, "data.label_column"),
        }
        if pair_col:
            raw[name]["pair"] = table.column(pair_col, "data.text_pair_column")

    train = tables["train"]
    space = _build_label_space(
        raw["train"]["label"], spec=spec, where=train.where, column=label_col,
        class_names=train.class_names.get(label_col),
    )  # fmt: skip
    ids = {
        name: space.encode(raw[name]["label"], where=table.where, column=label_col)
        for name, table in tables.items()
    }
    names, size, parts = splits.select(space.names, space.size, spec, ids)

    max_length = d.max_length if d.HasField("max_length") and d.max_length > 0 else 128

    def build(role: str) -> TokenizedTextDataset | None:
        if role not in parts:
            return None
        part = parts[role]
        cols = raw[part.table]
        texts = [cols["text"][i] for i in part.rows]
        pairs = [cols["pair"][i] for i in part.rows] if pair_col else None
        fields, offsets = _tokenize(task.tokenizer, texts, pairs, max_length)
        return TokenizedTextDataset(fields, offsets, part.ids)

    tok = task.tokenizer
    pad_id = tok.pad_token_id
    if pad_id is None:
        # GPT-style tokenizers have no pad token; any id works under a zero attention mask.
        pad_id = tok.eos_token_id if tok.eos_token_id is not None else 0
    collate = TextCollator(
        pad_token_id=pad_id,
        pad_token_type_id=getattr(tok, "pad_token_type_id", 0) or 0,
        padding_side=getattr(tok, "padding_side", "right"),
    )
    return DataBundle(
        train=build("train"),
        eval=build("eval"),
        collate=collate,
        label_names=names,
        num_labels=size,
        test=build("test"),
        notes=[splits.describe(d, parts, {k: t.where for k, t in tables.items()})],
    )


# --------------------------------------------------------------------------- images


class _ToChannels(torch.nn.Module):
    """Make the image have `n` channels (1 or 3), whatever the source had."""

    def __init__(self, n: int):
        super().__init__()
        from torchvision.transforms import v2

        self.n = n
        self.gray = v2.Grayscale(num_output_channels=1)

    def forward(self, x):
        c = x.shape[-3]
        if c == self.n:
            return x
        if c == 4:  # RGBA
            x, c = x[..., :3, :, :], 3
        if self.n == 1 and c == 3:
            return self.gray(x)
        if c == 1:
            return x.expand(self.n, -1, -1)
        raise InvalidJobInput(f"cannot turn a {c}-channel image into {self.n} channels")


def _stats(values: Sequence[float], channels: int, name: str) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"Task.{name} has {len(values)} values for {channels} channels")


def build_image_transform(task: Task, *, augment: str, train: bool, native_size: int | None):
    """The transforms.v2 pipeline: uint8 image (PIL or CHW tensor) -> normalised float CHW.

    `native_size` is the data's fixed square size (28 for MNIST, 32 for CIFAR) or None when
    images vary (imagefolder); then every image is resized and centre-cropped.
    """
    from torchvision.transforms import v2

    size = task.image_size
    augment = augment if train else "none"
    steps: list = [v2.ToImage()]
    if augment in ("", "none"):
        if native_size != size:
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    elif augment in ("light", "strong"):
        if native_size == size:
            steps.append(v2.RandomCrop(size, padding=4))
        else:
            steps.append(v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True))
        steps.append(v2.RandomHorizontalFlip())
        if augment == "strong":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    else:
        raise InvalidJobInput(f"data.augment: unknown preset {augment!r} (none | light | strong)")
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        _ToChannels(task.in_channels),
        v2.Normalize(
            _stats(task.mean, task.in_channels, "mean"), _stats(task.std, task.in_channels, "std")
        ),
    ]
    if augment == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


class ImageDataset(Dataset):
    """`get(index)` yields a raw image (PIL or uint8 CHW tensor); rows picks and orders them."""

    def __init__(self, get: Callable[[int], Any], rows: np.ndarray, labels: np.ndarray, transform):
        self.get = get
        self.rows = rows
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        img = self.transform(self.get(int(self.rows[i])))
        return {"pixel_values": img.as_subclass(torch.Tensor), "labels": int(self.labels[i])}


class ImageCollator:
    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([ex["pixel_values"] for ex in examples]),
            "labels": torch.tensor([ex["labels"] for ex in examples], dtype=torch.long),
        }


class _TensorImages:
    """Images held as one uint8 tensor [N, C, H, W] (torchvision's MNIST/CIFAR arrays)."""

    def __init__(self, data: torch.Tensor):
        self.data = data

    def __call__(self, i: int) -> torch.Tensor:
        return self.data[i]


class _FileImages:
    def __init__(self, paths: list[str], mode: str):
        self.paths = paths
        self.mode = mode

    def __call__(self, i: int):
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert(self.mode)
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
            raise InvalidJobInput(f"{path}: cannot read image: {e}") from e


def _torchvision_split(spec, train: bool):
    import torchvision

    d = spec.data
    if d.name not in TORCHVISION_DATASETS:
        raise InvalidJobInput(
            f"data.name: {d.name!r} is not a supported torchvision dataset "
            f"({', '.join(TORCHVISION_DATASETS)})"
        )
    cls = getattr(torchvision.datasets, d.name)
    try:
        if d.name in cifar.NAMES:  # read without torchvision's pickle.load (cifar.py)
            if d.download:
                cls(root=d.root, train=train, download=True)  # fetch and verify only
            try:
                return cifar.read(d.root, d.name, train)
            except FileNotFoundError as e:
                raise RuntimeError(f"missing {e.filename}") from e
        ds = cls(root=d.root, train=train, download=d.download)
    except RuntimeError as e:
        hint = ""
        if d.name == "FashionMNIST":
            hint = (
                "; for the Debian package's gzipped files run "
                "tunefleet.worker.engine.data.prepare_fashion_mnist_root(src_dir, root)"
            )
        folder = getattr(cls, "base_folder", None) or f"{d.name}/raw"
        raise InvalidJobInput(
            f"data.root: {d.name} not found under {d.root} (expected {d.root}/{folder}/... "
            f"as torchvision lays it out, or set data.download: true){hint}: {e}"
        ) from e
    data = torch.as_tensor(np.asarray(ds.data))
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return data.contiguous(), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def _scan_image_folder(folder: str, classes: list[str] | None) -> tuple[list[str], list[str]]:
    """(paths, class name per path); sorted, like torchvision's ImageFolder."""
    if not os.path.isdir(folder):
        raise InvalidJobInput(f"{folder}: no such folder")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if classes is not None:
        extra = [c for c in found if c not in classes]
        if extra:
            raise InvalidJobInput(
                f"{folder}: class folder(s) {extra} are not among the training classes "
                f"({_preview(classes)})"
            )
    paths, labels = [], []
    for c in found:
        for dirpath, _, files in sorted(os.walk(os.path.join(folder, c), followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(c)
    if not paths:
        raise InvalidJobInput(
            f"{folder}: no images found (expected <class>/<image> with one of "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, labels


@dataclass
class _ImageSplit:
    get: Callable[[int], Any]
    labels: Sequence  # raw, as the source holds them
    where: str
    column: str
    describe: Callable[[int], str] = _row
    class_names: list[str] | None = None
    native: int | None = None  # fixed square size of every image, if the source has one


def _image_split(spec, which: str, mode: str, known: list[str] | None = None) -> _ImageSplit:
    d = spec.data
    name = getattr(d, which)  # train | eval | test
    if d.source == "torchvision":
        split = name or ("train" if which == "train" else "test")
        if split not in ("train", "test"):
            raise InvalidJobInput(f"data.{which}: torchvision split {split!r} is not train | test")
        data, targets, classes = _torchvision_split(spec, split == "train")
        native = data.shape[-1] if data.shape[-1] == data.shape[-2] else None
        return _ImageSplit(
            _TensorImages(data), targets, f"{d.name} {which}", "target", _row, classes, native
        )
    folder = os.path.join(d.root, name or "train")
    paths, classes = _scan_image_folder(folder, known)

    def describe(i: int) -> str:
        return f"file {paths[i]}"

    return _ImageSplit(_FileImages(paths, mode), classes, folder, "class folder", describe)


def _load_images(spec, task: Task) -> DataBundle:
    d = spec.data
    mode = "L" if task.in_channels == 1 else "RGB"
    tr = _image_split(spec, "train", mode)
    space = _build_label_space(
        tr.labels, spec=spec, where=tr.where, column=tr.column, class_names=tr.class_names,
        describe=tr.describe, as_names=d.source == "imagefolder",
    )  # fmt: skip
    found = {"train": tr}
    if d.eval:
        found["eval"] = _image_split(spec, "eval", mode, known=list(space.index or ()))
    if splits.test_source(d):
        found["test"] = _image_split(spec, "test", mode, known=list(space.index or ()))
    ids = {
        k: space.encode(x.labels, where=x.where, column=x.column, describe=x.describe)
        for k, x in found.items()
    }
    names, size, parts = splits.select(space.names, space.size, spec, ids)
    augment = d.augment or "none"
    tr_tf = build_image_transform(task, augment=augment, train=True, native_size=tr.native)
    ev_tf = build_image_transform(task, augment="none", train=False, native_size=tr.native)

    def build(role: str) -> ImageDataset | None:
        if role not in parts:
            return None
        part = parts[role]
        transform = tr_tf if role == "train" else ev_tf
        return ImageDataset(found[part.table].get, part.rows, part.ids, transform)

    return DataBundle(
        train=build("train"),
        eval=build("eval"),
        collate=ImageCollator(),
        label_names=names,
        num_labels=size,
        test=build("test"),
        notes=[splits.describe(d, parts, {k: x.where for k, x in found.items()})],
    )


# --------------------------------------------------------------------------- helpers

_FASHION_MNIST_FILES = [
    f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
]


def prepare_fashion_mnist_root(src_dir: str | Path, root: str | Path) -> Path:
    """Lay out gzipped Fashion-MNIST IDX files (e.g. Debian's /usr/share/datasets/fashion-mnist)
    the way torchvision's FashionMNIST reads them: `<root>/FashionMNIST/raw/<name>`, unzipped.

    Idempotent and safe to run concurrently: each file is decompressed to a temporary name and
    renamed into place, so a reader never sees half a file. Returns `root`.
    """
    src_dir, root = Path(src_dir), Path(root)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in _FASHION_MNIST_FILES:
        dst = raw / name
        if dst.is_file() and dst.stat().st_size > 0:
            continue
        gz, plain = src_dir / f"{name}.gz", src_dir / name
        if not gz.is_file() and not plain.is_file():
            raise FileNotFoundError(f"{gz}: not found (nor {plain})")
        tmp = raw / f".{name}.{os.getpid()}.tmp"
        try:
            with (
                gzip.open(gz) if gz.is_file() else open(plain, "rb") as fin,
                open(tmp, "wb") as fout,
            ):
                shutil.copyfileobj(fin, fout, length=1 << 20)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return root
