"""The inputs of one attempt, made ready on this worker before the engine starts.

Who checks what (issue 15): the coordinator checked only the spec's schema, since a spec's
paths are the workers' paths. Here, on the worker that will read them, the URLs are
fetched into the input cache (tunefleet.worker.input_cache), then the local spec's paths
must pass the worker's PathPolicy (--allowed-root) and the environment check
(tunefleet.spec.environment). Any problem fails the attempt at once, every problem named
with its field path (`data.train: no such file on worker w-abc: /data/x.csv`); only a
store that failed (not a missing object) makes it retryable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tunefleet.limits import clip_chars
from tunefleet.spec.environment import check_environment, path_fields
from tunefleet.spec.urls import is_url
from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.input_cache import Fetched, InputCache, InputFetchError, local_path
from tunefleet.worker.path_policy import PathPolicy

__all__ = ["Materialized", "materialize", "prepare_inputs"]

_REASON_MAX_CHARS = 1000


@dataclass
class Materialized:
    """A spec with every URL replaced by its local copy, and what fetching them cost."""

    spec: spec_pb2.JobSpec
    fetched: list[Fetched]
    notes: list[str]  # one line per URL, for the job's event log
    downloaded: int

    def job(self, job: job_pb2.Job) -> job_pb2.Job:
        """A copy of `job` with the local spec."""
        local = job_pb2.Job()
        local.CopyFrom(job)
        local.spec.CopyFrom(self.spec)
        return local

    def close(self) -> None:
        for f in self.fetched:
            f.close()


def materialize(spec, cache: InputCache | None, *, where: str) -> Materialized:
    """Fetches every URL the spec names (data.*, model.name, model.checkpoint) through
    `cache` and returns the spec with local paths. Raises InputFetchError naming the field
    (`data.train: no such object: s3://...`; every field that failed, joined by "; "),
    retryable only if the store itself failed for each of them."""
    local = spec_pb2.JobSpec()
    local.CopyFrom(spec)
    result = Materialized(local, [], [], 0)
    failed: list[InputFetchError] = []
    for f in path_fields(spec):
        if not is_url(f.value):
            continue
        started = time.monotonic()
        try:
            if cache is None and local_path(f.value) is None:
                raise InputFetchError(f"worker {where} has no input cache", retryable=False)
            fetched = cache.fetch(f.value) if cache else Fetched(local_path(f.value), 0, 0)
        except InputFetchError as exc:
            failed.append(InputFetchError(f"{f.path}: {exc}", retryable=exc.retryable))
            continue
        result.fetched.append(fetched)
        result.downloaded += fetched.downloaded
        message, attr = f.path.split(".", 1)
        setattr(getattr(local, message), attr, str(fetched.path))
        if local_path(f.value) is None:
            took = time.monotonic() - started
            how = (
                f"downloaded {fetched.downloaded:,} bytes in {took:.2f} s"
                f" ({fetched.downloaded / max(took, 1e-6) / 1e6:.1f} MB/s)"
                if fetched.downloaded
                else f"cached, 0 bytes downloaded ({fetched.size:,} bytes) in {took:.2f} s"
            )
            result.notes.append(f"{f.path}: {f.value} on worker {where}: {how}")
    if failed:
        result.close()
        retryable = all(e.retryable for e in failed)
        raise InputFetchError("; ".join(str(e) for e in failed), retryable=retryable)
    return result


def prepare_inputs(
    spec: spec_pb2.JobSpec,
    cache: InputCache | None,
    policy: PathPolicy,
    worker_id: str,
    check: bool = True,
) -> tuple[Materialized | None, tuple[str, bool] | None]:
    """(inputs, None) when the attempt may start, else (None, (reason, retryable)).
    `check` False skips the environment check (the policy still applies)."""
    try:
        inputs = materialize(spec, cache, where=worker_id)
    except InputFetchError as exc:
        return None, (clip_chars(str(exc), _REASON_MAX_CHARS), exc.retryable)
    refused = policy.check(inputs.spec)  # the local copies: file:// paths, cache entries
    if refused is None and check:
        problems = check_environment(inputs.spec, where=f"worker {worker_id}")
        refused = "; ".join(str(p) for p in problems) or None
    if refused is None:
        return inputs, None
    inputs.close()
    return None, (clip_chars(refused, _REASON_MAX_CHARS), False)
