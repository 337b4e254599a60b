"""The tunefleet SDK: submit fine-tuning jobs to a coordinator, follow them, cancel them.

    from tunefleet.client import Client

    with Client("127.0.0.1:50051") as client:
        job = client.submit("examples/sst2.yaml")
        for event in job.events():
            print(event.kind, event.payload)
        print(job.wait().summary)

Against a coordinator with TLS and tokens: `Client(target, token=..., tls_ca="ca.pem")`,
or set $TUNEFLEET_TOKEN (or $TUNEFLEET_TOKEN_FILE) and $TUNEFLEET_TLS_CA.

Every call raises a `TunefleetError` subclass (see `tunefleet.client.errors`), never a
raw gRPC error. Unary calls carry a deadline and retry on UNAVAILABLE with exponential
backoff; event streams reconnect and resume after the last event they yielded.
"""

from __future__ import annotations

import difflib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from tunefleet.client.errors import (
    DeadlineExceeded,
    JobFailed,
    NotFound,
    TunefleetError,
    ValidationError,
    from_rpc_error,
    seconds,
    wire_int,
    wire_limit,
    wire_str,
)
from tunefleet.client.sweeps import SWEEP_ID_PREFIX, SweepClient
from tunefleet.client.types import Event, Job, JobState, Worker
from tunefleet.client.uploads import (
    NO_STORAGE_HINT,
    UploadError,
    UploadProgress,
    local_inputs,
    upload_inputs,
)
from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR
from tunefleet.spec.errors import FieldError, SpecError
from tunefleet.transport import (
    SDK_CHANNEL_OPTIONS,
    ChannelSecurity,
    RetryPolicy,
    check_target,
    open_channel,
)
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, spec_pb2

__all__ = [
    "DEFAULT_TARGET",
    "ENV_TARGET",
    "JOB_ID_PREFIX",
    "Client",
    "JobHandle",
    "RetryPolicy",
    "normalize_job_id",
]

# Kept under the SDK's own names (they are part of its API); the values live in
# tunefleet.defaults, shared with the CLI, the coordinator and the worker.
ENV_TARGET = ENV_COORDINATOR
DEFAULT_TARGET = DEFAULT_ADDRESS

T = TypeVar("T")
# Every job id the coordinator hands out is "job-" + 8 hex digits; people copy the digits.
JOB_ID_PREFIX = "job-"
_HEX = re.compile(r"[0-9a-f]+")
_FULL_ID = re.compile(r"(job|sweep)-[0-9a-f]{8}")
SpecLike = spec_pb2.JobSpec | dict | str | os.PathLike


