"""calln-agent: the command line.

  inspect CAPTURE...            print one row (or --json record) per call
  replay CAPTURE... --out DIR   write a recording + JSON record per call
  replay CAPTURE... --deliver   spool every call and deliver it to the CallN API
  demo                          local receiver + bundled capture + delivery, then a table
  spool ... / receiver ...      see agent/deliver/commands.py
  run / check-config            the live capture daemon: agent/run.py
  install-service               the systemd service: agent/service.py
  show CAPTURE                  one call's SIP ladder, RTP quality and end reason: agent/show.py
  --version                     versions that decide output: agent/versions.py

Exit status: 0 success, 1 a run that finished with work pending or failed, 2 bad
usage / configuration / capture file.
"""

from __future__ import annotations

import os

# Before numpy is first imported: OpenBLAS starts a thread per core as it loads, which costs
# every command ~0.1 CPU-s (inspect of a small capture: 0.33 -> 0.21) while nothing in this
# process does BLAS work; the render workers have the same limit (recorder._start_forkserver).
# An operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from agent.config import Config, load_config  # noqa: E402
from agent.counters import new_counters  # noqa: E402
from agent.errors import AgentError  # noqa: E402
from agent.lifecycle import Interrupted, exit_status, terminate_like_ctrl_c  # noqa: E402
from agent.progress import Progress  # noqa: E402
from agent.summaries import delivery_line, skipped_input_line, without_recording_lines  # noqa: E402
from agent.textsafe import terminal_safe  # noqa: E402

if TYPE_CHECKING:
    from agent.calls.record import CallRecord

log = logging.getLogger("agent")


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _counters_summary(counters) -> str:
    keys = sorted(k for k in counters if counters[k])
    return ", ".join(f"{k}={counters[k]}" for k in keys)


def _close_summary(args: argparse.Namespace, counters) -> None:
    """Every counter with --counters; otherwise one line when input was skipped."""
    if args.counters:
        sys.stderr.write(_counters_summary(counters) + "\n")
    elif (line := skipped_input_line(counters)) is not None:
        sys.stderr.write(line + "\n")


def _captures(paths: list[str], stack: contextlib.ExitStack) -> list[str]:
    """The command's capture arguments, checked: a directory must hold captures, and ``-``
    is the capture on stdin (copied to a temporary file to its end, then replayed)."""
    from agent.capture.files import CAPTURE_SUFFIXES, iter_capture_paths

    out = []
    for path in paths:
        if path == "-":
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="calln-stdin-", suffix=".pcap"))
            shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
            tmp.flush()
            out.append(tmp.name)
            continue
        if Path(path).is_dir() and not iter_capture_paths([path]):
            raise AgentError(f"{path}: this directory holds no capture files "
                             f"(looked for names ending {', '.join(CAPTURE_SUFFIXES)})")
        out.append(path)
    return out


# ---------------------------------------------------------------------- inspect

def _codecs(names: list[str]) -> str:
    """``PCMU/8000``, ``telephone-event/8000`` -> ``PCMU+te``: names without clock rates,
    RFC 4733 events as ``te``; never cut."""
    short = [name.split("/", 1)[0] for name in names]
    return "+".join("te" if name.lower() == "telephone-event" else name for name in short) or "-"


def _dtmf(record: CallRecord) -> str:
    """Digits caller/callee. inspect decodes no audio: a call that negotiated no
    telephone-event may carry its digits in-band, and says so rather than show none."""
    caller, callee = record.get("callerdtmf") or "", record.get("destinationdtmf") or ""
    codecs = record.get("codecs_answered") or record.get("codecs_offered") or []
    if not caller and not callee and not any(c.lower().startswith("telephone-event") for c in codecs):
        return "in-band: not scanned"
    return terminal_safe(f"{caller or '-'}/{callee or '-'}")


def _row(record: CallRecord) -> str:
    from agent.media.quality import summary as quality_summary
    caller = record["callerphone"] or "?"
    if record["callername"]:
        caller = f'{record["callername"]} <{caller}>'
    callee = record["destinationphone"] or "?"
    if record["destinationname"]:
        callee = f'{record["destinationname"]} <{callee}>'
    # escaped before the column cut, so an escape is never cut into something live
    caller, callee = terminal_safe(caller), terminal_safe(callee)
    state = "answered" if record["answered"] else "unanswered"
    codecs = _codecs(record.get("codecs_answered") or record.get("codecs_offered") or [])
    media = f'{record["callermediaendpoint"] or "-"} <-> {record["destinationmediaendpoint"] or "-"}'
    return (f'{record["startdatetimeutc"]}  {caller:32.32} -> {callee:32.32} {state:10} '
            f'{terminal_safe(record["end_reason"] or "?"):18} {record["duration_ms"] / 1000:8.1f}s  '
            f'{codecs:16} {_dtmf(record):20} {quality_summary(record.get("quality")):26} {terminal_safe(media)}')


