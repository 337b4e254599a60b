"""Generated protobuf and gRPC bindings (make proto). Do not edit by hand."""
