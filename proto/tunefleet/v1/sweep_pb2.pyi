import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunefleet.v1 import job_pb2 as _job_pb2
from tunefleet.v1 import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_STATE_UNSPECIFIED: _ClassVar[SweepState]
    SWEEP_RUNNING: _ClassVar[SweepState]
    SWEEP_SUCCEEDED: _ClassVar[SweepState]
    SWEEP_FAILED: _ClassVar[SweepState]
    SWEEP_CANCELLED: _ClassVar[SweepState]
SWEEP_STATE_UNSPECIFIED: SweepState
SWEEP_RUNNING: SweepState
SWEEP_SUCCEEDED: SweepState
SWEEP_FAILED: SweepState
SWEEP_CANCELLED: SweepState

class Trial(_message.Message):
    __slots__ = ("number", "job_id", "job_state", "trial_state", "params", "value", "intermediate")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class IntermediateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_FIELD_NUMBER: _ClassVar[int]
    number: int
    job_id: str
    job_state: _job_pb2.JobState
    trial_state: str
    params: _containers.ScalarMap[str, str]
    value: float
    intermediate: _containers.ScalarMap[int, float]
    def __init__(self, number: _Optional[int] = ..., job_id: _Optional[str] = ..., job_state: _Optional[_Union[_job_pb2.JobState, str]] = ..., trial_state: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., intermediate: _Optional[_Mapping[int, float]] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("id", "spec", "state", "reason", "trials", "best_trial", "best_job_id", "best_value", "best_artifacts", "created_at", "finished_at", "submitter", "grid_size")
    class BestArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    BEST_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    GRID_SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: _spec_pb2.JobSpec
    state: SweepState
    reason: str
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    best_trial: int
    best_job_id: str
    best_value: float
    best_artifacts: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    submitter: str
    grid_size: int
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[_spec_pb2.JobSpec, _Mapping]] = ..., state: _Optional[_Union[SweepState, str]] = ..., reason: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., best_trial: _Optional[int] = ..., best_job_id: _Optional[str] = ..., best_value: _Optional[float] = ..., best_artifacts: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., submitter: _Optional[str] = ..., grid_size: _Optional[int] = ...) -> None: ...
