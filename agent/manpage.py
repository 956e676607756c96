"""The calln-agent(1) man page, built from the command line parser itself.

Every option, positional, description and example of ``calln-agent --help`` and each
subcommand's ``--help`` goes into the page, so the two cannot disagree.
``python -m agent.manpage > deploy/calln-agent.1`` writes the page the wheel installs
(share/man/man1); tests/install checks the committed page is what this renders.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent import __version__


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starts a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            takes_value = action.nargs != 0
            metavar = action.metavar or action.dest.upper()
            names = ", ".join(f"\\fB{_roff(o)}\\fR" + (f" \\fI{_roff(str(metavar))}\\fR" if takes_value else "")
                              for o in action.option_strings)
        else:
            names = f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        help_text = action.help or ""
        if action.choices and not isinstance(action.choices, dict):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        out += [".TP", names, _roff(help_text)]
    return out


def _section(name: str, parser: argparse.ArgumentParser, depth: int) -> list[str]:
    lines = [f".SS \"{_roff(name)}\""]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines += [".nf", _roff(usage), ".fi"]
    if parser.description:
        lines += [".PP", _roff(parser.description)]
    lines += _options(parser)
    if parser.epilog:
        lines += [".PP", ".nf", _roff(parser.epilog.strip()), ".fi"]
    for sub_name, sub in _subcommands(parser):
        lines += _section(f"{name} {sub_name}", sub, depth + 1)
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    """The page; usage lines are wrapped at 80 columns whatever the terminal, so the page
    is the same wherever it is built."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        return _render(parser)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def _render(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    lines = [f'.TH {prog.upper()} 1 "" "{prog} {__version__}" "User Commands"',
             ".SH NAME", f"{prog} \\- {_roff(parser.description or '').split(':')[0]}",
             ".SH SYNOPSIS", ".nf", _roff(parser.format_usage().removeprefix("usage: ").strip()), ".fi"]
    if parser.description:
        lines += [".SH DESCRIPTION", _roff(parser.description)]
    lines += [".SH OPTIONS", *_options(parser), ".SH COMMANDS"]
    for name, sub in _subcommands(parser):
        lines += _section(f"{prog} {name}", sub, 1)
    if parser.epilog:
        lines += [".SH EXAMPLES", ".nf", _roff(parser.epilog.strip()), ".fi"]
    lines += [".SH FILES", ".TP", "\\fI/etc/calln\\-agent/agent.toml\\fR",
              "the configuration (\\fB$CALLN_CONFIG\\fR); every key and its default: the example "
              "the package ships, \\fBagent/bundled/agent.example.toml\\fR",
              ".TP", "\\fI/etc/calln\\-agent/secret.env\\fR", "\\fBCALLN_PASSWORD=\\fR for the service (mode 0600)",
              ".TP", "\\fI/var/spool/calln\\-agent\\fR", "the durable upload queue ([spool] dir, mode 0700)",
              ".SH SEE ALSO", "\\fBsystemctl\\fR(1), \\fBtcpdump\\fR(8), \\fBtshark\\fR(1)"]
    return "\n".join(lines) + "\n"


def main() -> int:
    from agent.cli import build_parser
    sys.stdout.write(render(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
