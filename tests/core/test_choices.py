"""core/choices.py: every allowed-value set once, and guard-run's copy agrees with it."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from guardd.cli import run
from guardd.cli.ctl.parse import build_parser
from guardd.config.load import parse_config_text
from guardd.core import choices
from guardd.errors import ConfigError


def test_guard_run_when_on_is_the_same_set() -> None:
    """guard-run spells WHEN_ON out (no typing at start); it must equal core.choices."""
    assert run.WHEN_ON == choices.WHEN_ON


def test_no_other_module_spells_out_a_set() -> None:
    """No module but core/choices.py writes a Literal of these values (one definition)."""
    sets = {
        frozenset(values)
        for values in (
            choices.STATES,
            choices.POLICIES,
            choices.WITHDRAW_AS,
            choices.WHEN_ON,
            choices.THEN,
        )
    }
    package = Path(choices.__file__).parents[1]
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Literal"
            ):
                inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                values = frozenset(e.value for e in inner if isinstance(e, ast.Constant))
                if values in sets:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_guardctl_then_choices_come_from_the_set() -> None:
    """guardctl on --then offers exactly core.choices.THEN."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    on = subparsers.choices["on"]
    then = next(a for a in on._actions if "--then" in a.option_strings)
    assert tuple(then.choices or ()) == choices.THEN


@pytest.mark.parametrize(
    ("yaml", "allowed"),
    [
        ("http: {policy: bogus}", choices.POLICIES),
        ("agent: {withdraw_as: bogus}", choices.WITHDRAW_AS),
    ],
)
def test_config_offers_exactly_the_set(yaml: str, allowed: tuple[str, ...]) -> None:
    """The validator rejects a value outside the set and names every allowed value."""
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml, source="c.yaml")
    assert f"expected one of {', '.join(allowed)}, got" in str(caught.value)
