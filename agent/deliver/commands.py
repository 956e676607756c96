"""The operator commands of delivery: ``spool`` (list / show / retry) and ``receiver``.

Owns only argument parsing and printing; the work is in spool.py and receiver.py.
The lead's cli.py calls ``register(subparsers)``; each handler is ``handler(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from agent.config import load_config
from agent.errors import AgentError
from agent.textsafe import terminal_safe


SPOOL_EPILOG = """examples:
  calln-agent --config /etc/calln-agent/agent.toml spool list      one line per call in the spool
  calln-agent spool --dir /var/spool/calln-agent show 1a2b3c4d     state and record of one call
  calln-agent spool retry --parked                                 every parked call back in the queue
  calln-agent spool delivered --since 24h                          what was uploaded in the last day

A call's ID is the first column of `spool list` (also in `spool list --json` as "id").
"""

RECEIVER_EPILOG = """examples:
  calln-agent receiver                                   https://127.0.0.1:8443, calls in ./received
  calln-agent receiver --port 9443 --password s3cret --dir /tmp/rx
  calln-agent receiver --fail-rate 0.2 --drop-rate 0.1   a faulty server, to test delivery

Point an agent at it with [api] url = the printed URL, [api] ca_bundle = the printed CA file,
username and CALLN_PASSWORD as given (or printed).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    sp = subparsers.add_parser("spool", help="inspect the upload spool and retry parked calls",
                               description="The durable upload queue: list, show and retry spooled calls.",
                               epilog=SPOOL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--dir", default=None, help="spool directory (default: [spool] dir of the configuration)")
    ssub = sp.add_subparsers(dest="spool_cmd", required=True, metavar="ACTION")
    p = ssub.add_parser("list", help="one line per spooled call (ID, state, start, numbers, reason)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = ssub.add_parser("show", help="state and record of one call")
    p.add_argument("id", help="the call's ID: the first column of `calln-agent spool list`")
    p = ssub.add_parser("retry", help="put a parked call (or all with --parked) back in the queue")
    p.add_argument("id", nargs="?", help="the call's ID: the first column of `calln-agent spool list`")
    p.add_argument("--parked", action="store_true", help="retry every parked call")
    p = ssub.add_parser("delivered", help="calls the ledger records as delivered: when, numbers, "
                                          "start time, confirmed or not")
    p.add_argument("--since", metavar="WHEN",
                   help="only calls delivered since: a duration back from now (90m, 24h, 7d) or a "
                        "UTC date/time (2026-12-04, 2026-12-04T09:30)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=spool_command)

    rp = subparsers.add_parser("receiver", help="run a local CallN-compatible HTTPS receiver",
                               description="A local server that speaks the CallN upload API "
                               "(HTTPS with its own self-signed CA) and stores what it receives.",
                               epilog=RECEIVER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    rp.add_argument("--port", type=int, default=8443, help="HTTPS port (default: 8443; 0 = any free port)")
    rp.add_argument("--plain-port", type=int, default=None,
                    help="also listen for plain HTTP here (answers 406 SSL must be used)")
    rp.add_argument("--dir", default="./received", help="where completed calls are stored (default: ./received)")
    rp.add_argument("--username", default="agent", help="the API user it accepts (default: agent)")
    rp.add_argument("--password", default=None,
                    help="the password it accepts (default: $CALLN_PASSWORD, else a random one, printed)")
    rp.add_argument("--cert-dir", default=None, help="where its CA and certificate are kept (default: DIR/certs)")
    rp.add_argument("--fail-rate", type=float, default=0.0, metavar="FRACTION",
                    help="fraction of requests answered 500 (default: 0)")
    rp.add_argument("--drop-rate", type=float, default=0.0, metavar="FRACTION",
                    help="fraction of connections closed unanswered (default: 0)")
    rp.add_argument("--slow-ms", type=int, default=0, metavar="MS", help="delay before each answer (default: 0)")
    rp.add_argument("--quota", type=int, default=None, metavar="N", help="answer 403 once N calls are stored")
    rp.add_argument("--expire-after-chunks", type=int, default=0, metavar="N",
                    help="a call's temporary id expires (404) after N chunks, once per call (default: never)")
    rp.add_argument("--fail-first", type=int, default=0, metavar="N",
                    help="answer the first N requests 500 (default: 0)")
    rp.add_argument("--unknown-phone", action="append", default=[], metavar="NUMBER",
                    help="answer 405 for this number (repeatable)")
    rp.add_argument("--mp3-only", action="store_true", help="refuse audio/wav like the guide's text")
    rp.set_defaults(func=receiver_command)


def _spool_from_args(args: argparse.Namespace):
    from agent.deliver.spool import Spool
    cfg = load_config(getattr(args, "config", None))
    return Spool(_spool_dir(args), retention_days=cfg.spool.retention_days,
                 ledger_days=cfg.spool.ledger_days)


def _spool_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or load_config(getattr(args, "config", None)).spool.dir)


def _utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def delivered_command(args: argparse.Namespace, spool_dir: Path) -> int:
    from agent.deliver.ledger_view import delivered_calls, parse_since
    try:
        since = parse_since(args.since, time.time()) if args.since else None
    except ValueError as exc:
        print(f"calln-agent: error: {exc}", file=sys.stderr)
        return 2
    calls = delivered_calls(spool_dir, since)
    for call in calls:
        record = call.record or {}
        row = {"delivered_at": _utc(call.delivered_at_wall), "id": call.id,
               "state": call.state or "", "startdatetimeutc": record.get("startdatetimeutc", ""),
               "callerphone": record.get("callerphone", ""),
               "destinationphone": record.get("destinationphone", "")}
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        elif call.record is None:
            print(f"{row['delivered_at']}  {call.id}  (written by an older version: no summary)")
        else:
            print(terminal_safe(f"{row['delivered_at']}  {call.id}  {row['state']:<22} "
                                f"{row['startdatetimeutc']:<19}  {row['callerphone']} -> "
                                f"{row['destinationphone']}"))
    print(f"# spool {spool_dir}: {len(calls)} call(s) delivered"
          + (f" since {_utc(since)}" if since is not None else ""),
          file=sys.stderr)
    return 0


def spool_command(args: argparse.Namespace) -> int:
    spool_dir = _spool_dir(args)
    if args.spool_cmd == "delivered" and spool_dir.is_dir():
        return delivered_command(args, spool_dir)
    if not spool_dir.is_dir():
        # a read never creates a spool (opening one makes its 256 ledger directories)
        print(f"# spool {spool_dir}: does not exist (nothing was ever spooled here; "
              "--dir or [spool] dir names another)", file=sys.stderr)
        return 0 if args.spool_cmd == "list" else 1
    try:
        spool = _spool_from_args(args)
        if args.spool_cmd == "list":
            for e in spool.list():
                if args.json:
                    print(json.dumps({"id": e.id, "state": e.state, "reason": e.reason,
                                      "callerphone": e.record.get("callerphone", ""),
                                      "destinationphone": e.record.get("destinationphone", ""),
                                      "startdatetimeutc": e.record.get("startdatetimeutc", ""),
                                      "next_chunk": e.next_chunk, "total_chunks": e.total_chunks}))
                else:
                    print(terminal_safe(
                        f"{e.id}  {e.state:<22} {e.record.get('startdatetimeutc', ''):<19}  "
                        f"{e.record.get('callerphone', '')} -> {e.record.get('destinationphone', '')}"
                        f"{'  ' + e.reason if e.reason else ''}"))
            summary = spool.summary()
            print(f"# spool {spool.dir}: " + (", ".join(f"{k}={v}" for k, v in sorted(summary.items()))
                                              if summary else "empty"), file=sys.stderr)
            return 0
        if args.spool_cmd == "show":
            e = spool.get(args.id)
            print(json.dumps({"state": e.raw_state, "record": e.record}, indent=2, ensure_ascii=False))
            return 0
        if args.spool_cmd == "retry":
            if args.parked:
                print(f"{spool.retry_parked()} parked call(s) back in the queue")
                return 0
            if not args.id:
                print("spool retry: give an ID or --parked", file=sys.stderr)
                return 2
            spool.retry(args.id)
            print(f"{args.id} back in the queue")
            return 0
    except KeyError as exc:
        print(f"no such call in the spool: {exc.args[0]}", file=sys.stderr)
        return 1
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


def receiver_command(args: argparse.Namespace) -> int:
    import os

    import secrets

    from agent.receiver import Faults, ReceiverServer
    password = args.password if args.password is not None else os.environ.get("CALLN_PASSWORD")
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(12)
    faults = Faults(fail_rate=args.fail_rate, drop_rate=args.drop_rate, slow_ms=args.slow_ms,
                    fail_first=args.fail_first, expire_after_chunks=args.expire_after_chunks)
    rx = ReceiverServer(Path(args.dir), host=args.host, port=args.port, username=args.username,
                        password=password, cert_dir=Path(args.cert_dir) if args.cert_dir else None,
                        plain_port=args.plain_port, quota=args.quota,
                        unknown_phones=tuple(args.unknown_phone), accept_wav=not args.mp3_only,
                        faults=faults)
    url, ca = rx.start()
    print(f"CallN receiver on {url}  (CA certificate: {ca}; calls stored in {rx.dir})", flush=True)
    if generated:
        print(f"user {args.username}, generated password: {password}  "
              "(--password or $CALLN_PASSWORD sets one)", flush=True)
    if rx.plain_url:
        print(f"plain HTTP (answers 406) on {rx.plain_url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.is_set():
        time.sleep(0.2)
    rx.stop()
    print(f"stopped; {len(rx.stored_calls())} call(s) stored", flush=True)
    return 0
