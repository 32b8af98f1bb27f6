"""The fleet's pure model: node records and what `on --fleet --wait` concludes."""

from __future__ import annotations

from guardd.fleet.model import (
    DrainWait,
    FleetView,
    NodeRecord,
    NodeScope,
    confirmed,
    decode_node,
)


def rec(
    name: str,
    state: str = "on",
    jobs: int = 0,
    revision: int | None = 10,
    *,
    instance: str = "",
    host: str = "",
    pid: int = 0,
    left: bool = False,
) -> NodeRecord:
    return NodeRecord(
        node=name,
        scopes={"shop": NodeScope(state, jobs, revision)},
        instance=instance,
        host=host,
        pid=pid,
        left=left,
    )


def test_confirmation_needs_on_no_jobs_and_a_count_at_the_flag_revision() -> None:
    """Only `on`, zero jobs, counted at the flag's revision or later confirms."""
    assert confirmed(rec("a"), "shop", 10)
    assert confirmed(rec("a", revision=12), "shop", 10)
    assert not confirmed(rec("a", revision=9), "shop", 10)
    assert not confirmed(rec("a", revision=None), "shop", 10)
    assert not confirmed(rec("a", state="draining", jobs=1), "shop", 10)
    assert not confirmed(rec("a", jobs=1), "shop", 10)
    assert confirmed(NodeRecord("a", {}), "shop", 10)  # no such scope there


def test_record_round_trip_keeps_instance_and_left() -> None:
    """encode/decode keep the holder's identity and the clean-leave mark."""
    record = rec("a", instance="i1", host="h", pid=7, left=True)
    assert decode_node("a", record.encode()) == record
    assert decode_node("a", b'{"scopes":{}}') == NodeRecord("a", {})


def test_drain_wait_tells_clean_leave_from_lost() -> None:
    """Key gone after a `left` record: done; gone without one: lost; back: waited for."""
    wait = DrainWait("shop", 10)
    wait.seed([rec("a", "draining", 1, 9), rec("b", "draining", 1, 9), rec("c", "off", 0, 9)])
    assert wait.pending() == ["a", "b", "c"]
    wait.put(NodeRecord("a", {}, left=True))
    wait.delete("a")
    wait.delete("b")  # lease expired
    assert wait.pending() == ["c"] and wait.lost == {"b"} and wait.left == {"a"}
    wait.put(rec("c"))
    assert wait.finished() and wait.lost == {"b"}
    wait.put(rec("b", "draining", 1, 11))  # b is back: not lost, but pending
    assert wait.pending() == ["b"] and not wait.lost
    wait.put(rec("b", revision=11))
    assert wait.finished() and not wait.lost


def test_drain_wait_confirmation_is_kept_and_joiners_are_waited_for() -> None:
    """A confirmed node that later expires is not lost; a node that joins is waited for."""
    wait = DrainWait("shop", 10)
    wait.seed([rec("a")])
    wait.delete("a")
    assert wait.finished() and not wait.lost
    wait.put(rec("d", "draining", 2, 10))
    assert wait.pending() == ["d"]


def test_a_node_that_has_not_applied_the_fleet_flag_yet_does_not_count_as_serving() -> None:
    """During a fleet flip, another node still `off` at an older revision is on its way
    into maintenance: it does not make this node withdraw (no dark fleet)."""
    view = FleetView(ever_connected=True, connected=True)
    view.nodes = {"a": rec("a", "on", 0, 20), "b": rec("b", "off", 0, 12)}
    assert view.others_serving("shop", "a") is True  # a local flag: b serves
    assert view.others_serving("shop", "a", {"shop": 20}) is False  # b is flipping too
    view.nodes["b"] = rec("b", "off", 0, 20)  # b applied it and is still off (say, a
    assert view.others_serving("shop", "a", {"shop": 20}) is True  # local override)
    view.nodes["c"] = NodeRecord("c", {"shop": NodeScope("off", 0, 3)})
    assert view.others_serving("shop", "a", {"default": 25}) is True  # c has no default
    assert FleetView().others_serving("shop", "a", {"shop": 1}) is None


def test_a_member_without_a_live_key_is_lost_from_the_start() -> None:
    """A node that joined and never left cleanly but has no live key at the write is
    lost at once; if it comes back it must confirm."""
    wait = DrainWait("shop", 10)
    wait.seed([rec("a")], members=["a", "b"])
    assert wait.finished() and wait.lost == {"b"}
    wait.put(rec("b", "draining", 1, 11))
    assert wait.pending() == ["b"] and not wait.lost
