"""tunefleet: a distributed fine-tuning service.

The root package holds the wire contract (generated code in ``tunefleet.v1``) and its
semantics (``tunefleet.spec``: YAML loading, defaults, the one validator). The
coordinator, worker and client live in ``tunefleet.coordinator``, ``tunefleet.worker``
and ``tunefleet.client``.
"""

__version__ = "0.1.0"
