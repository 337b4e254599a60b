"""CIFAR-10/100 read from torchvision's on-disk layout without running arbitrary pickles.

torchvision's CIFAR classes read `<root>/cifar-10-batches-py/` (or `cifar-100-python/`) with
`pickle.load`, after checking every file's md5 against the official archive. That is safe
for the files torchvision downloaded itself, and it is why a folder that is not byte-for-byte
the official one (a copy re-pickled elsewhere, a tiny test fixture) is refused as
"corrupted". The engine reads these files itself, with an unpickler that only rebuilds
what the format holds (dicts, lists, strings, numpy arrays): a planted pickle cannot run
code, and any well-formed folder in that layout loads, which is what `download: false`
promises. With `download: true` torchvision fetches and verifies the archive first.
"""

from __future__ import annotations

import importlib
import os
import pickle
from typing import Any

import numpy as np
import torch

from tunefleet.worker.engine.errors import InvalidJobInput

NAMES = ("CIFAR10", "CIFAR100")


def _multiarray():
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
    return importlib.import_module(
        "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
    )


def _allowed(module: str, name: str) -> Any:
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
        "_reconstruct",
        "scalar",
    ):
        return getattr(_multiarray(), name)
    if (module, name) == ("numpy", "ndarray"):
        return np.ndarray
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if (module, name) == ("_codecs", "encode"):  # bytes, as Python 3 writes them (protocol 2)
        import codecs

        return codecs.encode
    return None


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file")
        return found


def _load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError... for a bad file
        raise InvalidJobInput(f"{path}: refused to load or unreadable as a CIFAR file: {e}") from e
    if not isinstance(obj, dict):
        raise InvalidJobInput(f"{path}: not a CIFAR file (a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read(root: str, name: str, train: bool) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(uint8 images [N, 3, 32, 32], targets, class names) of one split of CIFAR10/CIFAR100.

    Raises FileNotFoundError when a file of the layout is missing.
    """
    import torchvision

    cls = getattr(torchvision.datasets, name)
    folder = os.path.join(root, cls.base_folder)
    images, targets = [], []
    for file_name, _md5 in cls.train_list if train else cls.test_list:
        path = os.path.join(folder, file_name)
        entry = _load(path)
        labels = entry.get("labels", entry.get("fine_labels"))
        data = entry.get("data")
        if labels is None or not isinstance(data, np.ndarray):
            raise InvalidJobInput(f"{path}: no 'data' array or 'labels' list")
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        targets.extend(int(x) for x in labels)
    meta = _load(os.path.join(folder, cls.meta["filename"]))
    classes = [_str(c) for c in meta.get(cls.meta["key"], [])]
    data = torch.from_numpy(np.concatenate(images)) if images else torch.zeros(0, 3, 32, 32)
    return data.contiguous(), np.asarray(targets, dtype=np.int64), classes


def write(
    root: str, name: str, splits: dict[str, tuple[np.ndarray, list[int]]], classes: list[str]
) -> str:
    """Write a (small) dataset in torchvision's CIFAR layout: `splits` maps "train"/"test" to
    (uint8 images [N, 3, 32, 32], labels); the train split is spread over the batch files.
    For tests and for data prepared elsewhere; returns the dataset folder."""
    import torchvision

    cls = getattr(torchvision.datasets, name)
    folder = os.path.join(root, cls.base_folder)
    os.makedirs(folder, exist_ok=True)
    label_key = "labels" if name == "CIFAR10" else "fine_labels"
    for split, files in (("train", cls.train_list), ("test", cls.test_list)):
        images, labels = splits[split]
        chunks = np.array_split(np.arange(len(labels)), len(files))
        for (file_name, _), idx in zip(files, chunks, strict=True):
            entry = {
                "batch_label": f"{split} batch",
                label_key: [int(labels[i]) for i in idx],
                "data": np.ascontiguousarray(images[idx].reshape(len(idx), -1), dtype=np.uint8),
                "filenames": [f"{split}_{i}.png" for i in idx],
            }
            with open(os.path.join(folder, file_name), "wb") as f:
                pickle.dump(entry, f, protocol=2)
    with open(os.path.join(folder, cls.meta["filename"]), "wb") as f:
        pickle.dump({cls.meta["key"]: list(classes)}, f, protocol=2)
    return folder
