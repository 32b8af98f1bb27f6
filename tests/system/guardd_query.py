"""Inside the container: ask guardd itself (its control socket) rather than the files.

guardd_query.py scope NAME   exit 0 when the config guardd runs with has scope NAME
guardd_query.py job SCOPE    exit 0 when guardd sees a guarded job of SCOPE running
"""

import json
import socket
import sys


def ask(request: dict[str, str]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect("/run/guardd/guardd.sock")
        conn.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, object] = json.loads(conn.makefile("rb").readline())
    return reply


what, name = sys.argv[1], sys.argv[2]
if what == "scope":
    scopes = ask({"op": "status"})["scopes"]
    sys.exit(0 if isinstance(scopes, dict) and name in scopes else 1)
jobs = ask({"op": "jobs", "scope": name})["jobs"]
print(jobs)
sys.exit(0 if isinstance(jobs, list) and jobs else 1)
