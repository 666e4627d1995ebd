"""Generated protobuf modules (runtime/shim/gen-proto)."""