class Client(SweepClient):
    """A connection to one tunefleet coordinator (sweeps: `submit_sweep` and the other
    calls of `tunefleet.client.sweeps.SweepClient`).

    Args:
        target: "host:port" of the coordinator. Default: $TUNEFLEET_COORDINATOR, else
            "127.0.0.1:50051".
        timeout: Deadline in seconds for each unary call.
        retry: Backoff for UNAVAILABLE answers (see `RetryPolicy`).
        channel_options: Extra gRPC channel arguments, appended to the defaults.
        token: Sent as `authorization: Bearer ...` on every call. Default:
            $TUNEFLEET_TOKEN, else the file named by $TUNEFLEET_TOKEN_FILE, else none.
        tls_ca: PEM file of the CA that signed the coordinator's certificate; turns TLS
            on. Default: $TUNEFLEET_TLS_CA.
        tls_cert, tls_key: This client's certificate and key, for a coordinator that
            requires client certificates (mutual TLS). Default: $TUNEFLEET_TLS_CERT/_KEY.
        tls: True = TLS even without `tls_ca` (trusting the system's CAs); False = never.
        security: A ready `ChannelSecurity`; replaces token/tls_* and the environment.
        on_unavailable: Called as `on_unavailable(target, give_up_s)` when a call first
            finds the coordinator unreachable (once per outage, before retrying; give_up_s:
            how long it will keep trying), so a program can say it is waiting instead of
            hanging in silence until `retry` gives up.

    Raises:
        ValidationError: A target that is not HOST:PORT, unreadable token or TLS files, or a
            certificate without a key.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: Iterable[tuple[str, int | str]] = (),
        token: str | None = None,
        tls_ca: str | os.PathLike | None = None,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
        tls: bool | None = None,
        security: ChannelSecurity | None = None,
        on_unavailable: Callable[[str, float], None] | None = None,
    ):
        self.on_unavailable = on_unavailable
        if target is not None:
            wire_str("target", target, "127.0.0.1:50051")
        self.target = target or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
        self.timeout = seconds("timeout", timeout)
        self.retry = retry or RetryPolicy()
        try:
            check_target(self.target, "target" if target else f"${ENV_TARGET}")
            if security is None:
                security = ChannelSecurity.resolve(
                    token=token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
                )
            self._channel = open_channel(
                self.target, [*SDK_CHANNEL_OPTIONS, *channel_options], security
            )
        except ValueError as e:
            raise ValidationError(str(e)) from None
        self.security = security
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    # --- jobs -------------------------------------------------------------------------

    def submit(
        self,
        spec: SpecLike,
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        check_paths: bool = True,
        upload: bool | None = None,
        upload_progress: Callable[[UploadProgress], None] | None = None,
    ) -> JobHandle:
        """Validate a job spec locally, upload its local files if need be, then submit it.

        Args:
            spec: A job YAML path, a dict in the YAML's shape, or a `JobSpec`. Relative
                paths in a YAML resolve against its folder; in a dict or JobSpec, against
                the current directory.
            idempotency_key: Submitting twice with one key creates one job. A fresh key is
                generated when not given, which is what makes retrying a submit safe.
            priority: Overrides the spec's `priority` (higher runs first).
            check_paths: Look at the data/model paths on this machine: one it has is checked
                (and uploaded, see `upload`); one it has not passes through as the workers'
                path, with a note in the handle's `notes`. False: send every path as is.
            upload: Upload the local files the spec names to the coordinator's storage
                (`ftctl server --storage-uri`) and submit their URLs
                (tunefleet.client.uploads). None: when the coordinator has storage; True:
                UploadError if it has none; False: never.
            upload_progress: Called as each chunk of an upload is sent (`UploadProgress`:
                bytes done and total, the file on its way), e.g. to draw a bar.

        Raises:
            ValidationError: The spec is invalid; `.errors` lists every problem, exactly as
                the coordinator would report them.
            UploadError: A local file could not be uploaded (after retries).
        """
        if priority is not None:
            wire_int("priority", priority, -(2**31), 2**31 - 1)
        if idempotency_key is not None:
            wire_str("idempotency_key", idempotency_key)
        job_spec = self._resolve_source(_prepare_here(spec, check_paths))
        notes: list[str] = []
        if check_paths:
            job_spec, notes = self._local_inputs(job_spec, upload, upload_progress)
        if priority is not None:
            job_spec.priority = priority
        request = coordinator_pb2.SubmitJobRequest(
            spec=job_spec, idempotency_key=idempotency_key or uuid.uuid4().hex
        )
        job = Job.from_proto(self._unary(self._stub.SubmitJob, request))
        handle = JobHandle(self, job.id, job=job)
        handle.notes = notes
        return handle

    def storage_uri(self) -> str:
        """Where this coordinator has clients upload a job's local files ("": nowhere)."""
        response = self._unary(self._stub.ListWorkers, coordinator_pb2.ListWorkersRequest())
        return response.storage_uri

    def _local_inputs(
        self,
        spec: spec_pb2.JobSpec,
        upload: bool | None,
        progress: Callable[[UploadProgress], None] | None = None,
    ) -> tuple[spec_pb2.JobSpec, list[str]]:
        """Uploads the local files if storage says so; the notes to show."""
        present, notes, _ = local_inputs(spec)  # _prepare_here reported the problems
        if not present or upload is False:
            return spec, notes
        storage = self.storage_uri()
        if not storage:
            if upload:
                fields = ", ".join(f.path for f in present)
                raise UploadError(
                    f"cannot upload {fields}: the coordinator has no storage; {NO_STORAGE_HINT}"
                )
            return spec, notes
        spec, done = upload_inputs(spec, present, storage, progress=progress)
        notes.append(
            f"uploaded {done.uploaded_files} files ({done.uploaded_bytes:,} bytes) to {storage}"
            + (f", {done.reused_files} already there" if done.reused_files else "")
        )
        return spec, notes

    def get(self, job_id: str) -> Job:
        """The job's current state. `job_id` may be short (see `resolve_job_id`); raises
        NotFound, with "did you mean" suggestions, for an unknown or ambiguous one."""
        return self._with_job_id(
            job_id,
            lambda jid: Job.from_proto(
                self._unary(self._stub.GetJob, coordinator_pb2.GetJobRequest(job_id=jid))
            ),
        )

    def resolve_job_id(self, job_id: str) -> str:
        """The full id of the job `job_id` names: the id itself, its hex digits without the
        "job-" prefix, or a unique prefix of them. Raises NotFound naming the candidates
        ("did you mean job-...?") when there is none or several."""
        return self.get(job_id).id

    def list(self, states: Iterable[JobState | str] | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally only those in `states` (one state or several:
        "running", JobState.QUEUED...);
        at most `limit` (all when <= 0), fetched a page at a time.

        Each job's `spec` is a summary (name, priority, resources, model, data, strategy):
        `get(job_id)` has the whole spec."""
        if isinstance(states, (str, int)):  # one state ("running"), not its letters
            states = [states]
        try:
            wanted = [JobState.parse(s).to_proto() for s in states or ()]
        except ValueError as e:
            raise ValidationError(str(e)) from None
        limit = wire_limit(limit)
        jobs: list[Job] = []
        token = ""
        while True:
            want = limit - len(jobs) if limit > 0 else 0
            request = coordinator_pb2.ListJobsRequest(states=wanted, limit=want, page_token=token)
            response = self._unary(self._stub.ListJobs, request)
            jobs += [Job.from_proto(j) for j in response.jobs]
            token = response.next_page_token
            if not token or (limit > 0 and len(jobs) >= limit):
                return jobs[:limit] if limit > 0 else jobs

    def cancel(self, job_id: str, reason: str = "") -> Job:
        """Ask the coordinator to cancel a job; returns the job as it stands after the request."""
        wire_str("reason", reason)
        return self._with_job_id(
            job_id,
            lambda jid: Job.from_proto(
                self._unary(
                    self._stub.CancelJob,
                    coordinator_pb2.CancelJobRequest(job_id=jid, reason=reason),
                )
            ),
        )

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (no call is made until you use it)."""
        return JobHandle(self, job_id)

    def events(
        self,
        job_id: str,
        after_seq: int = 0,
        follow: bool = True,
        *,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """The job's events with seq > after_seq; with follow, live ones until it ends.

        The iterator survives coordinator restarts and network blips: it reconnects with
        backoff (up to `retry.stream_max_elapsed_s` per outage) and resumes after the last
        event it yielded, so every event is yielded exactly once and in order.

        Args:
            timeout: Raise DeadlineExceeded if the stream is still open after this long.
        """
        after_seq = wire_int("after_seq", after_seq)
        timeout = seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._stream_events(normalize_job_id(job_id), after_seq, follow, deadline)

    # --- workers ----------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        response = self._unary(self._stub.ListWorkers, coordinator_pb2.ListWorkersRequest())
        return [Worker.from_proto(w) for w in response.workers]

    def drain_worker(self, worker_id: str) -> Worker:
        """Take a worker out of service (admin): it gets no new jobs, its running job
        checkpoints and resumes on another worker, then it exits. Returns it, DRAINING."""
        request = coordinator_pb2.DrainWorkerRequest(worker_id=wire_str("worker_id", worker_id))
        return Worker.from_proto(self._unary(self._stub.DrainWorker, request))

    # --- plumbing ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TunefleetError("this Client is closed; create a new one")

    def _with_job_id(self, job_id: str, call: Callable[[str], T]) -> T:
        """`call(full id)`: first with the id as given (prefixed when bare), then, if the
        coordinator does not know it, with the one job whose id it is a prefix of."""
        return self._with_id(job_id, call, JOB_ID_PREFIX, self._job_ids)

    def _resolve_source(self, spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec:
        """`model.job` may name its job (or sweep) as a JOB argument may: its digits or a
        unique prefix become the full id, and an unknown one is a ValidationError on
        model.job with "did you mean". A full id is sent as it is (no extra call)."""
        m = spec.model
        if m.source != "job" or not m.job or _FULL_ID.fullmatch(m.job):
            return spec
        try:
            if m.job.startswith(SWEEP_ID_PREFIX):
                full = self.get_sweep(m.job).id
            else:
                full = self.get(m.job).id
        except NotFound as e:
            raise ValidationError(
                "invalid job spec", [FieldError("model.job", e.message)]
            ) from None
        out = spec_pb2.JobSpec()
        out.CopyFrom(spec)
        out.model.job = full
        return out

    def _job_ids(self) -> list[str]:
        return [j.id for j in self.list(limit=5000)]

    def _with_id(
        self, given: str, call: Callable[[str], T], prefix: str, known: Callable[[], list[str]]
    ) -> T:
        """_with_job_id for any kind of id (`prefix`: "job-", "sweep-"); `known` lists the
        ids the coordinator has, asked only when `given` is not one of them."""
        try:
            return call(normalize_id(given, prefix))
        except NotFound as e:
            return call(self._match_id(given, e, prefix, known))

    def _match_id(
        self, given: str, not_found: NotFound, prefix: str, known: Callable[[], list[str]]
    ) -> str:
        """The one known id that `given` abbreviates, or NotFound saying which were meant.
        Only on the error path: a full id costs no listing."""
        noun = prefix.rstrip("-")
        if not given.strip():
            raise NotFound(
                f"no {noun} id given: name a {noun} as printed ({prefix}d3be7e24), its digits "
                "or a unique prefix of them",
                code=not_found.code,
                target=not_found.target,
            ) from None
        try:
            ids = known()
        except TunefleetError:
            raise not_found from None  # no list to suggest from (e.g. not allowed to)
        full = normalize_id(given, prefix)
        matches = [k for k in ids if k.startswith(full) or k.startswith(given.strip())]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            message = f"{noun} id {given!r} is ambiguous: did you mean {shown}?"
        else:
            # Compared without the prefix every id shares, which would make any two ids
            # look alike; a digit or two off (a typo) still matches.
            digits = {k.removeprefix(prefix): k for k in ids}
            wanted = full.removeprefix(prefix)
            close = [digits[d] for d in difflib.get_close_matches(wanted, digits, 3, 0.7)]
            sweep = self._sweep_named(given) if prefix == JOB_ID_PREFIX and not close else ""
            if sweep:
                trials = f"its trials are jobs (`ftctl sweep get {sweep}` lists them)"
                if full.startswith(SWEEP_ID_PREFIX):
                    message = f"{sweep} is a sweep, not a job; {trials}"
                else:
                    message = f"{noun} {full} not found; those digits are sweep {sweep}'s: {trials}"
            elif not close:
                raise not_found from None
            else:
                message = f"{noun} {full} not found; did you mean {', '.join(close)}?"
        raise NotFound(message, code=not_found.code, target=not_found.target) from None

    def _unavailable(self, give_up_s: float) -> None:
        if self.on_unavailable is not None:
            self.on_unavailable(self.target, give_up_s)

    def _unary(self, rpc: Callable[..., T], request) -> T:
        self._check_open()
        give_up = time.monotonic() + self.retry.max_elapsed_s
        delays = self.retry.delays()
        told = False
        while True:
            try:
                return rpc(request, timeout=self.timeout)
            except grpc.RpcError as e:
                delay = next(delays)
                retry = e.code() == grpc.StatusCode.UNAVAILABLE
                if not retry or time.monotonic() + delay > give_up:
                    raise from_rpc_error(e, target=self.target) from None
                if not told:
                    told = True
                    self._unavailable(self.retry.max_elapsed_s)
                time.sleep(delay)

    def _stream_events(
        self, job_id: str, after_seq: int, follow: bool, deadline: float | None
    ) -> Iterator[Event]:
        self._check_open()
        last = after_seq
        outage_since: float | None = None
        delays = self.retry.delays()
        resolved = False
        while True:
            call = None
            received = False
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"job {job_id}: still running after the timeout")
                request = coordinator_pb2.StreamEventsRequest(
                    job_id=job_id, after_seq=last, follow=follow
                )
                call = self._stub.StreamEventBatches(request, timeout=remaining)
                for batch in call:
                    outage_since, received = None, True
                    delays = self.retry.delays()
                    for msg in batch.events:
                        if msg.seq <= last:
                            continue  # already yielded before a reconnect
                        event = Event.from_proto(msg)
                        last = event.seq
                        yield event
                        if follow and event.is_terminal():
                            return
                if not follow:
                    return
                # The stream ended without the terminal event: the coordinator may have
                # closed it while shutting down. Done only if the job really is.
                job = self.get(job_id)
                if job.state.is_terminal() and job.last_seq <= last:
                    return
                if not received:
                    time.sleep(next(delays))
            except grpc.RpcError as e:
                code = e.code()
                now = time.monotonic()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline and now >= deadline:
                    raise DeadlineExceeded(
                        f"job {job_id}: still running after the timeout", code=code.name
                    ) from None
                if code == grpc.StatusCode.NOT_FOUND and not resolved and last == after_seq:
                    # A short id: the one job it abbreviates, or NotFound with suggestions.
                    resolved = True
                    not_found = from_rpc_error(e, target=self.target)
                    assert isinstance(not_found, NotFound)
                    job_id = self._match_id(job_id, not_found, JOB_ID_PREFIX, self._job_ids)
                    continue
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(e, target=self.target) from None
                if outage_since is None:
                    self._unavailable(self.retry.stream_max_elapsed_s)
                outage_since = outage_since or now
                delay = next(delays)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - now))
                if now + delay - outage_since > self.retry.stream_max_elapsed_s:
                    raise from_rpc_error(e, target=self.target) from None
                time.sleep(delay)
            finally:
                if call is not None:
                    call.cancel()


