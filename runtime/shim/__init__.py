"""containerd shim v2 (io.containerd.architect.v1) that keeps hibernated containers RUNNING."""
