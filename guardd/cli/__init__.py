"""The operator's and cron's commands: guard-run (lean hot path) and guardctl."""
