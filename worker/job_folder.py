"""A job's output folder is its own: claimed with an owner file, never shared.

Before, a job given another job's `output.dir` "resumed" from that job's checkpoints and
SUCCEEDED with its metrics and weights, and an `output.dir` inside another job's folder
under `--artifacts` overwrote its spec.json. Now the first attempt of a job writes
OUT/.tunefleet-job (its id) and every attempt checks it: a folder (or a folder inside one)
owned by another job, or a non-empty folder no job owns, is refused before anything is
written. The engine checks the same from its side with the job id and spec hash in every
checkpoint manifest (worker/engine/lineage.py).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

OWNER_FILE = ".tunefleet-job"


def owner_of(folder: Path) -> str | None:
    """The id of the job that owns `folder`, "" for an unreadable owner file, None if
    no job claimed it."""
    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""
    return str(data.get("job_id", "")) if isinstance(data, dict) else ""


def claim(out_dir: Path, job_id: str, *, artifacts_root: Path) -> str | None:
    """Makes `out_dir` job `job_id`'s own; returns why it cannot be (a reason for the
    job's failure), or None. OSError (a full disk) propagates."""
    folder = Path(os.path.realpath(out_dir))
    root = Path(os.path.realpath(artifacts_root))
    shares_root = folder == root or root in folder.parents or folder in root.parents
    if folder != root / job_id and shares_root:
        return (
            f"output.dir {out_dir} is inside (or contains) this worker's --artifacts folder, "
            "where each job gets a folder of its own: leave output.dir unset, or choose a "
            "folder elsewhere"
        )
    for parent in folder.parents:
        other = owner_of(parent)
        if other is not None and other != job_id:
            return f"output.dir {out_dir} is inside the output folder of job {other or '?'}"
    if folder.is_dir():
        owner = owner_of(folder)
        if owner is None and any(not _is_claim_tmp(p.name) for p in folder.iterdir()):
            # Another member of a multi-node job may have claimed the shared folder between
            # our read of the owner file and the listing (what we saw may be that very file).
            owner = owner_of(folder)
            if owner is None:
                return (
                    f"output.dir {out_dir} exists and is not empty, and no job owns it: give "
                    "the job a new or empty folder"
                )
        if owner is not None and owner != job_id:
            return (
                f"output.dir {out_dir} belongs to job {owner or '?'}: two jobs never share an "
                "output folder (one would resume from, or overwrite, the other's checkpoints)"
            )
        if owner == job_id:
            return None
    folder.mkdir(parents=True, exist_ok=True)
    # The members of a multi-node job claim one shared folder at the same moment: each
    # writes its own temp file (a shared name would vanish under the other's rename).
    tmp = folder / f"{OWNER_FILE}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({"job_id": job_id}) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)
    return None


def _is_claim_tmp(name: str) -> bool:
    return name.startswith(OWNER_FILE + ".") and name.endswith(".tmp")
