"""EventBus: wakes the followers of a job when new events of it are stored; `follow`: the
loop every event stream (StreamEvents, StreamEventBatches) runs on it.

The bus carries no events, only "job X now has events up to seq N". Followers read the
events themselves from the JobStore, so what a follower sees is always the stored,
contiguous sequence, and a slow follower costs no memory here.

What a slow follower can hold is bounded end to end: one subscription (an int and a
Condition) here, one replay batch (REPLAY_BATCH events) in its handler, and one
message in gRPC, whose sync server blocks the handler's generator until the previous
message is written. A follower that stops reading stalls only its own thread; the events
wait in the store, not in queues.

Live followers need not even read: `publish` may hand over the events just stored, and the
bus keeps the last _RECENT_EVENTS of each followed job (`recent`), so N followers of a job
cost no store reads and no decoding per event. The buffer only ever holds a contiguous run
of stored events; anything it cannot vouch for is read from the store as before.

A follower subscribes *before* its first read of the store: any event committed after
that read is then published to its subscription, so nothing falls between the read and
the wait.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from tunefleet.coordinator.errors import Unavailable
from tunefleet.states import is_terminal
from tunefleet.v1 import job_pb2

# Stored events kept in memory per followed job, for followers to read without the store.
# A live follower reads within milliseconds of a publish, so a few batches suffice; a lagging
# one reads the store. Kept small because every kept message is an object the garbage
# collector walks: at 2,048 per job, 100 followed jobs made full collections of ~35 ms
# (bench/events.py), stalls that showed in the delivery p99; at 512, ~22 ms.
_RECENT_EVENTS = 512

# Events per batch a follower sends (read from the store or the buffer at a time).
REPLAY_BATCH = 500
# A follower re-checks the job this often even without news, as a safety net against a
# missed wake-up; normal delivery is driven by EventBus notifications.
FOLLOW_RECHECK_S = 10.0


class Subscription:
    """One follower's view of one job: the highest seq published since it subscribed."""

    def __init__(self, bus: EventBus, job_id: str):
        self._bus = bus
        self.job_id = job_id
        self._published_seq = 0
        self._closed = False
        self._cond = threading.Condition(bus._lock)

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_beyond(self, seq: int, timeout: float | None = None) -> bool:
        """Blocks until an event after `seq` is published, the subscription closes, or
        `timeout` passes. True when there is something new to read."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._published_seq > seq, timeout)
            return self._published_seq > seq

    def close(self) -> None:
        """Wakes the follower for good (client went away, server stops). Thread-safe."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _published(self, seq: int) -> None:  # called with the bus lock held
        if seq > self._published_seq:
            self._published_seq = seq
            self._cond.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self._bus._unsubscribe(self)


class EventBus:
    """In-memory fan-out of "new events stored" notices to any number of followers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._recent: dict[str, deque[job_pb2.Event]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, job_id: str) -> Subscription:
        subscription = Subscription(self, job_id)
        with self._lock:
            if self._closed:
                subscription._closed = True
            else:
                self._subscriptions.setdefault(job_id, set()).add(subscription)
        return subscription

    def publish(self, job_id: str, seq: int, events: Sequence[job_pb2.Event] = ()) -> None:
        """Job `job_id` has stored events up to `seq`; `events` (optional) are the ones just
        stored, in order, ending at `seq`."""
        with self._lock:
            subscriptions = self._subscriptions.get(job_id, ())
            if subscriptions:
                self._remember(job_id, events)
            for subscription in subscriptions:
                subscription._published(seq)

    def recent(self, job_id: str, after_seq: int, limit: int) -> list[job_pb2.Event] | None:
        """Up to `limit` stored events of `job_id` after `after_seq`, from memory; None when
        the buffer does not hold the one after `after_seq` (then read the store)."""
        with self._lock:
            recent = self._recent.get(job_id)
            if not recent or not recent[0].seq <= after_seq + 1 <= recent[-1].seq + 1:
                return None
            start = after_seq + 1 - recent[0].seq
            return list(itertools.islice(recent, start, start + limit))

    def _remember(self, job_id: str, events: Sequence[job_pb2.Event]) -> None:
        recent = self._recent.get(job_id)
        if not events:
            # A notice without its events (a state change): what follows would leave a gap.
            self._recent.pop(job_id, None)
            return
        if recent is None or recent[-1].seq + 1 != events[0].seq:
            recent = self._recent[job_id] = deque(maxlen=_RECENT_EVENTS)
        recent.extend(events)

    def follower_count(self, job_id: str | None = None) -> int:
        with self._lock:
            if job_id is not None:
                return len(self._subscriptions.get(job_id, ()))
            return sum(len(subs) for subs in self._subscriptions.values())

    def close(self) -> None:
        """Wakes every follower; later subscriptions start closed (the server is stopping)."""
        with self._lock:
            self._closed = True
            subscriptions = [s for subs in self._subscriptions.values() for s in subs]
        for subscription in subscriptions:
            subscription.close()

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subs = self._subscriptions.get(subscription.job_id)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[subscription.job_id]
                    self._recent.pop(subscription.job_id, None)


def follow(
    bus: EventBus,
    job_id: str,
    after_seq: int,
    *,
    stored_after: Callable[[str, int, int], list[job_pb2.Event]],
    get_job: Callable[[str], job_pb2.Job],
    follow: bool,
    is_active: Callable[[], bool],
    on_subscribe: Callable[[Subscription], None] = lambda subscription: None,
) -> Iterator[list[job_pb2.Event]]:
    """Stored events of `job_id` with seq > after_seq, then (if `follow`) live ones until
    the job ends, as non-empty lists in seq order, while `is_active()`.

    `stored_after(job_id, seq, limit)` reads the store (JobStore.events_after) and
    `get_job` the job; `on_subscribe` gets the subscription before the first read, to close
    it when the caller goes away. Raises Unavailable when the bus closes (the coordinator
    stops) while following."""
    # Subscribe before the first read: see the module docstring for why nothing is missed.
    with bus.subscribe(job_id) as subscription:
        on_subscribe(subscription)
        seq = after_seq
        while is_active():
            # Live events from the bus's buffer; a replay or a gap from the store.
            batch = bus.recent(job_id, seq, REPLAY_BATCH)
            if batch is None:
                batch = stored_after(job_id, seq, REPLAY_BATCH)
            if batch:
                yield list(batch)
                seq = batch[-1].seq
            state_changed = any(event.HasField("state_change") for event in batch)
            if len(batch) == REPLAY_BATCH:
                continue
            if not follow:
                return
            # A job ends with a state change event, so it can only have ended when we
            # just sent one or have nothing new (saves a job read per batch).
            wake_beyond = seq
            if not batch or state_changed:
                job = get_job(job_id)
                if is_terminal(job.state) and seq >= job.last_seq:
                    return
                # Asked from beyond the job's last event (after_seq too big): its next
                # event, the end included, is numbered below `seq` and must wake us too.
                wake_beyond = min(seq, job.last_seq)
            if bus.closed:
                raise Unavailable("the coordinator is shutting down; follow again later")
            if subscription.closed:
                return
            subscription.wait_beyond(wake_beyond, timeout=FOLLOW_RECHECK_S)
