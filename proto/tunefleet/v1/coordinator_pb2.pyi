from tunefleet.v1 import job_pb2 as _job_pb2
from tunefleet.v1 import spec_pb2 as _spec_pb2
from tunefleet.v1 import sweep_pb2 as _sweep_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    LIVE: _ClassVar[WorkerState]
    LOST: _ClassVar[WorkerState]
    DRAINING: _ClassVar[WorkerState]
WORKER_STATE_UNSPECIFIED: WorkerState
LIVE: WorkerState
LOST: WorkerState
DRAINING: WorkerState

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "idempotency_key")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.JobSpec
    idempotency_key: str
    def __init__(self, spec: _Optional[_Union[_spec_pb2.JobSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitSweepRequest(_message.Message):
    __slots__ = ("spec", "idempotency_key")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.JobSpec
    idempotency_key: str
    def __init__(self, spec: _Optional[_Union[_spec_pb2.JobSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class ListSweepsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListSweepsResponse(_message.Message):
    __slots__ = ("sweeps",)
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[_sweep_pb2.Sweep]
    def __init__(self, sweeps: _Optional[_Iterable[_Union[_sweep_pb2.Sweep, _Mapping]]] = ...) -> None: ...

class CancelSweepRequest(_message.Message):
    __slots__ = ("sweep_id", "reason")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    reason: str
    def __init__(self, sweep_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_job_pb2.JobState]
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_job_pb2.JobState, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_job_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_job_pb2.Event, _Mapping]]] = ...) -> None: ...

class WorkerResources(_message.Message):
    __slots__ = ("gpus", "cpus", "gpu_name")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    cpus: int
    gpu_name: str
    def __init__(self, gpus: _Optional[int] = ..., cpus: _Optional[int] = ..., gpu_name: _Optional[str] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("id", "hostname", "resources", "state", "free_gpus", "job_ids", "last_heartbeat_age_s", "address", "unhealthy_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    hostname: str
    resources: WorkerResources
    state: WorkerState
    free_gpus: int
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    last_heartbeat_age_s: float
    address: str
    unhealthy_reason: str
    def __init__(self, id: _Optional[str] = ..., hostname: _Optional[str] = ..., resources: _Optional[_Union[WorkerResources, _Mapping]] = ..., state: _Optional[_Union[WorkerState, str]] = ..., free_gpus: _Optional[int] = ..., job_ids: _Optional[_Iterable[str]] = ..., last_heartbeat_age_s: _Optional[float] = ..., address: _Optional[str] = ..., unhealthy_reason: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers", "storage_uri")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_URI_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    storage_uri: str
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ..., storage_uri: _Optional[str] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "hostname", "resources", "address", "instance")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    resources: WorkerResources
    address: str
    instance: str
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., resources: _Optional[_Union[WorkerResources, _Mapping]] = ..., address: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval_s", "lease_timeout_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval_s: float
    lease_timeout_s: float
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_timeout_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "running_job_ids", "unhealthy_reason", "leaving", "instance")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_REASON_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    running_job_ids: _containers.RepeatedScalarFieldContainer[str]
    unhealthy_reason: str
    leaving: bool
    instance: str
    def __init__(self, worker_id: _Optional[str] = ..., running_job_ids: _Optional[_Iterable[str]] = ..., unhealthy_reason: _Optional[str] = ..., leaving: _Optional[bool] = ..., instance: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancel_job_ids", "known", "lost_job_ids", "drain")
    CANCEL_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    LOST_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    cancel_job_ids: _containers.RepeatedScalarFieldContainer[str]
    known: bool
    lost_job_ids: _containers.RepeatedScalarFieldContainer[str]
    drain: bool
    def __init__(self, cancel_job_ids: _Optional[_Iterable[str]] = ..., known: _Optional[bool] = ..., lost_job_ids: _Optional[_Iterable[str]] = ..., drain: _Optional[bool] = ...) -> None: ...

class AcquireJobRequest(_message.Message):
    __slots__ = ("worker_id", "wait_seconds", "rendezvous_port")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_PORT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_seconds: float
    rendezvous_port: int
    def __init__(self, worker_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., rendezvous_port: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job", "attempt", "rendezvous")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    attempt: int
    rendezvous: Rendezvous
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., attempt: _Optional[int] = ..., rendezvous: _Optional[_Union[Rendezvous, _Mapping]] = ...) -> None: ...

class Rendezvous(_message.Message):
    __slots__ = ("machine_rank", "num_machines", "main_process_ip", "main_process_port")
    MACHINE_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_MACHINES_FIELD_NUMBER: _ClassVar[int]
    MAIN_PROCESS_IP_FIELD_NUMBER: _ClassVar[int]
    MAIN_PROCESS_PORT_FIELD_NUMBER: _ClassVar[int]
    machine_rank: int
    num_machines: int
    main_process_ip: str
    main_process_port: int
    def __init__(self, machine_rank: _Optional[int] = ..., num_machines: _Optional[int] = ..., main_process_ip: _Optional[str] = ..., main_process_port: _Optional[int] = ...) -> None: ...

class AcquireJobResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("worker_id", "job_id", "attempt", "events", "batch_seq")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    job_id: str
    attempt: int
    events: _containers.RepeatedCompositeFieldContainer[_job_pb2.Event]
    batch_seq: int
    def __init__(self, worker_id: _Optional[str] = ..., job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_job_pb2.Event, _Mapping]]] = ..., batch_seq: _Optional[int] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("last_seq", "stop")
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    stop: bool
    def __init__(self, last_seq: _Optional[int] = ..., stop: _Optional[bool] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("worker_id", "job_id", "attempt", "state", "reason", "artifacts", "summary", "retryable")
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SummaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    job_id: str
    attempt: int
    state: _job_pb2.JobState
    reason: str
    artifacts: _containers.ScalarMap[str, str]
    summary: _containers.ScalarMap[str, float]
    retryable: bool
    def __init__(self, worker_id: _Optional[str] = ..., job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ..., reason: _Optional[str] = ..., artifacts: _Optional[_Mapping[str, str]] = ..., summary: _Optional[_Mapping[str, float]] = ..., retryable: _Optional[bool] = ...) -> None: ...

class FinishJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseJobRequest(_message.Message):
    __slots__ = ("worker_id", "job_id", "attempt", "reason")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    job_id: str
    attempt: int
    reason: str
    def __init__(self, worker_id: _Optional[str] = ..., job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
