"""The daemon starts, answers ping, and stops cleanly."""

from tests.helpers import Guardd


def test_ping_and_clean_stop(guardd: Guardd) -> None:
    """guardd answers ping on its control socket and exits 0 on SIGTERM."""
    assert guardd.request({"op": "ping"}) == {"ok": True}
    code, err = guardd.stop()
    assert code == 0, err
