"""Admission: pure decisions about Pods and workloads at create/update time."""