class JobHandle:
    """A submitted job: its id plus calls that act on it.

    `state` and `get()` ask the coordinator each time; `job` is the last Job fetched.
    """

    def __init__(self, client: Client, job_id: str, *, job: Job | None = None):
        self.id = normalize_job_id(job_id)
        self.client = client
        self.job = job
        # What submit() had to say: paths passed through as the workers', files uploaded.
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def get(self) -> Job:
        self.job = self.client.get(self.id)
        self.id = self.job.id  # a short id, resolved once (as SweepHandle does)
        return self.job

    @property
    def state(self) -> JobState:
        return self.get().state

    def events(self, after_seq: int = 0, follow: bool = True) -> Iterator[Event]:
        """See `Client.events`: reconnects on UNAVAILABLE, never yields an event twice."""
        return self.client.events(self.id, after_seq, follow)

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = False) -> Job:
        """Block until the job ends; return the final Job.

        Args:
            timeout: Seconds to wait; raises DeadlineExceeded (a TimeoutError) when the
                job is still running by then. The job itself keeps running.
            raise_on_failure: Raise JobFailed (with `.job`) if the job ends other than
                SUCCEEDED (FAILED, CANCELLED, or PRUNED: a sweep's trial stopped early, no
                model) instead of returning it.
        """
        timeout = seconds("timeout", timeout)
        job = self.get()
        if not job.is_terminal():
            for event in self.client.events(self.id, job.last_seq, True, timeout=timeout):
                if event.is_terminal():
                    break
            job = self.get()
        if raise_on_failure and job.state is not JobState.SUCCEEDED:
            raise JobFailed(job)
        return job

    def cancel(self, reason: str = "") -> Job:
        self.job = self.client.cancel(self.id, reason)
        self.id = self.job.id
        return self.job


