"""The fleet agent's flip grace, without etcd (its pure part)."""

from __future__ import annotations

import time

from guardd.config.load import build_config
from guardd.daemon.fleet_agent import FLIP_GRACE, FleetAgent


def agent(policy: str) -> FleetAgent:
    config = build_config(
        {
            "scopes": {"shop": None},
            "lock_dir": "/nonexistent/lock",
            "runtime_dir": "/nonexistent/run",
            "http": {"listen": [], "policy": policy},
            "fleet": {"endpoints": ["http://127.0.0.1:1"], "lease_ttl": 2},
        },
        source=None,
    )

    async def written(scope: str) -> None:
        del scope

    return FleetAgent(
        config=config,
        statuses=dict,
        counted_revisions=dict,
        mirror_written=written,
        view_changed=lambda: None,
    )


def test_flip_grace_lasts_until_the_records_are_followed_again() -> None:
    """A fleet flag older than FLIP_GRACE still counts as flipping while this node
    does not follow the records yet (a slow read during an etcd election would
    otherwise leave every node trusting pre-flip records: dark); not after."""
    fleet = agent("fleet")
    fleet.fleet_flags["shop"] = b"{}"
    fleet.flag_revisions["shop"] = 7
    fleet.flag_seen["shop"] = time.monotonic() - FLIP_GRACE - 5
    assert fleet.flipping("shop") == {"shop": 7}  # records not followed yet
    fleet.nodes_fresh = True
    assert fleet.flipping("shop") == {}  # followed: the grace is over
    fleet.flag_seen["shop"] = time.monotonic()
    assert fleet.flipping("shop") == {"shop": 7}  # a flag that just came
    withdraw = agent("withdraw")  # the grace only matters to the fleet policy
    withdraw.fleet_flags["shop"] = b"{}"
    withdraw.flag_revisions["shop"] = 7
    withdraw.flag_seen["shop"] = time.monotonic() - FLIP_GRACE - 5
    assert withdraw.flipping("shop") == {}
