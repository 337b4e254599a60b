"""tunefleet: a distributed fine-tuning service.

The root package holds the wire contract (generated code in ``tunefleet.v1``) and its
semantics (``tunefleet.spec``: YAML loading, defaults, the one validator), and beside them
the plumbing every room shares (``transport``, ``status_details``, ``defaults``,
``states``, ``limits``, ``logging_setup``). The coordinator, worker and client live in
``tunefleet.coordinator``, ``tunefleet.worker`` and ``tunefleet.client``; they import the
root package, never the other way round (pyproject.toml, [tool.importlinter]).
"""

__version__ = "0.1.0"
