"""What guardd, guardctl and guard-run must agree on: os/fcntl-level code, guard-run imports it."""