def normalize_job_id(job_id: str) -> str:
    """`d3be7e24` -> `job-d3be7e24`: the hex digits of an id, as people copy them from a
    table or a path, get the prefix every id has; an id in capitals (`JOB-D3BE7E24`,
    `D3BE`) is lowered, as every id the coordinator hands out is lower case; anything else
    is left as it is. Not a string: ValidationError."""
    return normalize_id(job_id, JOB_ID_PREFIX)


def normalize_id(given: str, prefix: str) -> str:
    """normalize_job_id for ids with `prefix` ("sweep-": `1a2b` -> `sweep-1a2b`)."""
    noun = prefix.rstrip("-")
    given = wire_str(f"{noun}_id", given, f"{prefix}d3be7e24").strip()
    lowered = given.lower()
    if _HEX.fullmatch(lowered):
        return prefix + lowered
    if lowered.startswith(prefix) and _HEX.fullmatch(lowered[len(prefix) :]):
        return lowered
    return given


def _prepare_here(spec: SpecLike, check_paths: bool) -> spec_pb2.JobSpec:
    """prepare_spec with the checks this machine can make: a file or folder it does not
    have is the workers' path (a note, see Client.submit), every other problem an error."""
    if not check_paths:
        return prepare_spec(spec, check_paths=False)
    try:
        return prepare_spec(spec, check_paths=True)
    except ValidationError as e:
        kept = [x for x in e.errors if not x.message.startswith(_NOT_HERE)]
        if kept:
            source = str(spec) if isinstance(spec, (str, os.PathLike)) else None
            raise ValidationError.from_spec_error(SpecError(kept, source)) from None
    return prepare_spec(spec, check_paths=False)


_NOT_HERE = ("no such file", "no such folder")


def prepare_spec(spec: SpecLike, *, check_paths: bool = True) -> spec_pb2.JobSpec:
    """A path, dict or JobSpec -> a validated JobSpec with defaults filled in.

    Raises ValidationError (every problem) or a plain TunefleetError for an unusable
    argument.
    """
    from tunefleet.spec import SpecError, load_job_file, prepare

    try:
        if isinstance(spec, (str, os.PathLike)):
            return load_job_file(spec, check_paths=check_paths)
        if isinstance(spec, (dict, spec_pb2.JobSpec)):
            return prepare(spec, base_dir=Path.cwd(), check_paths=check_paths)
    except SpecError as e:
        raise ValidationError.from_spec_error(e) from None
    raise TunefleetError(
        f"cannot submit a {type(spec).__name__}: give a YAML path, a dict or a JobSpec"
    )
