"""InputCache: a worker's local copies of the data and models jobs name by URL.

A spec may name its data or model as a URL (s3://, gs://, az://, hf://, https://,
file://); the worker fetches it before the engine starts and hands the engine a local
path. The copies live in one folder (`ftctl worker --input-cache-dir`, bounded by
`--input-cache-max-gb`) shared by every job of the worker -- and by every worker daemon pointed
at the same folder -- so a second job on the same data downloads nothing.

Keyed by content, not by name: an entry's key is a hash of what the store says about the
object (its ETag, or checksum, and size; for a folder, of every file's). An object
replaced under the same URL gets a new key, so a stale copy is never used; two URLs of
the same bytes share an entry when the store gives them the same checksum.

Two engines may ask for the same object at once (two workers on one host, a multi-node
job's ranks): each key has a lock file; whoever holds it exclusively downloads into a
temporary folder and renames it into place (a reader never sees half a file), the other
waits and finds the entry done. While a job uses an entry it holds another lock of the key
shared, so the LRU eviction (least recently used first, down to the size bound) skips it;
a download never waits for a job that uses the entry, only for another download.

Credentials come from the worker's environment only (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_*, HF_TOKEN): a spec never carries them (tunefleet.spec.urls refuses them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CACHE_MAX_GB", "Fetched", "InputCache", "InputFetchError"]

DEFAULT_CACHE_MAX_GB = 20.0
# What stores call an object's checksum in fsspec's info(), most specific first.
_CHECKSUM_KEYS = ("ETag", "etag", "md5Hash", "md5", "content_md5", "crc32c", "blob_id", "sha")


class InputFetchError(Exception):
    """A URL could not be fetched. `retryable`: the store failed (down, throttled), so a
    later attempt may succeed; False: the object is missing or the URL is unusable."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Fetched:
    """A URL's local copy: `path` to hand to the engine, `downloaded` bytes this time (0:
    it was in the cache). `close()` (or the `with` block) lets eviction have it again."""

    path: Path
    downloaded: int
    size: int
    _lock_fd: int | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the shared lock
            self._lock_fd = None

    def __enter__(self) -> Fetched:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _url_to_fs(url: str):
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a base dependency
        raise InputFetchError("reading URLs needs fsspec", retryable=False) from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # s3:// without s3fs, gs:// without gcsfs...
        scheme = url.split("://", 1)[0]
        raise InputFetchError(
            f"this worker cannot read {scheme}:// URLs: {exc} (install tunefleet[{scheme}])",
            retryable=False,
        ) from None
    except ValueError as exc:
        raise InputFetchError(f"{url}: {exc}", retryable=False) from None


def _identity(info: dict) -> str:
    """What says "these bytes" for one object: its checksum, or failing that its mtime."""
    for key in _CHECKSUM_KEYS:
        if info.get(key):
            return f"{key}={str(info[key]).strip(chr(34))}"
    if isinstance(info.get("lfs"), dict) and info["lfs"].get("sha256"):  # hf://
        return f"sha256={info['lfs']['sha256']}"
    for key in ("LastModified", "mtime", "last_modified", "updated"):
        if info.get(key):
            return f"{key}={info[key]}"
    return ""


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or "NoSuchKey" in repr(exc)


def local_path(url: str) -> Path | None:
    """A file:// URL's path (read in place, not copied); None for any other URL."""
    if url.lower().startswith("file://"):
        return Path(urlsplit(url).path)
    return None


