"""Job lifecycle facts shared by every component."""

from tunefleet.v1 import job_pb2

# PRUNED: a sweep's trial its pruner stopped (through the cancel path).
TERMINAL_STATES = frozenset({job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED, job_pb2.PRUNED})
# A placed job: a worker (or each member of a multi-node job) holds it under a lease.
ACTIVE_STATES = (job_pb2.ASSIGNED, job_pb2.RUNNING)


def is_terminal(state: int) -> bool:
    """A terminal job never changes state again, so followers can stop."""
    return state in TERMINAL_STATES


def state_name(state: int) -> str:
    """The enum name, or "state N" for a number the enum does not have (a hostile or newer
    peer may send any int32)."""
    try:
        return job_pb2.JobState.Name(state)
    except ValueError:
        return f"state {state}"
