"""Cold vs warm inputs: what a job whose data comes from an object store pays to start.

An S3-compatible store (moto in server mode, on this machine) holds a CSV of --mb MB; the
worker's input cache (tunefleet.worker.input_cache) fetches it as a job's data.train would,
through the same `prepare_inputs` the worker daemon runs before the engine. Timed:

- cold: an empty cache: the download, the content key, the rename into place;
- warm: the same URL again, a second job on the same data: a HEAD request and a lookup;
- second worker: another cache folder (another host): a full download again.

    .venv/bin/python bench/input_cache.py [--mb 64] [--repeats 3]

Prints bytes downloaded and seconds for each; the target is 0 bytes warm.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunefleet.spec import spec_from_dict
from tunefleet.worker.input_cache import InputCache
from tunefleet.worker.job_inputs import prepare_inputs
from tunefleet.worker.path_policy import PathPolicy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on a free loopback port, and the environment that points this
    process's s3fs at it (set here too; pass it on to other processes)."""
    port = _free_port()
    store = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    return store, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store, _ = start_moto()
    try:
        import fsspec

        time.sleep(2)
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        row = b"some words of a sentence to classify,pos\n"
        body = b"text,label\n" + row * (args.mb * 2**20 // len(row))
        fs.pipe_file("bench/train.csv", body)
        url = "s3://bench/train.csv"
        spec = spec_from_dict(
            {"name": "b", "model": {"source": "hf", "name": "x"},
             "data": {"source": "csv", "train": url}}
        )  # fmt: skip
        rows = {"cold": [], "warm": [], "second worker": []}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                for label, folder in (("cold", a), ("warm", a), ("second worker", b)):
                    cache = InputCache(Path(folder), 10 * 2**30)
                    started = time.perf_counter()
                    inputs, refused = prepare_inputs(spec, cache, PathPolicy(), "bench")
                    took = time.perf_counter() - started
                    assert refused is None, refused
                    rows[label].append((took, inputs.downloaded))
                    inputs.close()
        print(f"{len(body) / 2**20:.1f} MiB object, {args.repeats} repeats, moto on loopback")
        for label, values in rows.items():
            seconds = statistics.median(t for t, _ in values)
            print(f"  {label:14s} {seconds * 1000:8.1f} ms  {values[0][1]:>12,} bytes downloaded")
    finally:
        store.terminate()
        store.wait(timeout=10)


if __name__ == "__main__":
    main()
