"""Frozen features shared between jobs: a worker-side cache keyed by content.

Why: the trials of a sweep (and any jobs) that freeze the same prefix of the same model over
the same examples compute the same frozen-prefix outputs. The first job computes them (what
feature_cache.py does for one job anyway) and stores them here; the others load them and never
run the frozen prefix over those examples.

The key is a hash of everything the outputs depend on, read from what the job actually holds
rather than from its spec, so two jobs share an entry exactly when their prefix would compute
the same numbers:
- the model: the frozen prefix's parameters and buffers (their bytes, names, shapes, dtypes),
  the model class and its config (Hugging Face), and where the prefix ends (the boundary: a
  last_k job with a lower boundary has its own entries);
- the data: the examples the prefix sees after tokenisation/transforms (token arrays and
  labels of a tokenised text split; otherwise every item of the dataset) and the padding;
- how it runs: device type, precision, and the batch size the cache is built with (padding
  widths change float summation order; with it in the key a loaded entry holds bit for bit
  what this job would compute).

Concurrency: an entry is written into a temporary folder and renamed into place, so readers
never see half an entry and, when two processes finish the same key, the first rename wins
and the second discards its copy. A lock file per key (flock, released by the kernel when a
process dies) makes a second job wait for a first that is computing the same key instead of
computing it again.

Bounded: entries are evicted least recently used first (an entry's meta.json is touched on
every load) once the folder holds more than its maximum. Evicting renames the entry away
before deleting it; a process that still has it mapped keeps reading it (POSIX semantics).

Trust: entries are shared by every job on the worker, whoever submitted it, and are read
as they are (a key is a content hash; a reader cannot tell planted rows from computed ones).
The default folder lies under the worker's --artifacts, where no job may put its output.dir
(job_folder.py); a --feature-cache-dir of one's own should stay outside every --allowed-root.

Configured by the worker (``--feature-cache-dir``, ``--feature-cache-max-gb``), which passes
both to the training process in $TUNEFLEET_FEATURE_CACHE_DIR and $TUNEFLEET_FEATURE_CACHE_MAX_GB;
without the first (``ftctl run``, direct engine use) nothing is shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunefleet.worker.engine.feature_store import FeatureStore

DIR_ENV = "TUNEFLEET_FEATURE_CACHE_DIR"
MAX_GB_ENV = "TUNEFLEET_FEATURE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 10.0
_FORMAT = 1  # bump when what an entry holds changes
_STALE_TMP_S = 3600.0  # temporary folders older than this were left by a killed process


def from_env() -> SharedFeatureCache | None:
    """The cache the worker configured for this process, or None."""
    root = os.environ.get(DIR_ENV)
    if not root:
        return None
    max_gb = float(os.environ.get(MAX_GB_ENV) or DEFAULT_MAX_GB)
    return SharedFeatureCache(Path(root), int(max_gb * 2**30))


# ----------------------------------------------------------------------------- the key


def _hash_tensor(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes())


def model_fingerprint(model: torch.nn.Module, prefix_paths: list[str], prefix_modules: list) -> str:
    """What the prefix computes with: its weights, the boundary, the class and config."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"format {_FORMAT}|{type(model).__module__}.{type(model).__name__}|".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
        h.update(str(getattr(config, "_attn_implementation", "")).encode())
    h.update(("boundary " + ",".join(prefix_paths)).encode())
    for path, module in zip(prefix_paths, prefix_modules, strict=True):
        for name, p in module.named_parameters():
            _hash_tensor(h, f"{path}.{name}", p)
        for name, b in module.named_buffers():
            _hash_tensor(h, f"{path}.{name}", b)
    return h.hexdigest()


class Unhashable(Exception):
    """An item whose content cannot be read for the key: that job does not share."""