# inspect reads twice the frames per batch that replay and the daemon do: what it does per
# call and batch (sequencing into counters, voice-quality columns) is then paid half as
# often: 1.79 -> 1.71 and 1.84 -> 1.69 CPU-s on the 1.2 M-packet bench capture (medians of
# 7 and 6 runs, load 3.6-6); peak RSS 144-154 MiB either way (tshark -z sip,stat: 415 MiB).
INSPECT_READ_BYTES = 16 << 20


def cmd_inspect(args: argparse.Namespace) -> int:
    from agent.media.quality import observe_call
    from agent.media.srtp import observe_srtp
    from agent.pipeline.engine import MediaMode
    from agent.replay import replay

    config = _config(args)
    records: list[CallRecord] = []

    def on_finished(finished) -> None:
        if finished.media_log is not None:
            finished.media_log.unlink(missing_ok=True)
        observe_call(finished.record, counters, config.quality.mos_below)    # marks it below the threshold
        observe_srtp(finished.record, counters)
        records.append(finished.record)

    counters = new_counters()
    with contextlib.ExitStack() as stack:
        captures = _captures(args.captures, stack)
        with Progress(captures=captures, counters=counters, enabled=not args.quiet):
            engine = replay(captures, config, on_finished, counters=counters, progress=False,
                            media=MediaMode.COUNTERS, read_bytes=INSPECT_READ_BYTES)
        if args.json:
            from agent.sources import capture_files, file_spans
            stdin_names = {str(Path(c)): "-" for c, a in zip(captures, args.captures) if a == "-"}
            spans = file_spans(captures, stdin_names)
            for record in records:
                record["capture_files"] = capture_files(record["start_ts_ns"], spans)
    engine.close()
    records.sort(key=lambda r: (r["start_ts_ns"], r["callid"]))
    out = sys.stdout
    if args.json:
        for record in records:
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write(f"{'start (UTC)':19}  {'caller':32} -> {'callee':32} {'state':10} {'end':18} "
                  f"{'talk':>9}  {'codecs':16} {'dtmf (caller/callee)':20} {'quality (caller/callee)':26} media\n")
        for record in records:
            out.write(_row(record) + "\n")
        out.write(f"{len(records)} call(s)\n")
        undecodable = {k: v for k, v in engine.counters.items() if k.startswith("sip.undecodable") or k == "net.sctp"}
        if undecodable:
            out.write("signalling the agent cannot decode (calls it cannot see): "
                      + ", ".join(f"{k}={v}" for k, v in sorted(undecodable.items())) + "\n")
    _close_summary(args, engine.counters)
    return 0


# ---------------------------------------------------------------------- replay

def cmd_replay(args: argparse.Namespace) -> int:
    config = _config(args)
    if not args.out and not args.deliver:
        raise AgentError("replay needs --out DIR or --deliver")
    with contextlib.ExitStack() as stack:
        captures = _captures(args.captures, stack)
        if args.deliver:
            return _replay_deliver(args, config, captures)
        return _replay_out(args, config, captures)


def _replay_deliver(args: argparse.Namespace, config: Config, captures: list[str]) -> int:
    from agent.delivery import replay_and_deliver

    counters = new_counters()

    def delivered() -> tuple[int, int]:
        done = sum(counters.get(f"deliver.upload.{k}", 0) for k in ("delivered", "delivered_unconfirmed", "parked"))
        return done, counters.get("deliver.spool.enqueued", 0)

    with Progress(captures=captures, counters=counters, enabled=not args.quiet, delivered=delivered):
        status, summary = replay_and_deliver(captures, config, deadline_s=args.deadline_s, progress=False,
                                             workers=args.workers, counters=counters)
    print(delivery_line(counters, summary))
    if status:
        print(f"calln-agent: delivery not finished within {args.deadline_s:.0f} s; "
              "the spool keeps the rest (calln-agent spool list)", file=sys.stderr)
    _close_summary(args, counters)
    return status


