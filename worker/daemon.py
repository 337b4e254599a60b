"""WorkerDaemon: registers with the coordinator, keeps its lease, and runs the jobs it is
given, one at a time.

Leases and fencing: the coordinator requeues the jobs of a worker whose heartbeats stop
for lease_timeout_s. We hold our side of that bargain: when no heartbeat got through for a
whole lease (counted from when the last good one was *sent*, which is no later than the
coordinator received it), the job may already run elsewhere, so the training process is
killed at once, before it can write another checkpoint into the shared out dir. A worker
that was paused (SIGSTOP, a frozen VM) does the same the moment it runs again; its late
reports are refused anyway (the attempt number is the fencing token).

stop() (SIGTERM, Ctrl-C) drains: the engine gets SIGTERM, finishes its step, writes a
checkpoint and exits 75; we release the job (ReleaseJob: queued again, not counted as a
restart) and return. Heartbeats go on meanwhile so the lease holds. A second stop() kills
at once. A training process never outlives us: it dies with the worker (PDEATHSIG).

Three things happen concurrently: the main loop (AcquireJob long poll, then the job's
JobRunner), a heartbeat thread (renews the lease, learns which jobs to cancel), and
`stop()` from a signal handler. The coordinator may be unreachable at any moment (restart,
network): every call retries with backoff, and nothing but `stop()` ends the daemon.

Multi-node jobs: each AcquireJob offers a port that is free on this host, and registration
gives the address where the other workers reach us (our ranks' gloo and NCCL listen on the
interface that holds it, not on whatever the host's name resolves to); when a poll of ours
places a multi-node job we are its machine rank 0 and host its rendezvous there. Our part of a job
another worker's poll placed comes back from our own poll, with our machine rank. When the
gang stops (a member lost, released or failed), our heartbeat says the job is no longer
ours and the training process is killed like any other requeued job's.

One id, one process: registration and heartbeats carry a nonce made at start (`instance`),
and a coordinator refuses them while another live process holds our id
(coordinator/worker_instances.py). Then run() ends, killing any job of ours (it is not ours
any more), and raises WorkerIdInUse with the coordinator's one-line message, which the CLI
prints before exiting 1. A registration is retried for as long as the coordinator waits for
a silent holder (takeover_after_s, a few seconds), since that holder may be our own previous
process killed with kill -9 a moment ago.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import grpc

from tunefleet.defaults import DEFAULT_ARTIFACTS
from tunefleet.logging_setup import job_log_context
from tunefleet.transport import (
    WORKER_CHANNEL_OPTIONS,
    Backoff,
    ChannelSecurity,
    open_channel,
)
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2
from tunefleet.worker import checkpoint_sync, job_folder
from tunefleet.worker.artifact_store import ArtifactStore, publish_artifacts
from tunefleet.worker.disk_health import DiskHealth
from tunefleet.worker.engine.errors import is_no_space
from tunefleet.worker.engine.launch import free_port
from tunefleet.worker.engine.lineage import spec_hash
from tunefleet.worker.engine_process import EngineHost, warm_engine_supported
from tunefleet.worker.host_info import collective_env, detect_gpus, route_address
from tunefleet.worker.input_cache import DEFAULT_CACHE_MAX_GB, InputCache
from tunefleet.worker.job_calls import JobCalls
from tunefleet.worker.job_inputs import prepare_inputs
from tunefleet.worker.job_runner import CommandFactory, JobOutcome, JobRunner, log_event
from tunefleet.worker.path_policy import PathPolicy
from tunefleet.worker.rpc_retry import (
    MAX_BACKOFF_S,
    RPC_TIMEOUT_S,
    RpcOutages,
    WorkerIdInUse,
    call_with_retry,
    id_in_use,
)

log = logging.getLogger(__name__)


# While unhealthy, how often the worker checks whether the cause is gone.
_HEALTH_PROBE_S = 1.0
# How long the last call, saying that this worker is leaving, may take.
_SIGN_OFF_TIMEOUT_S = 2.0


class WorkerDaemon(JobCalls):
    """A tunefleet worker. `run()` blocks until `stop()` (thread-safe) is called."""

    def __init__(
        self,
        coordinator: str,
        *,
        artifacts_root: Path = Path(DEFAULT_ARTIFACTS),
        work_root: Path | None = None,
        gpus: int | None = None,
        worker_id: str | None = None,
        poll_s: float = 5.0,
        command_factory: CommandFactory | None = None,
        security: ChannelSecurity | None = None,
        allowed_roots: tuple[str | Path, ...] = (),
        artifacts_uri: str | None = None,
        drain_grace_s: float = 30.0,
        address: str | None = None,
        min_free_bytes: int = 100 * 1024 * 1024,
        engine_env: dict[str, str] | None = None,
        cache_dir: Path | None = None,
        cache_max_bytes: int = int(DEFAULT_CACHE_MAX_GB * 1024**3),
        check_inputs: bool | None = None,
        warm_engine: bool = True,
    ):
        """
        Args:
            coordinator: HOST:PORT of the coordinator.
            artifacts_root: jobs without `output.dir` write to artifacts_root/JOB_ID.
            work_root: working directory of the training processes (default: ours).
            gpus: GPUs to offer; detected with torch when None.
            worker_id: a stable id across restarts; the coordinator assigns one when None.
            poll_s: how long one AcquireJob long poll waits for work.
            command_factory: builds the training command; default: the engine's launcher.
            security: TLS and token for the coordinator (default: plaintext, no token).
            allowed_roots: folders job paths must stay in (see worker/path_policy.py);
                empty = unrestricted.
            artifacts_uri: an fsspec URL (s3://bucket/prefix...) where succeeded jobs' final
                artifacts are uploaded (see tunefleet.worker.artifact_store).
            drain_grace_s: on stop(), how long the training process has to checkpoint and
                exit before it is killed.
            address: host (IP or name) where the other workers of a multi-node job reach
                this one; default: $TUNEFLEET_WORKER_ADDRESS, else this host's address on
                its route to the coordinator (see route_address).
            min_free_bytes: after its artifacts disk filled up, the worker takes jobs again
                once this much is free there (and a test write works).
            engine_env: extra environment of every training process (the shared feature
                cache's folder and bound: command_line.feature_cache_env).
            cache_dir, cache_max_bytes: the input cache of URLs' copies and its bound
                (tunefleet.worker.input_cache); default artifacts_root/.input-cache.
            check_inputs: check the spec's files here before starting (tunefleet.spec.
                environment); default: with the engine, not a command_factory's own program.
            warm_engine: single-process jobs run in a process forked by a warm engine host
                (tunefleet.worker.engine_process) instead of a fresh interpreter.
        """
        self.coordinator = coordinator
        self.artifacts_root = Path(artifacts_root).resolve()
        self.work_root = Path(work_root).resolve() if work_root else None
        self.engine_env = dict(engine_env or {})
        self.gpus = gpus
        self.worker_id = worker_id or ""
        # This process among those that may use worker_id (see the module docstring).
        self.instance = secrets.token_hex(8)
        self._id_in_use = ""  # the coordinator's refusal: another process holds our id
        self.poll_s = poll_s
        self.command_factory = command_factory
        self.check_inputs = command_factory is None if check_inputs is None else check_inputs
        self.artifact_store = ArtifactStore(artifacts_uri) if artifacts_uri else None
        warm = warm_engine and command_factory is None and warm_engine_supported()
        self.engine_host = EngineHost() if warm else None  # started by the first job
        self.drain_grace_s = drain_grace_s
        self.address = (
            address or os.environ.get("TUNEFLEET_WORKER_ADDRESS") or route_address(coordinator)
        )
        # Multi-node jobs' ranks talk on the interface of that address (host_info).
        self.collective_env = collective_env(self.address)
        self.heartbeat_interval_s = 2.0
        self.lease_timeout_s = 10.0
        self._lease_until = 0.0  # time.monotonic() when our lease may have run out
        self._drain_requested = False  # DrainWorker, not a signal, started the stop
        self._gpu_name = ""
        self._registered = False  # once: then a coordinator knows us, and is told we leave
        self._stopping = threading.Event()  # no new jobs; drain the running one
        self._stopped = threading.Event()  # run() is over: heartbeats end too
        self._stop_count = 0
        self._lock = threading.Lock()
        self._register_lock = threading.Lock()
        self._runner: JobRunner | None = None
        # The job whose inputs are being fetched, before it has a runner: heartbeats list it,
        # or the coordinator would take it back after one lease ("never started the job")
        # from a worker downloading a model or dataset bigger than a lease's worth.
        self._preparing: str | None = None
        self._acquire_call: grpc.Future | None = None
        self._outages = RpcOutages()  # RPCs failing right now, to log each outage once
        # Why this worker takes no jobs now (.reason, "" = healthy); sent with heartbeats.
        self.health = DiskHealth(self.artifacts_root, min_free_bytes)
        self._channel = open_channel(coordinator, WORKER_CHANNEL_OPTIONS, security)
        self.input_cache = InputCache(
            cache_dir or self.artifacts_root / ".input-cache", cache_max_bytes
        )
        self.path_policy = PathPolicy(
            allowed_roots,
            always_allowed=[self.artifacts_root, self.input_cache.root],
            cwd=self.work_root,
        )
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    # ---- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Registers, then acquires and runs jobs until stop()."""
        if self.gpus is None:
            self.gpus, self._gpu_name = detect_gpus()
        elif self.gpus > 0:
            # Offered GPUs the host lacks are still placed on: a job that asked for them
            # trains on the CPU (accelerate falls back) or fails, so say it at the start.
            seen, self._gpu_name = detect_gpus()
            if seen < self.gpus:
                log.warning(
                    "--gpus %d, but torch sees %d GPU%s on this host: jobs placed on the "
                    "missing ones train on the CPU or fail (check CUDA_VISIBLE_DEVICES and "
                    "the driver, or offer fewer)",
                    self.gpus,
                    seen,
                    "" if seen == 1 else "s",
                )
        heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="tunefleet-heartbeat", daemon=True
        )
        try:
            if not self._register():
                return
            heartbeat.start()
            backoff = Backoff(0.2, MAX_BACKOFF_S)
            while not self._stopping.is_set():
                if not self._ready_for_work():
                    self._stopping.wait(_HEALTH_PROBE_S if self.health.reason else 0.1)
                    continue
                try:
                    assignment = self._acquire()
                    self._outages.ok("AcquireJob")
                    backoff.reset()
                except Exception as exc:  # never die from a coordinator problem
                    self._outages.failed("AcquireJob", exc)
                    self._stopping.wait(backoff.next())
                    continue
                if assignment is not None:
                    with job_log_context(assignment.job.id, assignment.attempt):
                        self._run_job(assignment)
        finally:
            self._stopping.set()
            self._stopped.set()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
            self._sign_off()
            if self.engine_host is not None:
                self.engine_host.close()
            self._channel.close()
            log.info("worker %s stopped", self.worker_id or "(unregistered)")
            if self._id_in_use:  # the CLI prints it as its one-line error
                raise WorkerIdInUse(self._id_in_use)

    def stop(self) -> None:
        """Ends run() after draining: a running job checkpoints, stops and is released to
        run elsewhere (within drain_grace_s). Calling it again kills the job at once.

        Thread-safe, and safe to call from a signal handler: the handler may have
        interrupted the main thread while it held a lock, so the work is done on a helper
        thread and stop() itself takes no lock.
        """
        self._stop_count += 1
        hard = self._stop_count > 1
        threading.Thread(
            target=self._stop_now, args=(hard,), name="tunefleet-stop", daemon=True
        ).start()

    def _stop_now(self, hard: bool) -> None:
        self._stopping.set()
        with self._lock:
            runner, call = self._runner, self._acquire_call
        if runner is not None:
            log.info("job %s: %s", runner.job_id, "killing it" if hard else "draining")
            runner.drain(self._drain_reason(), hard=hard)
        if call is not None:
            call.cancel()

    def _drain_reason(self) -> str:
        if self._drain_requested:
            return f"worker {self.worker_id} drained on request (ftctl worker drain)"
        return f"worker {self.worker_id} is shutting down (drained)"

    def _lease_valid(self) -> bool:
        return time.monotonic() < self._lease_until

    def _ready_for_work(self) -> bool:
        """Whether to ask for a job now.

        Not while our lease may have run out: the coordinator may have requeued our jobs,
        and a new attempt would be killed at once by the lease check (after an 11 s
        coordinator outage, attempts 2-23 of one job started and died in 0.27 s). The next
        heartbeat that gets through renews it. Not while unhealthy either (a full artifacts
        disk would fail every job): we check whether the cause is gone instead.
        """
        return self.health.healthy() and self._lease_valid()

    @property
    def running_job_id(self) -> str | None:
        with self._lock:
            return self._runner.job_id if self._runner else None

    # ---- coordinator calls -------------------------------------------------------------

    def _register(self) -> bool:
        """Registers (again), retrying until it works or stop(); True when registered."""
        resources = coordinator_pb2.WorkerResources(
            gpus=self.gpus or 0, cpus=os.cpu_count() or 0, gpu_name=self._gpu_name
        )
        with self._register_lock:
            backoff = Backoff(0.2, MAX_BACKOFF_S)
            refused_at = None
            while not self._stopping.is_set():
                request = coordinator_pb2.RegisterWorkerRequest(
                    worker_id=self.worker_id,
                    hostname=socket.gethostname(),
                    resources=resources,
                    address=self.address,
                    instance=self.instance,
                )
                sent_at = time.monotonic()
                try:
                    response = self._stub.RegisterWorker(request, timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as exc:
                    if (refusal := id_in_use(exc)) is not None:
                        # The holder may be our previous process, dead a moment ago: wait
                        # until the coordinator would give its id to us, then give up.
                        if refused_at is None:
                            refused_at = sent_at
                            log.info(
                                "worker id %s is held by another process; waiting %g s in case "
                                "it is this worker's previous one",
                                self.worker_id,
                                refusal[1],
                            )
                        elif sent_at - refused_at > refusal[1] + 1.0:
                            self._give_up_id(refusal[0])
                            return False
                        self._stopping.wait(0.5)
                        continue
                    self._outages.failed("RegisterWorker", exc)
                    self._stopping.wait(backoff.next())
                    continue
                self._outages.ok("RegisterWorker")
                self.worker_id = response.worker_id
                self._registered = True
                self.heartbeat_interval_s = response.heartbeat_interval_s or 2.0
                self.lease_timeout_s = response.lease_timeout_s or 10.0
                self._lease_until = sent_at + self.lease_timeout_s
                log.info(
                    "registered with %s as %s (%d GPUs); multi-node jobs reach it at %s%s",
                    self.coordinator,
                    self.worker_id,
                    resources.gpus,
                    self.address or "the address the coordinator sees",
                    "".join(f", {k}={v}" for k, v in self.collective_env.items()),
                )
                return True
        return False

    def _give_up_id(self, message: str) -> None:
        """Another live process holds our id: stop at once, and kill any job of ours (the
        coordinator took it back) without reporting on it."""
        self._id_in_use = message
        self._stopping.set()
        with self._lock:
            runner, call = self._runner, self._acquire_call
        if runner is not None and not runner.done:
            runner.abandon()
        if call is not None:
            call.cancel()

    def _acquire(self) -> coordinator_pb2.Assignment | None:
        request = coordinator_pb2.AcquireJobRequest(
            worker_id=self.worker_id, wait_seconds=self.poll_s, rendezvous_port=free_port()
        )
        call = self._stub.AcquireJob.future(request, timeout=self.poll_s + RPC_TIMEOUT_S)
        with self._lock:
            self._acquire_call = call
        if self._stopping.is_set():  # stop() may have run before _acquire_call was set
            call.cancel()
        try:
            response = call.result()
        except grpc.FutureCancelledError:
            return None
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self._stopping.is_set():
                return None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # we were declared lost
                log.warning("coordinator: %s", exc.details())
                self._register()
                return None
            raise
        finally:
            with self._lock:
                self._acquire_call = None
        return response.assignment if response.HasField("assignment") else None

    def _call(
        self,
        method: str,
        request,
        *,
        patience_after_stop_s: float = 0.0,
        give_up_after_s: float | None = None,
    ):
        """The RPC, retried while the failure is transient (rpc_retry.call_with_retry)."""
        return call_with_retry(
            self._stub, method, request, stopping=self._stopping, outages=self._outages,
            patience_after_stop_s=patience_after_stop_s, give_up_after_s=give_up_after_s,
        )  # fmt: skip

    def _sign_off(self) -> None:
        """Tells the coordinator this worker is gone on purpose, after its job was handed
        back, so that it is forgotten rather than shown (and alerted on) as LOST. Best
        effort: a coordinator that is down finds out by the lease, as before."""
        if not self._registered or self._id_in_use:
            return  # the id is another process's now: not ours to sign off
        request = coordinator_pb2.HeartbeatRequest(
            worker_id=self.worker_id, leaving=True, instance=self.instance
        )
        try:
            self._stub.Heartbeat(request, timeout=_SIGN_OFF_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.info(
                "could not sign off from %s (%s): it will see this worker as lost",
                self.coordinator,
                exc.code().name,
            )

    def _heartbeat_loop(self) -> None:
        # Until run() ends, not until stop(): a draining job needs its lease to hold.
        while not self._stopped.wait(self.heartbeat_interval_s):
            with self._lock:
                runner = self._runner  # the verdicts below are about this one
                running = runner.job_id if runner else self._preparing
            request = coordinator_pb2.HeartbeatRequest(
                worker_id=self.worker_id,
                running_job_ids=[running] if running else [],
                unhealthy_reason=self.health.reason,
                instance=self.instance,
            )
            sent_at = time.monotonic()
            try:
                response = self._stub.Heartbeat(
                    request, timeout=max(self.heartbeat_interval_s, 5.0)
                )
            except grpc.RpcError as exc:
                if (refusal := id_in_use(exc)) is not None:
                    self._give_up_id(refusal[0])  # another process took our id over
                    return
                self._outages.failed("Heartbeat", exc)
                continue
            self._outages.ok("Heartbeat")
            lost = set(response.lost_job_ids) if response.known else {running}
            # A runner that is done is telling the coordinator how it ended: leave it be.
            if runner is not None and not runner.done:
                if runner.job_id in lost:
                    log.warning(
                        "job %s attempt %d is no longer ours (the coordinator requeued it); "
                        "killing its training process",
                        runner.job_id,
                        runner.attempt,
                    )
                    runner.abandon()
                elif runner.job_id in response.cancel_job_ids:
                    log.info("job %s: cancel requested by the coordinator", runner.job_id)
                    runner.cancel()
            if response.known and response.drain and not self._stopping.is_set():
                log.warning("the coordinator asks worker %s to drain; stopping", self.worker_id)
                self._drain_requested = True
                self.stop()
            if response.known:
                self._lease_until = sent_at + self.lease_timeout_s
            else:
                log.warning(
                    "the coordinator no longer knows worker %s; registering again", self.worker_id
                )
                self._register()

    # ---- one job -----------------------------------------------------------------------

    def _run_job(self, assignment: coordinator_pb2.Assignment) -> None:
        job, attempt = assignment.job, assignment.attempt
        batches = itertools.count(1)  # ReportEvents.batch_seq: retries resend the same one

        def report(events: list[job_pb2.Event]) -> bool:
            return self._report(job.id, attempt, events, next(batches))

        with self._lock:
            self._preparing = job.id  # until the runner takes over (_run_local_job)
        try:
            self._prepare_and_run(job, assignment, report)
        finally:
            with self._lock:
                self._preparing = None

    def _prepare_and_run(self, job, assignment: coordinator_pb2.Assignment, report) -> None:
        attempt = assignment.attempt
        inputs, refused = prepare_inputs(
            job.spec, self.input_cache, self.path_policy, self.worker_id, self.check_inputs
        )
        if refused is not None:  # before anything reads or writes those paths
            log.warning("job %s: %s", job.id, refused[0])
            self._finish(
                job.id, attempt, JobOutcome(job_pb2.FAILED, refused[0], retryable=refused[1])
            )
            return
        if inputs.notes:
            report([log_event(note) for note in inputs.notes])
        try:  # the engine reads the cached copies, not the URLs
            self._run_local_job(inputs.job(job), assignment, report, job.spec)
        finally:
            inputs.close()

    def _run_local_job(
        self, job, assignment: coordinator_pb2.Assignment, report, submitted: spec_pb2.JobSpec
    ) -> None:
        """Runs `job`, whose spec names this worker's copies of the URLs of `submitted`."""
        attempt = assignment.attempt
        out_dir = Path(job.spec.output.dir) if job.spec.output.dir else self.artifacts_root / job.id
        own_storage = not job.spec.output.dir
        try:
            refused = job_folder.claim(out_dir, job.id, artifacts_root=self.artifacts_root)
        except OSError as exc:
            refused = f"cannot create the output folder {out_dir}: {exc.strerror or exc}"
            if is_no_space(exc) and own_storage:
                self.health.mark(f"no space left on device in {self.artifacts_root}")
                self._release(job.id, attempt, f"worker {self.worker_id}: {refused}")
                return
        if refused is not None:
            log.warning("job %s: %s", job.id, refused)
            self._finish(job.id, attempt, JobOutcome(job_pb2.FAILED, refused))
            return
        rendezvous = assignment.rendezvous if assignment.HasField("rendezvous") else None
        runner = JobRunner(
            job,
            attempt,
            worker_id=self.worker_id,
            out_dir=out_dir,
            cwd=self.work_root,
            command_factory=self.command_factory,
            drain_grace_s=self.drain_grace_s,
            lease_valid=self._lease_valid,
            rendezvous=rendezvous,
            own_storage=own_storage,
            engine_env={
                **self.engine_env,
                **(self.collective_env if rendezvous is not None else {}),
            },
            engine_host=self.engine_host,
            submitted_spec_hash=spec_hash(submitted),
        )
        with self._lock:
            self._runner, self._preparing = runner, None
        if self._stopping.is_set():  # stop() may have missed the runner
            runner.drain(self._drain_reason())
        log.info(
            "job %s attempt %d: running in %s%s",
            job.id,
            attempt,
            out_dir,
            f" as machine rank {runner.machine_rank} of {rendezvous.num_machines}"
            if rendezvous is not None
            else "",
        )
        # Without a shared file system the job's checkpoints travel through the store.
        relay = functools.partial(self._report, job.id, attempt)  # unnumbered: another thread
        try:
            with checkpoint_sync.synced(self.artifact_store, runner, self._lease_valid, relay):
                outcome = runner.run(report)
            if runner.machine_rank == 0:  # the job's artifacts are rank 0's
                outcome = publish_artifacts(
                    self.artifact_store, job.id, out_dir, outcome, report, submitted
                )
        except Exception as exc:  # a bug of ours must not take the daemon down
            log.exception("job %s: the runner failed", job.id)
            outcome = JobOutcome(
                job_pb2.FAILED, f"internal error on worker {self.worker_id}: {exc}"
            )
        if outcome is not None and outcome.unhealthy:
            self.health.mark(outcome.unhealthy)  # before the release: no new job meanwhile
        # Heartbeats list the job until the coordinator knows how it ended: a job its worker
        # stops listing is written off after a lease.
        try:
            if outcome is not None and outcome.state == job_pb2.QUEUED:
                self._release(job.id, attempt, outcome.reason)
            elif outcome is not None:
                self._finish(job.id, attempt, outcome)
        finally:
            with self._lock:
                self._runner = None
