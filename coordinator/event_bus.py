"""EventBus: wakes the followers of a job when new events of it are stored.

The bus carries no events, only "job X now has events up to seq N". Followers read the
events themselves from the JobStore, so what a follower sees is always the stored,
contiguous sequence, and a slow follower costs no memory here.

A follower subscribes *before* its first read of the store: any event committed after
that read is then published to its subscription, so nothing falls between the read and
the wait.
"""

from __future__ import annotations

import threading


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

    def publish(self, job_id: str, seq: int) -> None:
        with self._lock:
            for subscription in self._subscriptions.get(job_id, ()):
                subscription._published(seq)

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
