"""Property-based fuzzing of job-spec validation: random and malformed dicts, YAML text and
JobSpec protos thrown at tunefleet.spec and at a live coordinator. The only acceptable
failures are SpecError / INVALID_ARGUMENT naming field paths, and an invalid spec never
queues a job."""

from __future__ import annotations

import math

import grpc
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunefleet.coordinator import start_server
from tunefleet.spec import SpecError, choices, load_job_file, prepare
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, spec_pb2

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no example database in the repo; failures print their reproducer
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values the validator treats specially, so random specs reach past the first check.
CHOICE_WORDS = sorted(
    {w for v in vars(choices).values() if isinstance(v, tuple) for w in v if isinstance(w, str)}
)
TRICKY_TEXT = [
    "",
    " ",
    "a",
    "/",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "~",
    "./x.csv",
    "\x00",
    "a\x00b",
    "é" * 5,
    "x" * 300,
    "[",
    "(?P<",
    "*",
    ".*",
    "org/model",
    "job-00000000",
]
WORDS = st.sampled_from(CHOICE_WORDS + TRICKY_TEXT) | st.text(max_size=20)
NUMBERS = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, -1, 0.5, 1e-9, 2**31, 2**63, math.inf, -math.inf, math.nan])
)
SCALARS = st.none() | st.booleans() | NUMBERS | WORDS


def _field_names(desc) -> list[str]:
    names = []
    for f in desc.fields:
        names += [f.name, f.json_name]
        if f.message_type is not None and not f.message_type.GetOptions().map_entry:
            names += _field_names(f.message_type)
    return names


KEYS = st.sampled_from(sorted(set(_field_names(spec_pb2.JobSpec.DESCRIPTOR)))) | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | NUMBERS, inner, max_size=5),
    max_leaves=25,
)


def _valid_dict() -> dict:
    return {
        "name": "fuzz",
        "model": {"source": "hf", "name": "/models/bert"},
        "data": {"source": "csv", "train": "/data/train.csv"},
    }


@st.composite
def mutated_specs(draw) -> dict:
    """A valid spec with a few sections or fields replaced by random values."""
    spec = _valid_dict()
    sections = [f.name for f in spec_pb2.JobSpec.DESCRIPTOR.fields]
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sections))
        field_desc = spec_pb2.JobSpec.DESCRIPTOR.fields_by_name[section]
        if field_desc.message_type is not None and draw(st.booleans()):
            sub = spec.setdefault(section, {})
            if not isinstance(sub, dict):
                sub = spec[section] = {}
            names = [f.name for f in field_desc.message_type.fields] or ["x"]
            sub[draw(st.sampled_from(names))] = draw(VALUES)
        else:
            spec[section] = draw(VALUES)
    return spec


def _check_spec_error(exc: SpecError) -> None:
    assert exc.errors, "a SpecError must list at least one problem"
    for error in exc.errors:
        assert isinstance(error.path, str) and error.path, error
        assert isinstance(error.message, str) and error.message, error
    assert str(exc).startswith("invalid job spec")


def _prepare_or_spec_error(data, **kw) -> spec_pb2.JobSpec | None:
    try:
        return prepare(data, check_paths=False, **kw)
    except SpecError as exc:
        _check_spec_error(exc)
        return None


@FUZZ
@given(st.one_of(VALUES, st.dictionaries(KEYS, VALUES, max_size=8), mutated_specs()))
def test_prepare_fails_only_with_field_errors(data):
    spec = _prepare_or_spec_error(data)
    if spec is not None:  # whatever passes is complete: the engine relies on it
        assert spec.name and spec.model.source and spec.data.source
        assert prepare(spec, check_paths=False) == spec  # and stays valid


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200), VALUES.map(yaml.safe_dump), mutated_specs().map(yaml.safe_dump)
    )
)
def test_load_job_file_fails_only_with_field_errors(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_job_file(path, check_paths=False)
    except SpecError as exc:
        _check_spec_error(exc)


def test_load_job_file_problems_name_the_file(tmp_path):
    for name, content in [("empty.yaml", ""), ("bad.yaml", "a: [1"), ("bin.yaml", b"\xff\xfe")]:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(SpecError) as e:
            load_job_file(path)
        assert e.value.errors[0].path == "<file>" and name in e.value.errors[0].message
    with pytest.raises(SpecError):
        load_job_file(tmp_path / "missing.yaml")


# ---- random JobSpec protos at a live coordinator ---------------------------------------


_SCALAR_STRATEGIES = {
    FieldDescriptor.TYPE_STRING: WORDS,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1, 2]),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1]),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 0.1, 1.0, -1.0, 1e-5]),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
}


