"""Fleet mode on etcd: pure keys and records, and the thin client wrapper."""
