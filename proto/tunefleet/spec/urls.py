"""Data and models by URL: which schemes a spec's path fields accept, and their shape.

Pure string checks (the schema check runs them everywhere); the worker reads the URLs
with fsspec (tunefleet.worker.input_cache), credentials coming from its environment only.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["UPLOAD_SCHEMES", "URL_SCHEMES", "is_url", "storage_url_problem", "url_problem"]

# s3 (s3fs), gs (gcsfs), az (adlfs), hf (huggingface_hub), https (aiohttp), file (local).
URL_SCHEMES = ("s3", "gs", "az", "hf", "https", "file")
# Stores a client can upload a job's files to, whose URLs a spec then names (https:// and
# hf:// are read-only here).
UPLOAD_SCHEMES = ("s3", "gs", "az", "file")
# Credentials belong in the worker's environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS...),
# never in a spec the coordinator stores and shows to whoever may read the job.
_SECRET_QUERY_KEYS = ("signature", "sig", "token", "key", "secret", "password", "credential")


# A supported scheme with a slash missing or the colon alone (`s3:/bucket/x`, `file:/data`):
# a typo, not a folder named `s3:` next to the job file.
_SCHEME_TYPO = re.compile(rf"^({'|'.join(URL_SCHEMES)}):(?!//)", re.IGNORECASE)


def is_url(value: str) -> bool:
    """Whether a path field's value is a URL (SCHEME://...) rather than a path; a
    supported scheme written with one slash counts (url_problem says what was meant)."""
    return "://" in value[:32] or _SCHEME_TYPO.match(value) is not None


def url_problem(value: str) -> str | None:
    """Why `value`, a URL, cannot be a spec's data or model location (None: it can)."""
    typo = _SCHEME_TYPO.match(value) if "://" not in value[:32] else None
    if typo:
        scheme = typo.group(1).lower()
        rest = value[typo.end() :].lstrip("/")
        meant = f"{scheme}:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
        return f"not a URL (slashes missing after {scheme}:): did you mean {meant}?"
    scheme = value.split("://", 1)[0]
    if scheme.lower() in URL_SCHEMES and scheme != scheme.lower():
        return f"write the scheme in lower case: {scheme.lower()}://"
    if scheme not in URL_SCHEMES:
        return (
            f"{scheme}:// is not supported; use one of {', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.username or parts.password:
        return "credentials do not belong in a spec; give them to the workers' environment"
    query = parts.query.lower()
    if any(f"{k}=" in query or f"-{k}" in query for k in _SECRET_QUERY_KEYS):
        return "a signed or keyed URL puts credentials in the spec; use the workers' environment"
    if scheme == "file":
        if not parts.path.startswith("/"):
            return "file:// needs an absolute path (file:///data/x.csv)"
    elif not parts.netloc or not parts.path.strip("/"):
        return f"{scheme}:// needs a bucket (or host) and an object path"
    return None


def storage_url_problem(value: str, schemes: tuple[str, ...] | None = None) -> str | None:
    """Why `value` cannot be a storage root (the coordinator's --storage-uri, a worker's
    --artifacts-uri); None: it can. `schemes`: the only ones allowed (None: any, left to
    fsspec). Every machine that uses the root reads it as the same place, so a plain path
    (or a scheme typo, `s3:/bucket`, which is one too) is refused rather than taken as a
    folder relative to wherever the process happens to run."""
    accepted = ", ".join(f"{s}://" for s in schemes or UPLOAD_SCHEMES)
    if "://" not in value and _SCHEME_TYPO.match(value):
        return url_problem(value)
    if "://" not in value:
        return (
            f"not a URL; give the store's URL ({accepted}), e.g. s3://BUCKET/PREFIX, or "
            "file:///ABSOLUTE/PATH for a folder every machine mounts"
        )
    scheme = value.split("://", 1)[0].lower()
    if schemes is not None and scheme not in schemes:
        return f"{scheme}:// is not supported; use one of {accepted}"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.username or parts.password or parts.query:
        return "credentials do not belong in the URL; give them to the environment (AWS_*...)"
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return "file:// needs an absolute path (file:///mnt/shared/tunefleet)"
    elif not parts.netloc:
        return f"{scheme}:// needs a bucket (or host): {scheme}://BUCKET/PREFIX"
    return None