def _is_repeated(f) -> bool:
    rep = getattr(f, "is_repeated", None)
    if rep is not None:
        return rep() if callable(rep) else bool(rep)
    return f.label == FieldDescriptor.LABEL_REPEATED


@st.composite
def messages(draw, desc, depth: int = 0):
    msg = GetMessageClass(desc)()
    for f in desc.fields:
        # Top-level sections are usually present, deeper fields now and then.
        if not draw(st.booleans() if depth == 0 else st.integers(0, 3).map(lambda n: n == 0)):
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            if value_field.message_type is not None:  # e.g. sweep.space: path -> SweepParam
                if depth >= 2:
                    continue
                for key in draw(st.lists(WORDS, max_size=2, unique=True)):
                    sub = draw(messages(value_field.message_type, depth + 1))
                    getattr(msg, f.name)[key].CopyFrom(sub)
                continue
            entries = draw(st.dictionaries(WORDS, _SCALAR_STRATEGIES[value_field.type], max_size=3))
            getattr(msg, f.name).update(entries)
        elif f.message_type is not None:
            if depth >= 3:
                continue
            sub = draw(messages(f.message_type, depth + 1))
            if _is_repeated(f):
                getattr(msg, f.name).append(sub)
            else:
                getattr(msg, f.name).CopyFrom(sub)
        elif _is_repeated(f):
            getattr(msg, f.name).extend(draw(st.lists(_SCALAR_STRATEGIES[f.type], max_size=3)))
        elif f.type == FieldDescriptor.TYPE_ENUM:
            setattr(msg, f.name, draw(st.sampled_from([v.number for v in f.enum_type.values])))
        else:
            setattr(msg, f.name, draw(_SCALAR_STRATEGIES[f.type]))
    return msg


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_server("127.0.0.1:0", tmp_path_factory.mktemp("fuzz") / "db", check_paths=False)
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    counts = {"accepted": 0}
    yield server, stub, counts
    channel.close()
    server.stop(grace=0)
    print(f"fuzz: {counts['accepted']} random specs accepted, the rest refused")


def _valid_spec() -> spec_pb2.JobSpec:
    return spec_pb2.JobSpec(
        name="fuzz",
        model=spec_pb2.ModelSpec(source="hf", name="/models/bert"),
        data=spec_pb2.DataSpec(source="csv", train="/data/train.csv"),
    )


@st.composite
def nudged_specs(draw):
    """A valid spec with one random section merged in: many stay valid, some do not."""
    spec = _valid_spec()
    section = draw(st.sampled_from(list(spec_pb2.JobSpec.DESCRIPTOR.fields)))
    if section.message_type is not None and not section.message_type.GetOptions().map_entry:
        getattr(spec, section.name).MergeFrom(draw(messages(section.message_type, depth=2)))
    return spec


@settings(FUZZ, max_examples=250)
@given(messages(spec_pb2.JobSpec.DESCRIPTOR) | nudged_specs())
def test_submit_random_specs_to_a_live_coordinator(live, spec):
    server, stub, counts = live
    try:
        job = stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec), timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        head, *lines = e.details().splitlines()
        assert head == "invalid job spec:" and lines, e.details()
        for line in lines:
            assert line.startswith("- ") and ": " in line, line
    else:
        counts["accepted"] += 1
        assert job.state == 1  # QUEUED
        # The coordinator accepts exactly what the one validator accepts.
        assert prepare(spec, check_paths=False) == job.spec
    jobs = stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=10).jobs
    assert len(jobs) == counts["accepted"]  # nothing queued for an invalid spec


def test_undecodable_requests_are_refused_without_harm(live):
    server, stub, counts = live
    raw = stub_channel_call(server.address, b"\xff\xff\xff\xff\x0f garbage")
    assert raw in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    jobs = stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=10).jobs
    assert len(jobs) == counts["accepted"]


def stub_channel_call(address: str, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/tunefleet.v1.Coordinator/SubmitJob")
        try:
            call(payload, timeout=10)
        except grpc.RpcError as e:
            return e.code()
    raise AssertionError("garbage was accepted")
