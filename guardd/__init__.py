"""guardd: a maintenance-mode guard for Linux hosts.

Kept empty of imports on purpose: ``guard-run`` imports this package in front of
every cron job, so anything added here is paid on each run.
"""

__version__ = "0.1.0"
