"""Where the feature cache keeps the frozen prefix's outputs: `FeatureStore`.

In memory up to a budget (`memory_budget`: $TUNEFLEET_FEATURE_CACHE_MB, or a quarter of the
machine's memory, at most 8 GiB); past it, in a memory-mapped file under
out_dir/feature_cache. feature_cache.py decides what to cache and when.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

MEMORY_ENV = "TUNEFLEET_FEATURE_CACHE_MB"  # memory budget override, in MiB


def memory_budget() -> int:
    """Bytes of cache kept in memory before spilling to disk: $TUNEFLEET_FEATURE_CACHE_MB, or
    a quarter of the machine's memory, at most 8 GiB."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return int(float(env) * 2**20)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return min(total // 4, 8 * 2**30)


def size_text(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} B"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class FeatureStore:
    """Frozen-prefix outputs of one split: example i is rows[start[i] : start[i] + length[i]].

    Rows are tokens ([hidden]) for text, stored without padding, or one feature map per image.
    They stay in memory up to `budget_bytes`; past it, all of them go to `spill_path`, which is
    then memory-mapped (the page cache keeps what fits).
    """

    def __init__(
        self, n: int, *, sequence: bool, left_padded: bool, budget_bytes: int, spill_path: Path
    ):
        self.sequence = sequence
        self.left_padded = left_padded
        self.budget_bytes = budget_bytes
        self.spill_path = spill_path
        self.start = np.zeros(n, dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int64)
        self.labels = torch.zeros(n, dtype=torch.long)
        self.nbytes = 0
        self.dtype: torch.dtype = torch.float32
        self.row_shape: tuple[int, ...] = ()
        self._rows = 0
        self._chunks: list[torch.Tensor] = []
        self._file: Any = None
        self._memory: torch.Tensor | None = None
        self._mmap: np.ndarray | None = None
        self._owns_spill = True

    def __len__(self) -> int:
        return len(self.length)

    @property
    def on_disk(self) -> bool:
        return self._mmap is not None or self._file is not None

    def add(
        self, indices: np.ndarray, rows: torch.Tensor, lengths: np.ndarray, labels: torch.Tensor
    ) -> None:
        """Examples `indices`, in order, are the consecutive `lengths` rows of `rows`."""
        rows = rows.detach().to("cpu").contiguous()
        self.dtype, self.row_shape = rows.dtype, tuple(rows.shape[1:])
        self.start[indices] = self._rows + np.cumsum(lengths) - lengths
        self.length[indices] = lengths
        self.labels[torch.from_numpy(indices)] = labels.to("cpu")
        self._rows += rows.shape[0]
        self.nbytes += rows.numel() * rows.element_size()
        if self._file is None and self.nbytes > self.budget_bytes:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.spill_path, "wb")  # noqa: SIM115 (closed in finish/close)
            for chunk in self._chunks:
                self._file.write(_to_numpy(chunk).tobytes())
            self._chunks.clear()
        if self._file is not None:
            self._file.write(_to_numpy(rows).tobytes())
        else:
            self._chunks.append(rows)

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            np_dtype = _to_numpy(torch.zeros(0, dtype=self.dtype)).dtype
            self._mmap = np.memmap(
                self.spill_path, dtype=np_dtype, mode="r", shape=(self._rows, *self.row_shape)
            )
        else:
            self._memory = torch.cat(self._chunks) if self._chunks else torch.zeros(0)
            self._chunks = []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory, self._mmap, self._chunks = None, None, []
        if self._owns_spill:  # not a shared cache entry's rows (shared_features.py)
            self.spill_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ shared entries

    def write_to(self, folder: Path) -> None:
        """Writes a finished store as folder/rows.bin, index.npz and meta.json (meta last:
        an entry with meta.json is complete)."""
        folder.mkdir(parents=True)
        rows = self._mmap if self._mmap is not None else self._memory
        assert rows is not None, "FeatureStore.write_to before finish()"
        with open(folder / "rows.bin", "wb") as f:
            if self._mmap is not None:
                for i in range(0, self._rows, 65536):  # the spill file, in pieces
                    f.write(np.ascontiguousarray(self._mmap[i : i + 65536]).tobytes())
            elif self._rows:
                f.write(_to_numpy(self._memory.contiguous()).tobytes())
        np.savez(folder / "index.npz", start=self.start, length=self.length,
                 labels=self.labels.numpy())  # fmt: skip
        meta = {
            "rows": self._rows,
            "row_shape": list(self.row_shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "sequence": self.sequence,
            "left_padded": self.left_padded,
            "nbytes": self.nbytes,
        }
        (folder / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def read_from(cls, folder: Path, budget_bytes: int) -> FeatureStore:
        """A store over an entry written by `write_to`: read into memory within the budget,
        else memory-mapped where it lies (and never deleted by `close`)."""
        meta = json.loads((folder / "meta.json").read_text())
        index = np.load(folder / "index.npz")
        store = cls(len(index["length"]), sequence=meta["sequence"],
                    left_padded=meta["left_padded"], budget_bytes=budget_bytes,
                    spill_path=folder / "rows.bin")  # fmt: skip
        store._owns_spill = False
        store.start, store.length = index["start"], index["length"]
        store.labels = torch.from_numpy(index["labels"])
        store.dtype = getattr(torch, meta["dtype"])
        store.row_shape, store._rows = tuple(meta["row_shape"]), meta["rows"]
        store.nbytes = meta["nbytes"]
        np_dtype = _to_numpy(torch.zeros(0, dtype=store.dtype)).dtype
        shape = (store._rows, *store.row_shape)
        if store.nbytes <= budget_bytes:
            flat = np.fromfile(folder / "rows.bin", dtype=np_dtype)
            store._memory = _from_numpy(flat.reshape(shape), store.dtype)
        else:
            store._mmap = np.memmap(folder / "rows.bin", dtype=np_dtype, mode="r", shape=shape)
        return store

    def _take(self, rows: np.ndarray) -> torch.Tensor:
        if self._mmap is not None:
            return _from_numpy(np.ascontiguousarray(self._mmap[rows]), self.dtype)
        assert self._memory is not None, "FeatureStore used before finish() or after close()"
        return self._memory[torch.from_numpy(rows)]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The collate of the cached split: features (padded like the text collate pads,
        with an attention mask) and labels of examples `indices`."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = self.labels[torch.from_numpy(idx)]
        if not self.sequence:
            return {"features": self._take(self.start[idx]), "labels": labels}
        lengths = self.length[idx]
        width, n = int(lengths.max()), len(idx)
        example = np.repeat(np.arange(n), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = within + (np.repeat(width - lengths, lengths) if self.left_padded else 0)
        features = torch.zeros((n, width, *self.row_shape), dtype=self.dtype)
        features[example, position] = self._take(np.repeat(self.start[idx], lengths) + within)
        mask = torch.zeros((n, width), dtype=torch.long)
        mask[example, position] = 1
        return {"features": features, "attention_mask": mask, "labels": labels}


class StoreIndices(Dataset):
    """Yields example indices; the FeatureStore's `batch` turns a list of them into tensors."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def build_order(dataset: Dataset, batch_size: int) -> list[np.ndarray]:
    """Batches for building the cache: text sorted by length, so that little is padding."""
    lengths = getattr(dataset, "lengths", None)
    n = len(dataset)
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
