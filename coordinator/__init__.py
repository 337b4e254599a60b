"""tunefleet.coordinator: the gRPC service that queues jobs, places them on workers and
keeps every job's events.

    from tunefleet.coordinator import start_server
    with start_server("127.0.0.1:0", "/tmp/tf.db") as server:
        print(server.address)
"""

from tunefleet.coordinator.server import CoordinatorServer, serve, start_server

__all__ = ["CoordinatorServer", "serve", "start_server"]
