"""calln-agent: the command line.

  inspect CAPTURE...            print one row (or --json record) per call
  replay CAPTURE... --out DIR   write a recording + JSON record per call
  replay CAPTURE... --deliver   spool every call and deliver it to the CallN API
  demo                          local receiver + bundled capture + delivery, then a table
  spool ... / receiver ...      see agent/deliver/commands.py

Exit status: 0 success, 1 a run that finished with work pending or failed, 2 bad
usage / configuration / capture file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.errors import AgentError

log = logging.getLogger("agent")


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _counters_summary(counters) -> str:
    keys = sorted(k for k in counters if counters[k])
    return ", ".join(f"{k}={counters[k]}" for k in keys)


# ---------------------------------------------------------------------- inspect

def _row(record: dict[str, Any]) -> str:
    caller = record["callerphone"] or "?"
    if record["callername"]:
        caller = f'{record["callername"]} <{caller}>'
    callee = record["destinationphone"] or "?"
    if record["destinationname"]:
        callee = f'{record["destinationname"]} <{callee}>'
    state = "answered" if record["answered"] else "unanswered"
    codecs = ",".join(record.get("codecs_answered") or record.get("codecs_offered") or []) or "-"
    media = f'{record["callermediaendpoint"] or "-"} <-> {record["destinationmediaendpoint"] or "-"}'
    return (f'{record["startdatetimeutc"]}  {caller:32.32} -> {callee:32.32} {state:10} '
            f'{record["end_reason"]:18} {record["duration_ms"] / 1000:8.1f}s  {codecs:24.24} {media}')


def cmd_inspect(args: argparse.Namespace) -> int:
    from agent.replay import replay

    config = _config(args)
    records: list[dict[str, Any]] = []

    def on_finished(finished) -> None:
        if finished.media_log is not None:
            finished.media_log.unlink(missing_ok=True)
        records.append(finished.record)

    engine = replay(args.captures, config, on_finished, progress=not args.quiet, keep_audio=False)
    engine.close()
    records.sort(key=lambda r: (r["start_ts_ns"], r["callid"]))
    out = sys.stdout
    if args.json:
        for record in records:
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write(f"{'start (UTC)':19}  {'caller':32} -> {'callee':32} {'state':10} {'end':18} "
                  f"{'talk':>9}  {'codecs':24} media\n")
        for record in records:
            out.write(_row(record) + "\n")
        out.write(f"{len(records)} call(s)\n")
        undecodable = {k: v for k, v in engine.counters.items() if k.startswith("sip.undecodable") or k == "net.sctp"}
        if undecodable:
            out.write("signalling the agent cannot decode (calls it cannot see): "
                      + ", ".join(f"{k}={v}" for k, v in sorted(undecodable.items())) + "\n")
    if args.counters:
        sys.stderr.write(_counters_summary(engine.counters) + "\n")
    return 0


# ---------------------------------------------------------------------- replay

def cmd_replay(args: argparse.Namespace) -> int:
    from agent.recorder import Recorder, write_to_directory
    from agent.replay import replay

    config = _config(args)
    if not args.out and not args.deliver:
        raise AgentError("replay needs --out DIR or --deliver")
    if args.deliver:
        from agent.delivery import replay_and_deliver
        status, summary = replay_and_deliver(args.captures, config, deadline_s=args.deadline_s,
                                             progress=not args.quiet, workers=args.workers)
        print("spool: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.items())))
        if status:
            print(f"calln-agent: delivery not finished within {args.deadline_s:.0f} s; "
                  "the spool keeps the rest (calln-agent spool list)", file=sys.stderr)
        return status
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    sink = write_to_directory(out_dir)

    def on_rendered(rendered) -> None:
        sink(rendered)
        written.append(rendered.record)

    recorder = Recorder(config.recording, out_dir, on_rendered, fmt=args.format, workers=args.workers)
    try:
        engine = replay(args.captures, config, recorder, progress=not args.quiet,
                        workdir=out_dir / ".work", defer_media=True)
    finally:
        recorder.close()
    engine.close()
    with_audio = sum(1 for r in written if r.get("recording"))
    print(f"{len(written)} call(s), {with_audio} recording(s) in {out_dir}")
    if args.counters:
        sys.stderr.write(_counters_summary(engine.counters) + "\n")
        sys.stderr.write(f"recorder worker CPU: {recorder.worker_cpu_s:.2f} s\n")
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    return 0 if recorder.errors == 0 else 1


# ---------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calln-agent", description="CallN passive call recorder")
    parser.add_argument("--config", help="TOML configuration file (default: $CALLN_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log call events")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="print the calls in captures")
    p.add_argument("captures", nargs="+", help="pcap/pcapng files (gz ok) or directories")
    p.add_argument("--json", action="store_true", help="one JSON call record per line")
    p.add_argument("--counters", action="store_true", help="print skip/drop counters on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("replay", help="replay captures into recordings or the CallN API")
    p.add_argument("captures", nargs="+")
    p.add_argument("--out", help="write recordings + JSON records here")
    p.add_argument("--deliver", action="store_true", help="spool and deliver to the configured API")
    p.add_argument("--format", choices=("wav", "mp3"), help="recording format (default: config)")
    p.add_argument("--workers", type=int, help="encoder processes (default: config / CPUs)")
    p.add_argument("--deadline-s", type=float, default=600.0, help="--deliver: give up after this long")
    p.add_argument("--counters", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_replay)

    from agent.deliver.commands import register as register_delivery
    register_delivery(sub)
    from agent.demo import register as register_demo
    register_demo(sub)
    from agent.run import register as register_run    # live capture daemon: run, check-config
    register_run(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except AgentError as exc:
        print(f"calln-agent: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
