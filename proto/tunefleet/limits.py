"""The sizes every component agrees on, and the helpers that keep texts within them.

One home for the limits that protect the coordinator, the workers and users' terminals
from hostile or accidental input (README, Reliability):

- A job spec is at most MAX_SPEC_BYTES serialized (a job YAML at most MAX_YAML_BYTES);
  SubmitJob refuses a bigger one, naming the limit. Without it, one 37 MB spec stalled
  every other call and made ListJobs fail for everyone.
- Every text that goes into an event (log lines, reasons, metric names, report cells) is
  clipped at the source to MAX_EVENT_TEXT_BYTES with a visible "... (truncated, N bytes)";
  a whole event is at most MAX_EVENT_BYTES. An unbounded one (a 70 MB CSV column name
  echoed in an error) was refused by gRPC and retried forever, wedging the worker.
- Job names and worker ids use a safe character set (NAME_PATTERN), and everything else a
  user wrote is escaped before a terminal sees it (`printable`): a name must not be able
  to print a fake "SUCCEEDED job-..." line.
"""

from __future__ import annotations

import re
import reprlib
import unicodedata

from tunefleet.v1 import job_pb2

MAX_SPEC_BYTES = 1024 * 1024  # a serialized JobSpec
MAX_YAML_BYTES = 1024 * 1024  # a job file as read from disk
MAX_YAML_DEPTH = 32  # nesting of mappings/sequences in a job file
MAX_YAML_NODES = 100_000  # nodes of a job file after aliases are expanded
MAX_EVENT_TEXT_BYTES = 16 * 1024  # one text inside an event (a log line, a reason, a name)
MAX_EVENT_BYTES = 256 * 1024  # one whole event, serialized
MAX_REASON_CHARS = 1000  # a job's or a worker's reason
MAX_QUOTE_CHARS = 200  # how much of a user's value an error message quotes
MAX_NAME_CHARS = 100  # spec.name
MAX_WORKER_ID_CHARS = 64
MAX_HOSTNAME_CHARS = 253  # DNS
# What one worker (one machine) can offer a job: more is refused at submit, since no
# worker could ever run it (100,000 training processes or data-loader workers would only
# exhaust the machine's process table).
MAX_PROCESSES_PER_NODE = 64
MAX_GPUS_PER_NODE = 64
MAX_NODES = 256
MAX_DATA_WORKERS = 32
# Integer labels are class ids 0..N-1: a column of years, prices or row ids read as labels
# would otherwise build a head (and a list of names) of a billion classes, or overflow int64.
MAX_CLASSES = 100_000

# Job names and worker ids: letters, digits, and . _ - (not first), nothing that a
# terminal, a shell or a file name would read specially.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def is_safe_name(text: str, max_chars: int = MAX_NAME_CHARS) -> bool:
    return len(text) <= max_chars and NAME_PATTERN.fullmatch(text) is not None


def safe_name(text: str, fallback: str = "job") -> str:
    """`text` made into a valid name (a job file's stem may hold spaces or worse)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip("._-")[:MAX_NAME_CHARS]
    return name or fallback


def clip(text: str, max_bytes: int = MAX_EVENT_TEXT_BYTES) -> str:
    """`text`, or its start with "... (truncated, N bytes)" when its UTF-8 form is longer
    than `max_bytes` (N: the whole text's size, so the reader knows what was cut)."""
    if len(text) * 4 <= max_bytes:  # cheap: no character takes more than 4 bytes
        return text
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return text
    marker = f"... (truncated, {len(data):,} bytes)"
    keep = max(max_bytes - len(marker.encode()), 0)
    return data[:keep].decode("utf-8", errors="ignore") + marker


_CLIP_MARKER = re.compile(r"\.\.\. \(truncated, [\d,]+ (?:bytes|chars)\)$")


def unclipped(text: str) -> str:
    """`text` without the marker `clip` or `clip_chars` ended it with: what is left is the
    start of the original, to compare with texts that were not clipped."""
    return _CLIP_MARKER.sub("", text)


def clip_chars(text: str, max_chars: int) -> str:
    """Like `clip`, counted in characters (for messages people read)."""
    if len(text) <= max_chars:
        return text
    marker = f"... (truncated, {len(text):,} chars)"
    return text[: max(max_chars - len(marker), 0)] + marker


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_QUOTE_CHARS
_REPR.maxother = MAX_QUOTE_CHARS
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8


def quote(value: object, max_chars: int = MAX_QUOTE_CHARS) -> str:
    """repr(value) for an error message: at most `max_chars`, whatever its size or depth
    (reprlib stops at 3 levels, so a 500-level nesting cannot recurse)."""
    return clip_chars(_REPR.repr(value), max_chars)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal: control characters (newlines unless `keep_newlines`,
    ANSI escapes, NUL, DEL, C1, bidi overrides) become visible escapes such as \\x1b."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (keep_newlines and ch == "\n"):
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " " or unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def bound_event(event: job_pb2.Event, max_text: int = MAX_EVENT_TEXT_BYTES) -> job_pb2.Event:
    """Clips, in place, every text of `event` to `max_text` bytes, then the whole event to
    MAX_EVENT_BYTES (dropping report rows and map entries past that); returns it."""
    kind = event.WhichOneof("kind")
    if kind == "log":
        event.log.message = clip(event.log.message, max_text)
        event.log.level = clip(event.log.level, 16)
    elif kind == "state_change":
        event.state_change.reason = clip(event.state_change.reason, max_text)
    elif kind == "metrics":
        m = event.metrics
        m.phase = clip(m.phase, 64)
        for field in (m.values, m.lr_groups):
            long = [k for k in field if len(k.encode()) > 256]
            for key in long:
                value = field.pop(key)
                field[clip(key, 256)] = value
    elif kind == "report":
        r = event.report
        r.name = clip(r.name, 256)
        r.text = clip(r.text, max_text)
        r.columns[:] = [clip(c, 256) for c in r.columns]
        for row in r.rows:
            row.cells[:] = [clip(c, 1024) for c in row.cells]
    if event.ByteSize() <= MAX_EVENT_BYTES:
        return event
    if kind == "report":
        rows = event.report.rows
        while rows and event.ByteSize() > MAX_EVENT_BYTES:
            del rows[len(rows) // 2 :]
        event.report.text = clip(event.report.text, 1024)
    elif kind == "metrics":
        m = event.metrics
        for field in (m.values, m.lr_groups):
            for key in sorted(field)[64:]:
                del field[key]
    return event
