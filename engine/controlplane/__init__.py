"""Control plane: Checkpoint and PersistentCheckpoint lifecycles, transfers, GC."""
