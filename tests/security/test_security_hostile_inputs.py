"""Hostile and careless inputs through every door (raw gRPC, the SDK, `ftctl`): a spec too
big for the coordinator, NaN where a number belongs, impossible resources, YAML bombs, and
names that would print fake lines on a terminal. Each is refused with a reason that names
the limit, quickly, and without the coordinator or the client paying for it.

A real coordinator on 127.0.0.1 (port 0) and real clients; nothing of ours is mocked.
"""

from __future__ import annotations

import math
import time

import grpc
import pytest
import yaml
from security_helpers import Caller, code_of, make_spec

from tunefleet.client import Client, ValidationError
from tunefleet.client.cli import main as ftctl
from tunefleet.limits import MAX_SPEC_BYTES
from tunefleet.spec import SpecError, load_job_file, prepare
from tunefleet.v1 import coordinator_pb2, job_pb2


@pytest.fixture
def caller(start):
    server = start()
    c = Caller(server.address)
    c.address = server.address
    yield c
    c.close()


def _details(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    raise AssertionError("the call succeeded")


# ---- 2. one big spec ----------------------------------------------------------------------


def test_a_spec_over_the_limit_is_refused_and_listings_stay_small(caller):
    big = make_spec("big")
    big.labels.update({f"k{i}": "v" * 1000 for i in range(1200)})  # ~1.2 MB
    assert big.ByteSize() > MAX_SPEC_BYTES
    started = time.monotonic()
    code, details = _details(lambda: caller.submit(big))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1,048,576 bytes" in details and "<spec>" in details
    assert time.monotonic() - started < 5

    # Specs just under the limit are accepted, but a listing carries summaries, not specs.
    ids = []
    for i in range(3):
        spec = make_spec(f"near-{i}")
        spec.labels.update({f"k{j}": "v" * 1000 for j in range(900)})  # ~0.9 MB each
        ids.append(caller.submit(spec).id)
    listing = caller.call("ListJobs", coordinator_pb2.ListJobsRequest())
    assert [j.id for j in listing.jobs] == ids[::-1] and not listing.next_page_token
    assert listing.ByteSize() < 20_000, listing.ByteSize()
    assert all(j.spec.name.startswith("near-") and not j.spec.labels for j in listing.jobs)
    full = caller.call("GetJob", coordinator_pb2.GetJobRequest(job_id=ids[0]))
    assert len(full.spec.labels) == 900  # GetJob still has the whole spec

    # ...and pages.
    first = caller.call("ListJobs", coordinator_pb2.ListJobsRequest(limit=2))
    assert [j.id for j in first.jobs] == ids[:0:-1] and first.next_page_token
    rest = caller.call(
        "ListJobs", coordinator_pb2.ListJobsRequest(limit=2, page_token=first.next_page_token)
    )
    assert [j.id for j in rest.jobs] == ids[:1] and not rest.next_page_token
    bad_token = coordinator_pb2.ListJobsRequest(page_token="x" * 100)
    assert code_of(lambda: caller.call("ListJobs", bad_token)) == grpc.StatusCode.INVALID_ARGUMENT
    with Client(caller.address) as client:  # the SDK pages too
        assert [j.id for j in client.list(limit=0)] == ids[::-1]
        assert [j.id for j in client.list(limit=1)] == ids[2:]


# ---- 8. validation gaps -------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup, path",
    [
        (lambda s: setattr(s.optimizer, "lr", math.nan), "optimizer.lr"),
        (lambda s: setattr(s.optimizer, "weight_decay", math.inf), "optimizer.weight_decay"),
        (lambda s: s.optimizer.betas.extend([0.9, math.nan]), "optimizer.betas[1]"),
        (lambda s: setattr(s.schedule, "warmup_ratio", math.nan), "schedule.warmup_ratio"),
        (lambda s: setattr(s.model.head, "dropout", -math.inf), "model.head.dropout"),
        (lambda s: setattr(s.resources, "processes", 100_000), "resources.processes"),
        (lambda s: setattr(s.data, "num_workers", 100_000), "data.num_workers"),
        (lambda s: setattr(s.resources, "nodes", 100_000), "resources.nodes"),
    ],
)
def test_non_finite_numbers_and_impossible_resources_are_refused(caller, setup, path):
    spec = make_spec("job")
    setup(spec)
    code, details = _details(lambda: caller.submit(spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"- {path}:" in details, details
    with pytest.raises(SpecError) as info:  # the SDK and ftctl run the same validator
        prepare(spec, check_paths=False)
    assert path in {e.path for e in info.value.errors}


def test_max_length_beyond_the_models_positions_is_refused_at_submit(
    start, tiny_bert, sentiment_data
):
    server = start()
    job = {
        "name": "long",
        "model": {"source": "hf", "name": str(tiny_bert)},
        "data": {
            "source": "csv",
            "train": str(sentiment_data[0]),
            "eval": str(sentiment_data[1]),
            "max_length": 8192,
        },
    }
    with Client(server.address) as client:
        with pytest.raises(ValidationError) as info:
            client.submit(job)
        assert any(
            e.path == "data.max_length" and "64 positions" in e.message for e in info.value.errors
        ), info.value.errors
        spec = prepare({**job, "data": {**job["data"], "max_length": 16}})
        spec.data.max_length = 100  # past the SDK's own check
        # The coordinator checks the schema only (issue 15): the model folder is the
        # workers', so it queues the job; the engine refuses it on the worker.
        queued = Caller(server.address).submit(spec)
        assert queued.state == job_pb2.QUEUED


def test_a_folder_given_as_a_data_file_is_refused(tmp_path, tiny_bert, sentiment_data):
    job = {
        "name": "folder",
        "model": {"source": "hf", "name": str(tiny_bert)},
        "data": {"source": "csv", "train": str(tmp_path), "eval": str(sentiment_data[1])},
    }
    with pytest.raises(SpecError) as info:
        prepare(job)
    assert any(e.path == "data.train" and "is a folder" in e.message for e in info.value.errors)


def test_worker_calls_with_impossible_values_are_invalid_arguments(caller):
    register = coordinator_pb2.RegisterWorkerRequest
    resources = coordinator_pb2.WorkerResources
    bad = [
        register(worker_id="w1", hostname="h", resources=resources(gpus=-1)),
        register(worker_id="w1", hostname="h" * 1_000_000),
        register(worker_id="w1\n\x1b[32mLIVE", hostname="h"),
        register(worker_id="w" * 65, hostname="h"),
        register(worker_id="w1", hostname="h", resources=resources(gpu_name="\x00" * 10)),
    ]
    for request in bad:
        code = code_of(lambda r=request: caller.call("RegisterWorker", r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    ok = caller.call("RegisterWorker", register(worker_id="w-1.a_b", hostname="host-1"))
    assert ok.worker_id == "w-1.a_b"
    job = caller.submit(make_spec("finish"))
    finish = coordinator_pb2.FinishJobRequest(worker_id="w-1.a_b", job_id=job.id, attempt=1)
    finish.state = 99  # not a JobState at all: was INTERNAL
    code, details = _details(lambda: caller.call("FinishJob", finish))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "state 99" in details
    listing = coordinator_pb2.ListJobsRequest(states=[99])
    assert code_of(lambda: caller.call("ListJobs", listing)) == grpc.StatusCode.INVALID_ARGUMENT


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: dup\nmodel: {source: hf, name: x}\noptimizer:\n  lr: 0.1\n  name: sgd\n  lr: 10\n"
    )
    with pytest.raises(SpecError) as info:
        load_job_file(path, check_paths=False)
    message = str(info.value)
    assert "duplicate key 'lr' at line 6 (first given at line 4)" in message


# ---- 9. client-side denial of service ----------------------------------------------------


def _alias_bomb(levels: int = 6) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + f"name: *a{levels}\n"


@pytest.mark.parametrize(
    "content, expected",
    [
        (_alias_bomb(), "more than 100,000 values once aliases are expanded"),
        ("name: x\ntrain: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 32 levels"),
        ("name: x\nlabels: {k: " + "[" * 5000 + "]" * 5000 + "}\n", "nested deeper than 32"),
        ("name: " + "x" * 2_000_000 + "\n", "larger than 1,048,576 bytes"),
    ],
    ids=["alias-bomb", "nesting-500", "nesting-5000", "2-MB"],
)
def test_ftctl_validate_refuses_expensive_yaml_quickly(tmp_path, capsys, content, expected):
    path = tmp_path / "job.yaml"
    path.write_text(content)
    started = time.monotonic()
    assert ftctl(["validate", str(path)]) == 1
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    assert expected in err, err[:2000]
    assert len(out) + len(err) < 2_000 and took < 5, (len(out) + len(err), took)


def test_ftctl_validate_dev_zero_and_a_folder(capsys, tmp_path):
    assert ftctl(["validate", "/dev/zero", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "/dev/zero: larger than 1,048,576 bytes" in err
    assert f"{tmp_path}: is a folder, not a job file" in err


def test_a_control_character_is_placed_by_line_and_column(capsys, tmp_path):
    """PyYAML's reader error has no mark: it read `in "<unicode string>", position 14`,
    over two lines."""
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nmodel: a\x00b\n")
    assert ftctl(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: not valid YAML at line 2, column 9: character U+0000 is not allowed" in err
    assert "unicode string" not in err and len(err.splitlines()) == 2


def test_deep_or_huge_values_from_the_sdk_give_short_messages():
    deep: object = "x"
    for _ in range(5000):
        deep = [deep]
    for value in (deep, "y" * 1_000_000, {"k" * 1_000_000: 1}):
        job = {"name": "x", "model": {"source": "hf", "name": value}, "data": {"source": "csv"}}
        with pytest.raises(SpecError) as info:  # not RecursionError, not a 1 MB message
            prepare(job, check_paths=False)
        assert len(str(info.value)) < 2_000
        if value is deep:
            assert any(e.path == "model.name" for e in info.value.errors)
    with pytest.raises(SpecError) as info:
        prepare({"name": "x", "k" * 1_000_000: 1}, check_paths=False)
    assert len(str(info.value)) < 2_000


# ---- 10. names and what terminals show ----------------------------------------------------

_FAKE_LINE = "ok\n\x1b[32mSUCCEEDED\x1b[0m job-00000000\x00"


def test_names_are_restricted_and_user_text_is_printed_escaped(start, capsys):
    server = start()
    caller = Caller(server.address)
    code, details = _details(lambda: caller.submit(make_spec(_FAKE_LINE)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "- name:" in details
    assert "\n" not in details.split("- name:")[1].strip()  # quoted, not raw
    for name in ("a b", "../x", "-x", "x" * 101, "é"):
        assert code_of(lambda n=name: caller.submit(make_spec(n))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    # Other texts a user writes (labels, a cancel reason) are stored as written but shown
    # escaped by every ftctl view.
    spec = make_spec("shown")
    spec.labels["note"] = _FAKE_LINE
    job = caller.submit(spec)
    caller.call("CancelJob", coordinator_pb2.CancelJobRequest(job_id=job.id, reason=_FAKE_LINE))
    assert caller.call("GetJob", coordinator_pb2.GetJobRequest(job_id=job.id)).state == (
        job_pb2.CANCELLED
    )
    caller.call("RegisterWorker", coordinator_pb2.RegisterWorkerRequest(worker_id="w1"))
    target = ["--coordinator", server.address]
    capsys.readouterr()
    for command in (["get", job.id], ["jobs"], ["logs", job.id], ["workers"]):
        assert ftctl([*target, *command]) == 0, command
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x00" not in out, command
        assert not any(line.lstrip().startswith("SUCCEEDED") for line in out.splitlines())
        if command[0] != "workers":
            assert "\\x1b[32mSUCCEEDED" in out, (command, out)
    caller.close()


def test_job_file_names_become_valid_job_names(tmp_path, tiny_bert, sentiment_data):
    path = tmp_path / "my job (v2).yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"source": "hf", "name": str(tiny_bert)},
                "data": {"source": "csv", "train": str(sentiment_data[0])},
            }
        )
    )
    assert load_job_file(path).name == "my-job-v2-"
