"""Image datasets (torchvision datasets, image folders): decoded lazily, through a
transforms.v2 pipeline; and `prepare_fashion_mnist_root`, which lays out raw Fashion-MNIST files
as torchvision expects them."""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunefleet.worker.engine import cifar, splits
from tunefleet.worker.engine.data.bundle import DataBundle
from tunefleet.worker.engine.data.labels import build_label_space, describe_row, preview
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.task import Task

TORCHVISION_DATASETS = ("FashionMNIST", "MNIST", "CIFAR10", "CIFAR100")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
    """`get(index)` yields a raw image (PIL or uint8 CHW tensor); rows picks and orders them.

    A random transform (augmentation) draws from the process's RNG, unless the trainer
    called `seed_epoch`: then example i of epoch e is augmented from its own seed, a function
    of (train.seed, e, i). Exact resume needs that: Accelerate's loader loads the next batch
    before the current one's step, so a checkpoint's RNG state already holds the next
    batch's draws, and a resumed run would augment that batch (and drop out) differently.
    """

    def __init__(
        self, get: Callable[[int], Any], rows: np.ndarray, labels: np.ndarray, transform,
        *, random: bool = False,
    ):  # fmt: skip
        self.get = get
        self.rows = rows
        self.labels = labels
        self.transform = transform
        self.random = random  # the transform draws random numbers
        self.seed: int | None = None
        self.epoch = 0

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Augment epoch `epoch` from per-example seeds (class docstring)."""
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        raw = self.get(int(self.rows[i]))
        if self.random and self.seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 100_003 + self.epoch) * 1_000_003 + i) % 2**63)
                img = self.transform(raw)
        else:
            img = self.transform(raw)
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
                "tunefleet.worker.engine.data.images.prepare_fashion_mnist_root(src_dir, root)"
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
    """(paths, class name per path); sorted, like torchvision's ImageFolder. Hidden entries
    (a name starting with ".") are skipped, as Hugging Face's imagefolder does: a Jupyter
    .ipynb_checkpoints folder is no class, and macOS's ._x.png holds no image."""
    if not os.path.isdir(folder):
        raise InvalidJobInput(f"{folder}: no such folder")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if classes is not None:
        extra = [c for c in found if c not in classes]
        if extra:
            raise InvalidJobInput(
                f"{folder}: class folder(s) {extra} are not among the training classes "
                f"({preview(classes)})"
            )
    paths, labels = [], []
    for c in found:
        walked = []
        for dirpath, dirs, files in os.walk(os.path.join(folder, c), followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # prunes the walk
            walked.append((dirpath, files))
        for dirpath, files in sorted(walked):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(c)
    if not paths:
        raise InvalidJobInput(
            f"{folder}: no images found (expected <class>/<image> with one of "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, labels


def image_folder_classes(folder: str) -> list[str]:
    """The classes `_scan_image_folder` would find in `folder` (sorted; a class folder
    without an image is none), stopping at each class's first image: `ftctl plan` sizes
    the head without listing a whole dataset."""
    if not os.path.isdir(folder):
        return []
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    return [c for c in found if _holds_an_image(os.path.join(folder, c))]


def _holds_an_image(folder: str) -> bool:
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") for f in files):
            return True
    return False


@dataclass
class _ImageSplit:
    get: Callable[[int], Any]
    labels: Sequence  # raw, as the source holds them
    where: str
    column: str
    describe: Callable[[int], str] = describe_row
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
            _TensorImages(data),
            targets,
            f"{d.name} {which}",
            "target",
            describe_row,
            classes,
            native,
        )
    folder = os.path.join(d.root, name or "train")
    paths, classes = _scan_image_folder(folder, known)

    def describe(i: int) -> str:
        return f"file {paths[i]}"

    return _ImageSplit(_FileImages(paths, mode), classes, folder, "class folder", describe)


def load_images(spec, task: Task) -> DataBundle:
    d = spec.data
    mode = "L" if task.in_channels == 1 else "RGB"
    tr = _image_split(spec, "train", mode)
    space = build_label_space(
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
        train = role == "train"
        return ImageDataset(
            found[part.table].get, part.rows, part.ids, tr_tf if train else ev_tf,
            random=train and augment not in ("", "none"),
        )  # fmt: skip

    return DataBundle(
        train=build("train"),
        eval=build("eval"),
        collate=ImageCollator(),
        label_names=names,
        num_labels=size,
        test=build("test"),
        notes=[splits.describe(d, parts, {k: x.where for k, x in found.items()})],
    )


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
