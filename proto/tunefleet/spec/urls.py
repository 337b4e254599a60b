"""Data and models by URL: which schemes a spec's path fields accept, and their shape.

Pure string checks (the schema check runs them everywhere); the worker reads the URLs
with fsspec (tunefleet.worker.input_cache), credentials coming from its environment only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["URL_SCHEMES", "is_url", "url_problem"]

# s3 (s3fs), gs (gcsfs), az (adlfs), hf (huggingface_hub), https (aiohttp), file (local).
URL_SCHEMES = ("s3", "gs", "az", "hf", "https", "file")
# Credentials belong in the worker's environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS...),
# never in a spec the coordinator stores and shows to whoever may read the job.
_SECRET_QUERY_KEYS = ("signature", "sig", "token", "key", "secret", "password", "credential")


def is_url(value: str) -> bool:
    """Whether a path field's value is a URL (SCHEME://...) rather than a path."""
    return "://" in value[:32]


def url_problem(value: str) -> str | None:
    """Why `value`, a URL, cannot be a spec's data or model location (None: it can)."""
    scheme = value.split("://", 1)[0].lower()
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
