"""The sampler process: TPE sweeps' trials are drawn in a child process, on another core.

Why: every finished trial of a TPE sweep makes the coordinator ask optuna for the next one,
and TPE's maths is pure Python (~1.5-2 ms an ask at ~100 trials). In the coordinator's
process that runs with the Scheduler's lock held and under its GIL, so with many sweeps it
was most of what a placement cost (bench/scheduler_sweeps.py on one core: 306 placements/s
with TPE against 705 with the random sampler, which draws in microseconds).

How: the child keeps a mirror of each TPE sweep's study (same sampler, same seed) and asks
it; the coordinator keeps its own study as the truth (trial rows, pruning, tells) and
records each trial the child drew (its point and distributions) without asking. Each ask
request carries what changed in the coordinator's study since the last one (new trials,
tells, prunes), so the mirror has seen exactly what a local ask would have seen: the same
draws as asking in-process (tests/coordinator/test_sampler_process.py).

Nothing here is stored: the trial rows stay the truth. A mirror that may disagree (the
child died, a reply did not fit, a write failed) is dropped and built again from the
coordinator's study on the next ask ("epoch": replies to the old one are ignored), with
its seed moved on as a study rebuilt after a restart is (samplers.sampler). A child that
keeps dying is given up: the coordinator then asks in-process, as without this.

The child is `python -m tunefleet.coordinator.sampler_process R W`, started with two
inherited pipe ends (not multiprocessing's spawn, which would run the embedding program's
main module again in the child). It exits when its request pipe reads EOF: the
coordinator closed it, or died (kill -9 included), so it never outlives its coordinator.

Wire (two one-way pipes, multiprocessing Connections: pickled tuples, in order):
  -> ("ask", sweep_id, epoch, sweep_spec_bytes | None, changes)   bytes: build afresh
  -> ("forget", sweep_id)
  <- ("asked", sweep_id, epoch, number, point, distributions)
   | ("failed", sweep_id, epoch, message)
A change is (number, state, value, intermediate, params, distributions); params and
distributions (optuna's JSON) only for a trial the mirror does not have yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from tunefleet.coordinator import samplers
from tunefleet.v1 import spec_pb2

log = logging.getLogger("tunefleet.coordinator.scheduler")  # see lifecycle.py

# After this many deaths of the child, the coordinator stops starting it and asks itself.
MAX_LOSSES = 3
# A sweep whose asks the child failed this many times in a row is asked in-process.
MAX_FAILURES = 3
# Replies gathered into one commit: for up to this long, at most this many.
GATHER_S = 0.002
GATHER_MAX = 64


# ---- the child ------------------------------------------------------------------------


def serve(requests, replies) -> None:
    """The child's loop: apply each request's changes to its sweep's mirror and ask it.
    Ends when the coordinator closes its pipe or dies (EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator's to handle
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mirrors: dict[str, tuple[optuna.Study, spec_pb2.SweepSpec]] = {}
    while True:
        try:
            message = requests.recv()
        except (EOFError, OSError):
            return
        if message[0] == "forget":
            mirrors.pop(message[1], None)
            continue
        _, sweep_id, epoch, spec_bytes, changes = message
        try:
            if spec_bytes is not None:
                s = spec_pb2.SweepSpec.FromString(spec_bytes)
                sampler = samplers.sampler(s, 0, len(changes))  # seed: as a rebuilt study's
                mirrors[sweep_id] = (samplers.new_study(s, sampler), s)
            if sweep_id not in mirrors:
                raise LookupError(f"no mirror of sweep {sweep_id}")
            study, s = mirrors[sweep_id]
            _apply(study, changes)
            trial = study.ask()
            point = samplers.suggest(trial, s)
            drawn = study.get_trials(deepcopy=False)[trial.number].distributions
            distributions = {k: distribution_to_json(d) for k, d in drawn.items()}
            reply = ("asked", sweep_id, epoch, trial.number, point, distributions)
        except Exception as exc:  # the coordinator builds it again, or asks itself
            mirrors.pop(sweep_id, None)
            reply = ("failed", sweep_id, epoch, f"{type(exc).__name__}: {exc}")
        try:
            replies.send(reply)
        except (EOFError, OSError):
            return


def _apply(study: optuna.Study, changes: list[tuple]) -> None:
    trials = study.get_trials(deepcopy=False)
    for number, state, value, intermediate, params, distributions in changes:
        state = TrialState[state]
        if number < len(trials):
            mine = trials[number]
            if mine.state != TrialState.RUNNING or state == TrialState.RUNNING:
                continue  # told already, or nothing to tell yet
            trial_id = mine._trial_id
            for step, v in sorted(intermediate.items()):
                if step not in mine.intermediate_values:
                    study._storage.set_trial_intermediate_value(trial_id, step, v)
            samplers.tell(study, number, value if state == TrialState.COMPLETE else None, state)
        elif number == len(trials) and params is not None:
            samplers.add_trial(study, state, value, params, distributions, intermediate)
            trials = study.get_trials(deepcopy=False)
        else:
            raise LookupError(f"trial {number} does not follow the mirror's {len(trials)}")


# ---- the coordinator's side -----------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the child answered for a sweep: a drawn point, or why it could not draw."""

    sweep_id: str
    epoch: int  # of the mirror that drew it: RemoteSampler.accept ignores older ones
    number: int = -1
    point: dict | None = None  # field path -> value, as samplers.suggest returns it
    distributions: dict[str, str] | None = None  # optuna's JSON, by field path
    error: str = ""


@dataclass
class _Mirror:
    epoch: int
    # What the child's mirror has: trial number -> its state there; None: nothing (the
    # next ask sends the whole study).
    sent: dict[int, TrialState] | None = None
    pending: int = 0  # asks sent under this epoch and not answered
    failures: int = 0  # failed replies in a row


@dataclass
class _Child:
    process: subprocess.Popen
    requests: Connection  # our ends of the two one-way pipes: closing `requests` stops it
    replies: Connection
    outbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    reader: threading.Thread | None = None


class RemoteSampler:
    """The coordinator's handle on the sampler process: which asks are in flight per
    sweep, what each mirror has seen, and the child itself (started on the first ask,
    again after it dies).

    Every method but close() is called with the Scheduler's lock held, and none blocks:
    requests go through an outbox that a sender thread writes to the pipe, and replies are
    read by a reader thread that hands them to `on_replies` (which takes the lock). So a
    full pipe can never hold the lock. `on_lost` (also from the reader thread) is told
    when the child died: every mirror is gone and their sweeps must ask again."""

    def __init__(
        self,
        on_replies: Callable[[list[Reply]], None],
        on_lost: Callable[[], None],
    ):
        self._on_replies = on_replies
        self._on_lost = on_lost
        self._mirrors: dict[str, _Mirror] = {}
        self._epochs = 0
        self._child: _Child | None = None
        self._losses = 0
        self._closed = False
        self._guard = threading.Lock()  # the child's handle, against the reader thread

    @property
    def usable(self) -> bool:
        """False once the child died MAX_LOSSES times: ask in-process from then on."""
        return not self._closed and self._losses < MAX_LOSSES

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def pending(self, sweep_id: str) -> int:
        mirror = self._mirrors.get(sweep_id)
        return mirror.pending if mirror is not None else 0

    def request(self, sweep_id: str, s: spec_pb2.SweepSpec, study: optuna.Study) -> bool:
        """Sends one ask for the sweep, with what its mirror has not seen of `study`.
        False: the child could not be started (no longer `usable`): ask in-process."""
        child = self._running_child()
        if child is None:
            return False
        mirror = self._mirrors.get(sweep_id)
        if mirror is None:
            mirror = self._mirrors[sweep_id] = _Mirror(epoch=self._next_epoch())
        trials = study.get_trials(deepcopy=False)
        if mirror.sent is None:
            mirror.sent = {}
            changes = [_change(t, new=True) for t in trials]
            spec_bytes = s.SerializeToString()
        else:
            changes = [
                _change(t, new=t.number not in mirror.sent)
                for t in trials
                if mirror.sent.get(t.number) is not t.state
            ]
            spec_bytes = None
        for t in trials:
            mirror.sent[t.number] = t.state
        child.outbox.put(("ask", sweep_id, mirror.epoch, spec_bytes, changes))
        mirror.pending += 1
        return True

    def accept(self, reply: Reply) -> bool:
        """Whether a reply is for the sweep's current mirror (else it is ignored); counts
        it answered."""
        mirror = self._mirrors.get(reply.sweep_id)
        if mirror is None or mirror.epoch != reply.epoch:
            return False
        mirror.pending = max(0, mirror.pending - 1)
        return True

    def delivered(self, sweep_id: str, number: int) -> None:
        """The coordinator recorded the child's trial `number` (RUNNING in both)."""
        mirror = self._mirrors.get(sweep_id)
        if mirror is not None and mirror.sent is not None:
            mirror.sent[number] = TrialState.RUNNING
            mirror.failures = 0

    def failed(self, sweep_id: str) -> bool:
        """A failed ask: the mirror is built again on the next one. True: it failed
        MAX_FAILURES times in a row, so the sweep should be asked in-process."""
        mirror = self._mirrors.get(sweep_id)
        failures = (mirror.failures if mirror is not None else 0) + 1
        self.reset(sweep_id)
        self._mirrors[sweep_id].failures = failures
        return failures >= MAX_FAILURES

    def reset(self, sweep_id: str) -> None:
        """Forget the sweep's mirror and its asks in flight (their replies are ignored)."""
        self._mirrors[sweep_id] = _Mirror(epoch=self._next_epoch())

    def reset_all(self) -> list[str]:
        """reset() for every sweep; returns them."""
        sweeps = list(self._mirrors)
        for sweep_id in sweeps:
            self.reset(sweep_id)
        return sweeps

    def forget(self, sweep_id: str) -> None:
        """The sweep ended: drop its mirror here and in the child."""
        if self._mirrors.pop(sweep_id, None) is not None:
            child = self._child
            if child is not None:
                child.outbox.put(("forget", sweep_id))

    def close(self) -> None:
        """Stops the child (it exits on EOF); no more asks are sent."""
        with self._guard:
            self._closed = True
            child, self._child = self._child, None
        if child is None:
            return
        child.outbox.put(None)
        try:
            child.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(timeout=5)
        if child.reader is not None and child.reader is not threading.current_thread():
            child.reader.join(timeout=5)  # no reply is applied after this

    # ---- the child's lifetime ----------------------------------------------------------

    def _next_epoch(self) -> int:
        self._epochs += 1
        return self._epochs

    def _running_child(self) -> _Child | None:
        """The child, started if need be; None if it cannot be (ask in-process)."""
        with self._guard:
            if self._child is not None:
                return self._child
            if not self.usable:
                return None
            try:
                self._child = self._start()
            except (OSError, subprocess.SubprocessError) as exc:
                self._losses = MAX_LOSSES
                log.error("sampler process not started (%s): sweeps ask in the coordinator", exc)
                return None
            child = self._child
        # A new child has no mirrors, whatever the old one had: each sweep sends its whole
        # study with its next ask (on_lost asks again for those with asks in flight).
        self.reset_all()
        return child

    def _start(self) -> _Child:
        # A fresh interpreter, not a fork of one that runs gRPC's threads; only the child's
        # two pipe ends are inherited, so our closing (or dying) is its EOF.
        requests_in, requests_out = os.pipe()
        replies_in, replies_out = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(requests_in), str(replies_out)],
                pass_fds=(requests_in, replies_out),
                stdin=subprocess.DEVNULL,
                # Our imports, wherever they came from; and out of the terminal's process
                # group, so that a Ctrl-C meant for the coordinator is not its to handle.
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                start_new_session=True,
            )
        except BaseException:
            for fd in (requests_in, requests_out, replies_in, replies_out):
                os.close(fd)
            raise
        os.close(requests_in)  # the child's ends
        os.close(replies_out)
        child = _Child(
            process,
            Connection(requests_out, readable=False),
            Connection(replies_in, writable=False),
        )
        threading.Thread(
            target=self._write, args=(child,), name="tunefleet-sampler-send", daemon=True
        ).start()
        child.reader = threading.Thread(
            target=self._read, args=(child,), name="tunefleet-sampler-read", daemon=True
        )
        child.reader.start()
        log.info("sampler process %d started", process.pid)
        return child

    @staticmethod
    def _write(child: _Child) -> None:
        while True:
            message = child.outbox.get()
            if message is None:
                break
            try:
                child.requests.send(message)
            except (OSError, ValueError):
                break  # the reader sees the child gone
        with contextlib.suppress(OSError):
            child.requests.close()  # the child reads EOF and exits

    def _read(self, child: _Child) -> None:
        conn = child.replies
        while True:
            try:
                replies = [_reply(conn.recv())]
                # What comes within GATHER_S goes in one commit: one take of the lock
                # and one transaction for several trials, at a few ms of a trial's wait.
                until = time.monotonic() + GATHER_S
                while len(replies) < GATHER_MAX and conn.poll(max(0.0, until - time.monotonic())):
                    replies.append(_reply(conn.recv()))
            except (EOFError, OSError, ValueError):
                break
            try:
                self._on_replies(replies)
            except Exception:
                log.exception("sampler process: replies not applied")
        conn.close()
        try:
            child.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        with self._guard:
            if self._child is not child or self._closed:
                return  # closed on purpose
            self._child = None
            self._losses += 1
        child.outbox.put(None)
        log.warning(
            "sampler process %s exited (code %s)%s",
            child.process.pid,
            child.process.returncode,
            "; its sweeps ask again"
            if self.usable
            else f"; it died {self._losses} times: sweeps now ask in the coordinator",
        )
        try:
            self._on_lost()
        except Exception:
            log.exception("sampler process: its sweeps were not asked again")


def _change(t: FrozenTrial, *, new: bool) -> tuple:
    value = t.value if t.state == TrialState.COMPLETE else None
    if not new:
        return (t.number, t.state.name, value, dict(t.intermediate_values), None, None)
    distributions = {k: distribution_to_json(d) for k, d in t.distributions.items()}
    return (
        t.number,
        t.state.name,
        value,
        dict(t.intermediate_values),
        dict(t.params),
        distributions,
    )


def _reply(message: tuple) -> Reply:
    kind, sweep_id, epoch, *rest = message
    if kind == "asked":
        return Reply(sweep_id, epoch, number=rest[0], point=rest[1], distributions=rest[2])
    return Reply(sweep_id, epoch, error=rest[0])


def main() -> None:
    """The child's entry: `python -m tunefleet.coordinator.sampler_process R W`."""
    try:
        requests, replies = (int(fd) for fd in sys.argv[1:])
    except ValueError:
        sys.exit(
            "usage: python -m tunefleet.coordinator.sampler_process REQUESTS_FD REPLIES_FD "
            "(started by the coordinator with two pipe ends; not a command to run by hand)"
        )
    serve(Connection(requests, writable=False), Connection(replies, readable=False))


if __name__ == "__main__":
    main()
