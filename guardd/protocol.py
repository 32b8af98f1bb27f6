"""The control socket's wire format: newline-delimited JSON objects. Pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from guardd.core.paths import is_scope_name
from guardd.core.state import ScopeStatus

MAX_LINE = 64 * 1024
Op = Literal["ping", "status", "jobs", "watch"]
OPS: tuple[Op, ...] = get_args(Op)
ErrorCode = Literal["bad_request", "unknown_op", "too_long"]


@dataclass(frozen=True)
class Request:
    """A well-formed request."""

    op: Op
    scope: str | None = None


@dataclass(frozen=True)
class ProtocolError:
    """A request that gets an error reply (the connection stays open unless too_long)."""

    code: ErrorCode
    message: str


def parse_request(line: bytes) -> Request | ProtocolError:
    """Decode one request line (without its newline)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return ProtocolError("bad_request", "request is not valid UTF-8")
    except (ValueError, RecursionError):
        return ProtocolError("bad_request", "request is not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolError("bad_request", 'request must be a JSON object like {"op":"ping"}')
    op = obj.get("op")
    if not isinstance(op, str):
        return ProtocolError("bad_request", 'missing "op" (ping, status, jobs, watch)')
    if op not in OPS:
        return ProtocolError("unknown_op", f"unknown op {op[:64]!r} (ping, status, jobs, watch)")
    scope = obj.get("scope")
    if scope is not None and (not isinstance(scope, str) or not is_scope_name(scope)):
        return ProtocolError("bad_request", '"scope" must be a scope name')
    return Request(op=OPS[OPS.index(op)], scope=scope)  # the member itself, typed Op


def encode(obj: Mapping[str, object]) -> bytes:
    """One reply line: compact UTF-8 JSON and a newline."""
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def error_reply(error: ProtocolError) -> dict[str, object]:
    """The SPEC's error object."""
    return {"ok": False, "error": {"code": error.code, "message": error.message}}


def status_reply(
    *, node: str, version: str, statuses: Mapping[str, ScopeStatus]
) -> dict[str, object]:
    """The reply to ``status`` (and the first line of ``watch``)."""
    return {
        "ok": True,
        "node": node,
        "version": version,
        "scopes": {name: status.fields() for name, status in statuses.items()},
    }


def state_event(status: ScopeStatus) -> dict[str, object]:
    """One ``watch`` line: a scope's five fields after a change."""
    return {"event": "state", "scope": status.scope, **status.fields()}
