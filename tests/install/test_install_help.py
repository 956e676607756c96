"""Help that teaches: every option and positional of every command has a line of help,
every command has examples, and the man page the wheel installs is the parser's."""

from __future__ import annotations

import argparse

from agent.cli import build_parser
from agent.manpage import render
from tests.install._install_testlib import REPO


def _parsers(parser: argparse.ArgumentParser, name: str = "calln-agent"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_and_positional_has_help() -> None:
    bare = [f"{name}: {'/'.join(a.option_strings) or a.dest}"
            for name, parser in _parsers(build_parser()) for a in parser._actions
            if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert bare == []


def test_every_command_has_examples() -> None:
    top = build_parser()
    commands = [(name, p) for name, p in _parsers(top) if name.count(" ") == 1]
    assert len(commands) >= 8
    missing = [name for name, p in commands if "examples:" not in (p.epilog or "")]
    assert missing == []


def test_spool_ids_say_where_they_come_from() -> None:
    spool = dict(_parsers(build_parser()))
    for name in ("calln-agent spool show", "calln-agent spool retry"):
        (id_action,) = [a for a in spool[name]._actions if a.dest == "id"]
        assert "spool list" in id_action.help


def test_man_page_is_the_parsers() -> None:
    committed = (REPO / "deploy" / "calln-agent.1").read_text()
    assert committed == render(build_parser()), \
        "help changed: python -m agent.manpage > deploy/calln-agent.1"
    for needle in (".SS \"calln\\-agent replay\"", "\\fB\\-\\-deadline\\-s\\fR", "install\\-service"):
        assert needle in committed
