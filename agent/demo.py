"""``calln-agent demo``: the whole main job on an embedded default.

Starts the local CallN-compatible receiver (HTTPS, self-signed CA) on loopback,
replays a bundled capture through the agent into a fresh spool, delivers every
call through the real upload client, and prints what the receiver stored.
Nothing leaves the machine. The bundled captures are package data (``agent.bundled``),
so the demo works from any directory once the package is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shutil
import tempfile
import wave
from importlib.resources import as_file, files
from pathlib import Path

from agent.config import load_config

# in the package as agent/bundled/<name>; their source of truth is pcaps/ in the checkout
DEFAULT_CAPTURES = ("multi_call.pcap", "sipp_g711a.pcap")

EPILOG = """examples:
  calln-agent demo                          bundled captures, MP3, files removed afterwards
  calln-agent demo --keep /tmp/calln-demo   keep what the receiver stored, and the spool
  calln-agent demo --format wav my.pcap     your own capture, delivered as WAV
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="replay a bundled capture and deliver it to a local receiver",
                              description="Start a local CallN-compatible HTTPS receiver on 127.0.0.1, "
                              "replay captures through the agent, deliver every call with the real "
                              "upload client and print what the receiver stored. Nothing leaves the machine.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="*",
                   help=f"pcap/pcapng files or directories (default: the bundled {', '.join(DEFAULT_CAPTURES)})")
    p.add_argument("--format", choices=("mp3", "wav"), default="mp3", help="upload format (default: mp3)")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the receiver's files and the spool in DIR (default: a temporary "
                        "directory, removed at the end)")
    p.set_defaults(func=cmd_demo)


def _audio_seconds(audio: bytes, content_type: str) -> float:
    if content_type == "audio/wav":
        with wave.open(io.BytesIO(audio)) as w:
            return w.getnframes() / w.getframerate()
    import av
    with av.open(io.BytesIO(audio)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / (stream.rate or 1)


def cmd_demo(args: argparse.Namespace) -> int:

    with contextlib.ExitStack() as stack:
        captures = [Path(c) for c in args.captures] or [
            stack.enter_context(as_file(files("agent.bundled") / name)) for name in DEFAULT_CAPTURES]
        base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="calln-demo-"))
        base.mkdir(parents=True, exist_ok=True)
        try:
            return _demo(args, captures, base)
        finally:
            if args.keep:
                print(f"\nfiles kept in {base}: received/ (what the receiver stored), spool/")
            else:
                shutil.rmtree(base, ignore_errors=True)
                print(f"\nremoved {base} (calln-agent demo --keep DIR keeps the files)")


def _demo(args: argparse.Namespace, captures: list[Path], base: Path) -> int:
    from agent.counters import new_counters
    from agent.delivery import replay_and_deliver
    from agent.receiver import ReceiverServer
    from agent.summaries import delivery_line
    from agent.textsafe import terminal_safe

    password = "demo-secret"
    receiver = ReceiverServer(base / "received", username="demo", password=password)
    url, ca_path = receiver.start()
    try:
        config = load_config(getattr(args, "config", None), env={})
        config = dataclasses.replace(
            config,
            api=dataclasses.replace(config.api, url=url, username="demo", password=password,
                                    ca_bundle=str(ca_path), format=args.format, chunk_bytes=16 * 1024),
            spool=dataclasses.replace(config.spool, dir=str(base / "spool")),
            agent=dataclasses.replace(config.agent, location=config.agent.location or "Demo site"),
        )
        print(f"receiver: {url} (CA {ca_path})")
        print(f"replaying: {', '.join(str(c) for c in captures)}")
        counters = new_counters()
        status, summary = replay_and_deliver(captures, config, deadline_s=120.0, progress=False,
                                             counters=counters)
        stored = receiver.stored_calls()
    finally:
        receiver.stop()
    print(delivery_line(counters, summary))
    print(f"\nthe receiver stored {len(stored)} call(s):")
    print(f"{'start (UTC)':19}  {'caller':28} {'callee':28} {'caller dtmf':11} {'callee dtmf':11} "
          f"{'audio':>7}  file")
    for call in stored:
        m = call.v1_fields()          # v1 or v2 alike
        caller = f"{m['callername']} <{m['callerphone']}>" if m["callername"] else m["callerphone"]
        callee = f"{m['destinationname']} <{m['destinationphone']}>" if m["destinationname"] else m["destinationphone"]
        seconds = _audio_seconds(call.audio, call.content_type)
        caller, callee = terminal_safe(caller), terminal_safe(callee)
        print(f"{m['startdatetimeutc']:19}  {caller:28.28} {callee:28.28} {m['callerdtmf']:11} "
              f"{m['destinationdtmf']:11} {seconds:6.1f}s  received/{call.n}.{'wav' if call.content_type == 'audio/wav' else 'mp3'}")
    return status
