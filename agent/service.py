"""``calln-agent install-service``: the live capture service, installed as documented.

One command, as root, does what deploy/calln-agent.service needs:

- the system user and group ``calln`` (``useradd --system``, no login shell);
- ``/etc/calln-agent`` 0750 root:calln with ``agent.toml`` 0640 root:calln (the example,
  every default shown) and ``secret.env`` 0600 root (``CALLN_PASSWORD=``), never
  overwriting what an operator already wrote;
- the spool ``/var/spool/calln-agent`` 0700 calln:calln (the unit's only writable path);
- ``/usr/local/bin/calln-agent`` (the unit's ExecStart) linked to this install's
  executable, and ``man calln-agent`` (the unit's Documentation=);
- the unit in ``/etc/systemd/system``, then ``systemctl enable``.

``--root DIR`` does all of it inside DIR (useradd --prefix, systemctl --root): the tests
install into a scratch root; an image builder can too. Each step says what it did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Callable

from agent.errors import AgentError

USER = "calln"
CONFIG_DIR = "/etc/calln-agent"
SPOOL_DIR = "/var/spool/calln-agent"
BIN_LINK = "/usr/local/bin/calln-agent"
MAN_PAGE = "/usr/local/share/man/man1/calln-agent.1"
UNIT_PATH = "/etc/systemd/system/calln-agent.service"
UNIT = "calln-agent.service"
# The unit runs with PrivateTmp= and ProtectHome=: an executable below these is invisible to it.
HIDDEN_FROM_SERVICE = ("/tmp/", "/var/tmp/", "/home/", "/root/", "/run/user/")
SECRET_TEMPLATE = "# The CallN API password of [api] username, read by systemd (mode 0600).\nCALLN_PASSWORD=\n"

EPILOG = """examples:
  calln-agent install-service                    as root: user, directories, config, unit, enable
  calln-agent install-service --no-enable        install only; systemctl enable --now calln-agent later
  calln-agent install-service --root /srv/image  into an image or a scratch root

Then set [api] url and username (and [capture] interfaces) in /etc/calln-agent/agent.toml,
the password in /etc/calln-agent/secret.env, check with
  calln-agent --config /etc/calln-agent/agent.toml check-config
and start with: systemctl start calln-agent
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("install-service", help="install the live capture service (systemd; as root)",
                              description="Create the calln user, /etc/calln-agent with the example "
                              "configuration, the spool directory, link the executable and the man page, "
                              "install the systemd unit and enable it. Existing files are kept.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/", metavar="DIR",
                   help="install into this root directory instead of / (default: /)")
    p.add_argument("--executable", metavar="PATH",
                   help="the calln-agent the service runs, as a path inside --root (default: the "
                        "calln-agent of this installation)")
    p.add_argument("--no-enable", action="store_true", help="install the unit but do not enable it")
    p.set_defaults(func=cmd_install_service)


def _this_executable() -> Path:
    """The ``calln-agent`` of the environment this Python runs in (a venv's bin/)."""
    exe = Path(sys.executable).parent / "calln-agent"
    if not exe.is_file():
        found = shutil.which("calln-agent")
        if found is None:
            raise AgentError("calln-agent is not installed in this Python's environment "
                             "(bash scripts/setup.sh, or pip install the package)")
        exe = Path(found)
    return exe.resolve()


def _ids(root: Path, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` in ROOT/etc/passwd (not the host's, when ROOT is a scratch root)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise KeyError(user)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AgentError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def install_service(root: Path, *, executable: Path, enable: bool = True,
                    say: Callable[[str], None] = print) -> None:
    """Install the service into ``root`` (see the module docstring). Idempotent.
    ``executable``: the calln-agent the unit runs, as a path inside ``root``."""
    def at(path: str) -> Path:
        return root / path.lstrip("/")

    if str(executable).startswith(HIDDEN_FROM_SERVICE):
        raise AgentError(f"{executable} is below {', '.join(HIDDEN_FROM_SERVICE)}, which the service "
                         "cannot see (PrivateTmp=, ProtectHome=); install the agent elsewhere, e.g. a "
                         "checkout in /opt/calln-agent with bash scripts/setup.sh")
    bundled = files("agent.bundled")

    try:
        uid, gid = _ids(root, USER)
    except KeyError:
        prefix = [] if root == Path("/") else ["--prefix", str(root)]
        _run(["useradd", *prefix, "--system", "--user-group", "--home-dir", SPOOL_DIR,
              "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
        uid, gid = _ids(root, USER)
        say(f"created system user {USER} (uid {uid})")

    for path, mode, owner in ((CONFIG_DIR, 0o750, (0, gid)), (SPOOL_DIR, 0o700, (uid, gid))):
        d = at(path)
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, *owner)
        os.chmod(d, mode)
        say(f"{path}: mode {mode:04o}, owner {'root' if owner[0] == 0 else USER}:{USER}")

    for path, content, mode, owner in (
            (f"{CONFIG_DIR}/agent.toml", (bundled / "agent.example.toml").read_text(), 0o640, (0, gid)),
            (f"{CONFIG_DIR}/secret.env", SECRET_TEMPLATE, 0o600, (0, 0))):
        f = at(path)
        if f.exists():
            say(f"{path}: kept (already there)")
            continue
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as out:
            out.write(content)
        os.chown(f, *owner)
        say(f"{path}: written, mode {mode:04o} (edit it)")

    link = at(BIN_LINK)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and Path(os.readlink(link)) == executable):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(executable)
        say(f"{BIN_LINK} -> {executable}")

    from agent.cli import build_parser
    from agent.manpage import render
    man = at(MAN_PAGE)
    man.parent.mkdir(parents=True, exist_ok=True)
    man.write_text(render(build_parser()))
    say(f"{MAN_PAGE}: man calln-agent")

    unit = at(UNIT_PATH)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text((bundled / UNIT).read_text())
    os.chmod(unit, 0o644)
    say(f"{UNIT_PATH}: installed")

    if root == Path("/") and Path("/run/systemd/system").is_dir():
        _run(["systemctl", "daemon-reload"])
    if enable:
        _run(["systemctl", *([] if root == Path("/") else [f"--root={root}"]), "enable", UNIT])
        say(f"{UNIT}: enabled (starts at boot)")


def cmd_install_service(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if os.geteuid() != 0:
        raise AgentError("install-service needs root (it creates a user and writes /etc)")
    executable = Path(args.executable) if args.executable else _this_executable()
    install_service(root, executable=executable, enable=not args.no_enable)
    print("\nnext: set [api] url, username and [capture] interfaces in "
          f"{CONFIG_DIR}/agent.toml, CALLN_PASSWORD in {CONFIG_DIR}/secret.env, then\n"
          f"  calln-agent --config {CONFIG_DIR}/agent.toml check-config && systemctl start calln-agent")
    return 0
