"""The guardd daemon: wiring, file watching, control socket, hooks, systemd, fleet agent."""
