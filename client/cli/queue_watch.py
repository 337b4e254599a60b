"""While a followed job waits in the queue, why: the coordinator's wait reason, which is
set on the job rather than sent as an event (`ftctl submit -f`, `ftctl logs -f`)."""

from __future__ import annotations

import threading

from rich.text import Text

from tunefleet.client.client import Client
from tunefleet.client.errors import TunefleetError
from tunefleet.client.render import STATE_STYLES, EventRenderer
from tunefleet.client.types import Job, JobState
from tunefleet.limits import printable


class QueueWatch:
    """Why a followed job still waits in the queue, printed once per new reason.

    That reason (no worker with enough GPUs, a source job not done yet) is set on the job
    by the coordinator, not sent as an event: a follower printed "QUEUED submitted" and
    then nothing, for ever when no worker could take the job. While the last state the
    renderer showed is QUEUED, this asks for the job every `every_s` seconds, on a thread
    of its own (the event stream blocks the main one)."""

    def __init__(self, sdk: Client, job_id: str, renderer: EventRenderer, job: Job, every_s=2.0):
        self.sdk, self.job_id, self.renderer, self.every_s = sdk, job_id, renderer, every_s
        self._shown = {"", "submitted"}  # the reason every job is created with
        self._queued = job.state is JobState.QUEUED  # before the first event arrives
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftctl-queue-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Waits (briefly) for a call in flight: the channel closes next, and a call still
        on it when the process exits had gRPC's core print an epoll error under the
        follower's one line (a Ctrl-C's, say)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            last = self.renderer.last_state
            if not (last.state is JobState.QUEUED if last is not None else self._queued):
                continue
            try:
                job = self.sdk.get(self.job_id)
            except TunefleetError:
                continue  # the event stream reports an outage; this only adds a reason
            if job.state is JobState.QUEUED and job.reason not in self._shown:
                self._shown.add(job.reason)
                text = Text("QUEUED", style=STATE_STYLES.get(JobState.QUEUED, ""))
                self.renderer.print(text.append(f" {printable(job.reason)}"))