class InputCache:
    """Local copies of URLs under `root`, at most `max_bytes` in all (least recently used
    entries go first; entries in use are kept even past the bound)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.objects = self.root / "objects"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"  # the folders appear with the first URL fetched

    def _ensure(self) -> None:
        for folder in (self.objects, self.locks, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def fetch(self, url: str) -> Fetched:
        """The local copy of the file or folder at `url`, downloaded if not cached.

        Raises InputFetchError; a missing object is not retryable, a failing store is."""
        path = local_path(url)
        if path is not None:
            return Fetched(path, 0, 0)
        fs, remote = _url_to_fs(url)
        self._ensure()
        try:
            listing, size = self._describe(fs, remote)
        except Exception as exc:
            if _is_missing(exc):
                raise InputFetchError(f"no such object: {url}", retryable=False) from None
            raise InputFetchError(
                f"cannot read {url}: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        name = remote.rstrip("/").rsplit("/", 1)[-1] or "input"
        key = hashlib.sha256(
            json.dumps([name, listing], sort_keys=True).encode("utf-8")
        ).hexdigest()[:32]
        entry = self.objects / key
        fd = os.open(self.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Two locks a key. The use lock, held shared from here until close(), keeps
            # eviction (which takes it exclusively, without waiting) off the entry. The
            # download lock, held exclusively only while downloading, makes one fetcher per
            # key download while the others wait for its rename -- never for a job that
            # merely uses the entry, which may train for hours.
            fcntl.flock(fd, fcntl.LOCK_SH)
            downloaded = 0
            if not entry.is_dir():
                downloaded = self._download_once(fs, remote, listing, entry, name, url)
            os.utime(entry)  # most recently used
        except BaseException:
            os.close(fd)
            raise
        fetched = Fetched(entry / name, downloaded, size, fd)
        if downloaded:
            self.evict(keep=key)
        return fetched

    def _download_once(self, fs, remote, listing, entry: Path, name: str, url: str) -> int:
        """Downloads the entry unless another fetcher does it first; 0 if it did."""
        fd = os.open(self.locks / f"{entry.name}.download", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if entry.is_dir():  # another fetcher downloaded it while this one waited
                return 0
            for stale in self.tmp.glob(f"{entry.name}.*"):  # this key's: nobody else's now
                shutil.rmtree(stale, ignore_errors=True)
            return self._download(fs, remote, listing, entry, name, url)
        finally:
            os.close(fd)  # releases the download lock

    def _describe(self, fs, remote: str) -> tuple[list, int]:
        """[(relative name, identity, size)] of the object (a file: one row, name "")."""
        with contextlib.suppress(Exception):
            fs.invalidate_cache(remote)  # a listing cached earlier may predate an upload
        info = fs.info(remote)
        if info.get("type") != "directory":
            return [("", _identity(info), int(info.get("size") or 0))], int(info.get("size") or 0)
        found = fs.find(remote, detail=True)
        if not found:
            raise FileNotFoundError(remote)
        root = remote.rstrip("/")
        rows = [
            (p[len(root) :].lstrip("/"), _identity(i), int(i.get("size") or 0))
            for p, i in sorted(found.items())
        ]
        return rows, sum(r[2] for r in rows)

    def _download(self, fs, remote: str, listing: list, entry: Path, name: str, url: str) -> int:
        staging = Path(tempfile.mkdtemp(prefix=f"{entry.name}.", dir=self.tmp))
        try:
            target = staging / name
            total = 0
            for relative, _checksum, size in listing:
                source = f"{remote.rstrip('/')}/{relative}" if relative else remote
                dest = target.joinpath(*relative.split("/")) if relative else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(source, str(dest))
                except Exception as exc:
                    if _is_missing(exc):
                        raise InputFetchError(f"no such object: {url}", retryable=False) from None
                    raise InputFetchError(
                        f"downloading {url} failed: {type(exc).__name__}: {exc}", retryable=True
                    ) from None
                total += dest.stat().st_size if dest.exists() else size
            os.rename(staging, entry)  # atomic: the entry is complete or absent
            log.info("fetched %s (%d bytes) into %s", url, total, entry)
            return total
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def size(self) -> int:
        if not self.objects.is_dir():
            return 0
        return sum(_tree_size(e) for e in self.objects.iterdir())

    def evict(self, keep: str = "") -> list[str]:
        """Removes least recently used entries until the cache fits `max_bytes`; entries in
        use (their lock held by a job) and `keep` stay. Returns the removed keys."""
        self._remove_leftovers()
        entries = []
        for e in self.objects.iterdir() if self.objects.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                entries.append((e.stat().st_mtime, e.name, _tree_size(e)))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, key, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            fd = os.open(self.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in use, or being downloaded
            try:
                doomed = self.tmp / f"evict.{key}.{time.monotonic_ns()}"
                os.rename(self.objects / key, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                total -= size
                removed.append(key)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        if removed:
            log.info("input cache: evicted %d entries, %d bytes left", len(removed), total)
        return removed

    def _remove_leftovers(self) -> None:
        """Removes what a fetcher killed mid-download (kill -9, the OOM killer, a power cut)
        left in tmp/: a staging folder never renamed into place, which neither the size
        bound nor eviction counts, so each such kill used to leak a partial copy for good.
        A staging folder is a leftover when nobody holds its key's download lock (another
        worker sharing the folder may be downloading into its own right now); an `evict.`
        folder always is (it was renamed out of objects/ under the key's lock)."""
        for leftover in self.tmp.iterdir() if self.tmp.is_dir() else ():
            key = leftover.name.split(".", 1)[0]
            if key == "evict":
                shutil.rmtree(leftover, ignore_errors=True)
                continue
            fd = os.open(self.locks / f"{key}.download", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being downloaded
            else:
                shutil.rmtree(leftover, ignore_errors=True)
            finally:
                os.close(fd)


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total