def dataset_fingerprint(dataset: Any, collate: Any) -> str | None:
    """The examples the prefix sees. A tokenised text split hashes its arrays (fast); any other
    dataset hashes every item it yields (one pass of data loading, no model). None when an
    item is something whose content we cannot read (its repr may not show it): no sharing
    rather than two different datasets under one key."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{type(dataset).__name__}|{len(dataset)}|".encode())
    h.update(repr(getattr(collate, "pad_values", None)).encode())
    h.update(repr(getattr(collate, "left", None)).encode())
    fields = getattr(dataset, "fields", None)
    if isinstance(fields, dict) and hasattr(dataset, "offsets"):
        for name in sorted(fields):
            h.update(name.encode())
            h.update(np.ascontiguousarray(fields[name]).tobytes())
        h.update(np.ascontiguousarray(dataset.offsets).tobytes())
        h.update(np.ascontiguousarray(dataset.labels).tobytes())
        return h.hexdigest()
    try:
        for i in range(len(dataset)):
            _hash_item(h, dataset[i])
    except Unhashable:
        return None
    return h.hexdigest()


def _hash_item(h: Any, item: Any) -> None:
    if torch.is_tensor(item):
        _hash_tensor(h, "", item)
    elif isinstance(item, np.ndarray):
        h.update(f"{item.dtype}{item.shape}".encode())
        h.update(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, dict):
        for k in sorted(item):
            h.update(str(k).encode())
            _hash_item(h, item[k])
    elif isinstance(item, (list, tuple)):
        for x in item:
            _hash_item(h, x)
    elif item is None or isinstance(item, (str, bytes, int, float, bool, np.generic)):
        h.update(repr(item).encode())
    else:  # a PIL image and the like: its pixels, if numpy can read them
        try:
            array = np.asarray(item)
        except Exception as e:
            raise Unhashable(type(item).__name__) from e
        if array.dtype == object:
            raise Unhashable(type(item).__name__)
        _hash_item(h, array)


def library_versions() -> str:
    """Versions of the code the prefix runs (outside its weights): a mask or attention change
    in a new release must not reuse features computed by the old one."""
    import sys

    names = ("torch", "transformers", "torchvision")
    return ",".join(
        f"{n} {getattr(sys.modules[n], '__version__', '?')}" for n in names if n in sys.modules
    )


def entry_key(model_part: str, data_part: str, *, split: str, runtime: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model_part}|{data_part}|{split}|{runtime}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the cache


class SharedFeatureCache:
    """Entries are folders root/KEY (rows.bin, index.npz, meta.json); see the module doc."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _entry(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def locked(self, key: str, on_wait: Callable[[], None]) -> Iterator[None]:
        """Holds the key's lock; calls on_wait() first if another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self, key: str, budget_bytes: int) -> FeatureStore | None:
        """The stored features of `key`, or None (absent, evicted or unreadable)."""
        entry = self._entry(key)
        try:
            store = FeatureStore.read_from(entry, budget_bytes)
            os.utime(entry / "meta.json")  # recently used (LRU)
        except (OSError, ValueError, KeyError):
            return None
        return store

    def save(self, key: str, store: FeatureStore) -> str | None:
        """Stores `store` under `key` unless it is there already; None, or why not stored."""
        if store.nbytes > self.max_bytes:
            return f"larger than the shared cache's maximum ({self.max_bytes / 2**30:.1f} GB)"
        entry = self._entry(key)
        if (entry / "meta.json").exists():
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            store.write_to(tmp)
            try:
                os.rename(tmp, entry)  # atomic; fails if another process got there first
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as e:  # disk full, permissions: the job goes on without sharing
            shutil.rmtree(tmp, ignore_errors=True)
            return f"{type(e).__name__}: {e}"
        self.evict(keep=key)
        return None

    def evict(self, *, keep: str = "") -> None:
        """Least recently used entries go until the folder holds at most max_bytes."""
        entries = []
        now = time.time()
        for path in self.root.iterdir():
            try:
                if path.name.startswith(".tmp-"):
                    if now - path.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                meta = path / "meta.json"
                if path.is_dir() and meta.exists():
                    size = json.loads(meta.read_text())["nbytes"]
                    entries.append((meta.stat().st_mtime, path, int(size)))
            except (OSError, ValueError, KeyError):
                continue
        total = sum(size for _, _, size in entries)
        for _, path, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if path.name == keep:
                continue
            trash = self.root / f".tmp-evicted-{path.name}-{time.monotonic_ns()}"
            try:
                os.rename(path, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            (self.root / f"{path.name}.lock").unlink(missing_ok=True)
            total -= size
