"""The queue placement reads (JobStore.queued_heads + iter_queued from a head, as the
Scheduler's _queue uses them) give what reading each submitter's whole queue gives, in the
same fair order, ties included."""

from __future__ import annotations

import heapq
import random

from coordinator_helpers import make_spec

from tunefleet.coordinator import placement
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.store import JobStore
from tunefleet.v1 import job_pb2


def fill(store: JobStore, rng: random.Random, n: int) -> None:
    users = ["", "ann", "bob", "cy", "dee"]
    for i in range(n):
        spec = make_spec(f"j{i}", priority=rng.choice([0, 0, 1, 5]))
        # Few distinct times: many jobs tie on created_at (and priority).
        store.insert_job(
            f"job-{i:04d}", spec, reason="submitted", submitter=rng.choice(users),
            now=1000.0 + rng.randrange(4),
        )  # fmt: skip


def test_heads_and_queues_match_whole_queues(tmp_path):
    store = JobStore(tmp_path / "q.db")
    rng = random.Random(1)
    fill(store, rng, 120)
    for job in store.queued_jobs()[::7]:  # some leave the queue
        store.transition(job.id, job_pb2.ASSIGNED, "placed", worker_id="w")
    queued = store.queued_jobs()
    submitters = sorted({j.submitter for j in queued})
    whole = {s: [j.id for j in queued if j.submitter == s] for s in submitters}
    heads = store.queued_heads()
    assert [h.submitter for h in heads] == submitters
    assert [h.id for h in heads] == [whole[s][0] for s in submitters]
    for head in heads:
        ids = [j.id for j in store.iter_queued(3, submitter=head.submitter, head=head)]
        assert ids == whole[head.submitter]
    assert [j.id for j in store.iter_queued(5, head=heads[0])][1:] == [j.id for j in queued][1:]
    store.close()


def test_scheduler_queue_is_the_fair_order_of_whole_queues(tmp_path):
    store = JobStore(tmp_path / "q.db")
    fill(store, random.Random(2), 150)
    for job in store.queued_jobs()[::5]:
        store.transition(job.id, job_pb2.RUNNING, "placed", worker_id="w")
    scheduler = Scheduler(store, EventBus())
    queued = store.queued_jobs()
    submitters = sorted({j.submitter for j in queued})
    placed = {s: sum(j.submitter == s for j in store.active_jobs()) for s in submitters}
    expected = heapq.merge(
        *[[j for j in queued if j.submitter == s] for s in submitters],
        key=lambda j: (-j.spec.priority, placed[j.submitter], j.created_at.ToNanoseconds()),
    )
    assert [j.id for j in scheduler._queue()] == [j.id for j in expected]
    assert [j.id for j in placement.fair_order([queued], {})] == [j.id for j in queued]
    scheduler.close()
    store.close()
