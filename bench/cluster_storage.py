"""Without a shared file system: a job on a 200 MB dataset from the object store, cold and
warm, and the laptop's upload of it (issue 15).

One machine plays every part: an S3-compatible store (moto in server mode on 127.0.0.1),
a coordinator started with a storage URL and one worker (LocalCluster: a real worker
process with its own input cache), and this script as the laptop, submitting through the
SDK (`Client.submit`, which uploads local files: tunefleet.client.uploads). The job is a
tiny BERT (built here) trained on `--rows` rows of the CSV (`data.limit_train`); the
engine still reads the whole file, as any job on it does.

    nice -n 10 .venv/bin/python bench/cluster_storage.py [--mb 200] [--rows 256]

In order, in one run:
  raw upload   s3fs `put_file` of the CSV to a scratch key: the baseline of the upload
  local        the job on the worker's own copy of the file (`upload=False`, no store):
               the baseline of the job's start
  cold         `Client.submit` hashes and uploads the CSV; the worker downloads it into
               an empty input cache
  warm         the same spec again: 0 bytes uploaded, 0 bytes downloaded (the targets)

For each job: submit to SUCCEEDED, the fetch (the worker times each URL in its note), the
time from ASSIGNED to the training process's start (fetch, the worker's check of the
data's columns and labels, the process) and the bytes downloaded. Ratios are against the
baselines above.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from pathlib import Path

from input_cache import start_moto

from tunefleet.client import Client, JobState, LocalCluster

BUCKET = "bench"
WORDS = ["the", "movie", "was", "really", "very", "a", "plot", "and", "it", "so"]
LABEL_WORDS = {"pos": ["good", "great", "fine", "happy"], "neg": ["bad", "awful", "poor", "sad"]}


def write_csv(path: Path, mb: int) -> int:
    """A text,label CSV of about `mb` MB: 20,000 random rows repeated (content does not
    matter to a download; the engine still parses every row)."""
    rng = random.Random(0)
    rows = []
    for i in range(20_000):
        label = "pos" if i % 2 == 0 else "neg"
        words = [rng.choice(WORDS) for _ in range(14)] + rng.sample(LABEL_WORDS[label], 2)
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}\n")
    block = "".join(rows).encode()
    with path.open("wb") as f:
        f.write(b"text,label\n")
        for _ in range(max(mb * 10**6 // len(block), 1)):
            f.write(block)
    return path.stat().st_size


def tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocab of the CSV's words."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *sum(LABEL_WORDS.values(), [])]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def run_job(client: Client, spec: dict, *, upload: bool) -> dict:
    """Submits `spec` as the laptop, waits for it; its timings and bytes."""
    started = time.perf_counter()
    handle = client.submit(spec, upload=upload)
    submitted = time.perf_counter()
    job = handle.wait(timeout=600)
    wall = time.perf_counter() - started
    if job.state != JobState.SUCCEEDED:
        raise SystemExit(f"{job.id} {job.state.value}: {job.reason}")
    events = list(client.events(job.id, follow=False))
    assigned = next(
        e.time for e in events if e.state_change and e.state_change.state == JobState.ASSIGNED
    )
    fetch_notes = [
        e for e in events if e.log and " on worker " in e.log.message and "://" in e.log.message
    ]
    launched = next(e.time for e in events if e.log and e.log.message.startswith("started on "))
    downloaded = sum(
        int(m.group(1).replace(",", ""))
        for e in fetch_notes
        if (m := re.search(r"downloaded ([\d,]+) bytes", e.log.message))
    )
    uploaded = next(
        (int(m.group(1).replace(",", "")) for n in handle.notes
         if (m := re.search(r"uploaded \d+ files \(([\d,]+) bytes\)", n))),
        0,
    )  # fmt: skip
    return {
        "wall": wall,
        "submit": submitted - started,  # hashing + upload + the SubmitJob call
        "fetch": sum(  # the worker's own timing of each URL (job_inputs.py)
            float(m.group(1))
            for e in fetch_notes
            if (m := re.search(r" in ([\d.]+) s", e.log.message))
        ),
        "start": (launched - assigned).total_seconds(),  # fetch, checks, the process
        "downloaded": downloaded,
        "uploaded": uploaded,
        "notes": [e.log.message for e in fetch_notes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the CSV (MB)")
    parser.add_argument("--rows", type=int, default=256, help="rows trained on (limit_train)")
    args = parser.parse_args()
    store, credentials = start_moto()  # the laptop's; the worker gets the same below
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-storage-") as tmp:
        try:
            root = Path(tmp)
            laptop = root / "laptop"
            laptop.mkdir()
            csv_path = laptop / "train.csv"
            size = write_csv(csv_path, args.mb)
            model = tiny_bert(laptop / "model")
            time.sleep(1.0)
            import fsspec

            fs = fsspec.filesystem("s3")
            fs.mkdir(BUCKET)
            started = time.perf_counter()
            fs.put_file(str(csv_path), f"{BUCKET}/scratch/train.csv")
            raw_s = time.perf_counter() - started
            fs.rm(f"{BUCKET}/scratch/train.csv")

            spec = {
                "name": "storage-bench",
                "model": {"source": "hf", "name": str(model)},
                "data": {"source": "csv", "train": str(csv_path), "max_length": 16,
                         "limit_train": args.rows},
                "finetune": {"strategy": "full"},
                "train": {"epochs": 1, "batch_size": 32, "log_every_steps": 4},
                "resources": {"gpus": 0},
            }  # fmt: skip
            worker_env = {**credentials, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
            with (
                LocalCluster(
                    db_path=root / "coordinator" / "c.db",
                    artifacts=root / "worker" / "artifacts",
                    gpus=0,
                    worker_log=root / "worker.log",
                    worker_env=worker_env,
                    coordinator_options={"storage_uri": f"s3://{BUCKET}/inputs"},
                ) as cluster,
                Client(cluster.address) as client,
            ):
                runs = {
                    "local": run_job(client, spec, upload=False),
                    "cold": run_job(client, spec, upload=True),
                    "warm": run_job(client, spec, upload=True),
                }
        finally:
            store.terminate()
            store.wait(timeout=10)

    mb = size / 10**6
    cold, warm, local = runs["cold"], runs["warm"], runs["local"]
    print(f"{mb:.1f} MB CSV ({args.rows} rows trained on), moto on loopback, one worker")
    print("upload from the laptop:")
    print(f"  raw s3fs put_file       {raw_s:6.2f} s  {mb / raw_s:7.1f} MB/s  (baseline)")
    print(
        f"  SDK submit (sha256+put) {cold['submit']:6.2f} s  {mb / cold['submit']:7.1f} MB/s  "
        f"{cold['submit'] / raw_s:.2f}x the raw put; {cold['uploaded']:,} bytes uploaded"
    )
    print(f"  SDK re-submit           {warm['submit']:6.2f} s  {warm['uploaded']:,} bytes uploaded")
    print(
        "job: wall = submit (the laptop's check, hashing, upload) + cluster (submitted to "
        "SUCCEEDED);\n  fetch = the worker's URL fetches (its notes); start = ASSIGNED to "
        "the training process started (fetch, the worker's data check, the process)"
    )
    for label, r in runs.items():
        r["cluster"] = r["wall"] - r["submit"]
        print(
            f"  {label:6s} wall {r['wall']:6.2f} s ({r['wall'] / local['wall']:.2f}x local)  "
            f"submit {r['submit']:5.2f} s  cluster {r['cluster']:6.2f} s "
            f"({r['cluster'] / local['cluster']:.2f}x local)  fetch {r['fetch']:5.2f} s  "
            f"start {r['start']:5.2f} s  {r['downloaded']:>12,} bytes downloaded"
        )
    print(
        f"warm / cold: {warm['wall'] / cold['wall']:.2f}x wall, "
        f"{warm['cluster'] / cold['cluster']:.2f}x on the cluster; cold - warm: "
        f"{cold['wall'] - warm['wall']:.2f} s wall"
    )
    for note in cold["notes"] + warm["notes"]:
        print(f"  note: {note}")
    if warm["downloaded"] or warm["uploaded"]:
        raise SystemExit("warm run moved bytes: the target is 0 uploaded, 0 downloaded")


if __name__ == "__main__":
    main()
