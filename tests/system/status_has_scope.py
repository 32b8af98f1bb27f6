"""Inside the container: exit 0 when guardd's status reply (control socket) lists the
scope named on the command line, i.e. the config guardd is running with has it."""

import json
import socket
import sys

with socket.socket(socket.AF_UNIX) as conn:
    conn.settimeout(5)
    conn.connect("/run/guardd/guardd.sock")
    conn.sendall(b'{"op":"status"}\n')
    reply = json.loads(conn.makefile("rb").readline())
sys.exit(0 if sys.argv[1] in reply["scopes"] else 1)