def _replay_out(args: argparse.Namespace, config: Config, captures: list[str]) -> int:
    from agent.pipeline.assembly import build_pipeline
    from agent.private import make_private_dir
    from agent.recorder import write_to_directory
    from agent.replay import replay

    out_dir = Path(args.out)
    make_private_dir(out_dir, config.recording.group)   # 0700 (0750 for a named group) if new
    written: list[CallRecord] = []
    sink = write_to_directory(out_dir, config.recording.group)

    def on_rendered(rendered) -> None:
        sink(rendered)
        written.append(rendered.record)

    counters = new_counters()
    pipeline = build_pipeline(config, on_rendered, work=out_dir / ".work", counters=counters, out_dir=out_dir,
                              fmt=args.format or config.recording.format, workers=args.workers)
    recorder = pipeline.recorder
    with Progress(captures=captures, counters=counters, enabled=not args.quiet,
                  rendered=lambda: len(written)) as progress:
        try:
            engine = replay(captures, config, engine=pipeline.engine, progress=False)
            progress.reading_done()
        finally:
            recorder.close()
    engine.close()
    with_audio = sum(1 for r in written if r.get("recording"))
    print(f"{len(written)} call(s), {with_audio} recording(s) in {out_dir}")
    for line in without_recording_lines(sorted(written, key=lambda r: (r["start_ts_ns"], r["callid"]))):
        print(line)
    _close_summary(args, engine.counters)
    if args.counters:
        sys.stderr.write(f"recorder worker CPU: {recorder.worker_cpu_s:.2f} s\n")
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    return 0 if recorder.errors == 0 else 1


# ---------------------------------------------------------------------- main

class _VersionAction(argparse.Action):
    """``--version``: the agent and the libraries that decide its output (agent/versions.py)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from agent.versions import version_lines
        print("\n".join(version_lines()))
        parser.exit()


CAPTURES_HELP = ("pcap/pcapng files (.gz too), directories of them (rotated files are merged by "
                 "time), or - for a capture on stdin")

INSPECT_EPILOG = """examples:
  calln-agent inspect capture.pcap                  one row per call
  calln-agent inspect --json rotated/ | jq .callid  one JSON call record per line
  tcpdump -i eth1 -w - -c 100000 | calln-agent inspect -

In-band DTMF (tones in the audio) needs decoding, so inspect does not show it; replay does.
"""

REPLAY_EPILOG = """examples:
  calln-agent replay capture.pcap --out recordings/            recording + JSON record per call
  calln-agent replay rotated/ --out rec/ --format wav --workers 2
  calln-agent --config agent.toml replay capture.pcap --deliver    spool and upload to [api] url
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calln-agent", description="CallN passive call recorder: rebuilds calls from SIP/RTP "
        "seen on a tap or in captures, records them and delivers them to the CallN API.",
        epilog="examples:\n  calln-agent demo\n  calln-agent inspect capture.pcap\n"
               "  calln-agent --config /etc/calln-agent/agent.toml check-config\n\n"
               "exit status: 0 success, 1 finished with work pending or failed, "
               "2 bad usage, configuration or capture file, 130 / 143 stopped by SIGINT / SIGTERM "
               "(what was finished is kept)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and those of PyAV/FFmpeg, LAME and numpy, then exit")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration file (default: $CALLN_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log call events")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print the calls in captures (no audio is decoded)",
                       description="Print one row per call found in captures, or one JSON call "
                       "record per line. Nothing is written to disk.",
                       epilog=INSPECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help=CAPTURES_HELP)
    p.add_argument("--json", action="store_true", help="one JSON call record per line instead of the table")
    p.add_argument("--counters", action="store_true",
                   help="print every skip/drop counter on stderr at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("replay", help="replay captures into recordings or the CallN API",
                       description="Replay captures through the agent exactly as live capture runs: "
                       "--out writes a recording and a JSON record per call, --deliver spools every "
                       "call and uploads it to the configured API.",
                       epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help=CAPTURES_HELP)
    p.add_argument("--out", metavar="DIR", help="write recordings + JSON records here")
    p.add_argument("--deliver", action="store_true",
                   help="spool every call and deliver it to [api] url (needs a configuration)")
    p.add_argument("--format", choices=("wav", "mp3"), help="--out recording format (default: [recording] format)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="encoder processes (default: [recording] workers, else one per CPU)")
    p.add_argument("--deadline-s", type=float, default=600.0, metavar="SECONDS",
                   help="--deliver: stop waiting for uploads after this long; the spool keeps the "
                        "rest (default: 600)")
    p.add_argument("--counters", action="store_true",
                   help="print every skip/drop counter and the encoders' CPU time on stderr at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_replay)

    from agent.deliver.commands import register as register_delivery
    register_delivery(sub)
    from agent.demo import register as register_demo
    register_demo(sub)
    from agent.run import register as register_run    # live capture daemon: run, check-config
    register_run(sub)
    from agent.service import register as register_service
    register_service(sub)
    from agent.show import register as register_show      # one call's SIP ladder and RTP quality
    register_show(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous_sigterm = terminate_like_ctrl_c()
    try:
        return int(args.func(args) or 0)
    except Interrupted as exc:
        print(f"calln-agent: {exc}", file=sys.stderr)
        return exit_status(exc.signum)
    except AgentError as exc:
        print(f"calln-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:        # a signal outside the loops that poll for a stop
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"calln-agent: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return exit_status(signum)
    except BrokenPipeError:
        return 0
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
