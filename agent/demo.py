"""``calln-agent demo``: the whole main job on an embedded default.

Starts the local CallN-compatible receiver (HTTPS, self-signed CA) on loopback,
replays a bundled capture through the agent into a fresh spool, delivers every
call through the real upload client, and prints what the receiver stored.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import tempfile
import wave
from pathlib import Path

from agent.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CAPTURES = ("pcaps/multi_call.pcap", "pcaps/sipp_g711a.pcap")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="replay a bundled capture and deliver it to a local receiver")
    p.add_argument("captures", nargs="*", help=f"default: {' '.join(DEFAULT_CAPTURES)}")
    p.add_argument("--format", choices=("mp3", "wav"), default="mp3")
    p.add_argument("--keep", help="keep the receiver's files in this directory")
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
    from agent.delivery import replay_and_deliver
    from agent.receiver import ReceiverServer

    captures = [Path(c) for c in args.captures] or [REPO / c for c in DEFAULT_CAPTURES]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="calln-demo-"))
    base.mkdir(parents=True, exist_ok=True)
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
        status, summary = replay_and_deliver(captures, config, deadline_s=120.0, progress=False)
        stored = receiver.stored_calls()
    finally:
        receiver.stop()
    pending = {state: n for state, n in summary.items() if n}
    print("spool: " + (", ".join(f"{n} {state}" for state, n in sorted(pending.items()))
                       if pending else "every call delivered (delivered calls are removed: retention 0 days)"))
    print(f"\nthe receiver stored {len(stored)} call(s):")
    print(f"{'start (UTC)':19}  {'caller':28} {'callee':28} {'caller dtmf':11} {'callee dtmf':11} "
          f"{'audio':>7}  file")
    for call in stored:
        m = call.meta
        caller = f"{m['callername']} <{m['callerphone']}>" if m["callername"] else m["callerphone"]
        callee = f"{m['destinationname']} <{m['destinationphone']}>" if m["destinationname"] else m["destinationphone"]
        seconds = _audio_seconds(call.audio, call.content_type)
        print(f"{m['startdatetimeutc']:19}  {caller:28.28} {callee:28.28} {m['callerdtmf']:11} "
              f"{m['destinationdtmf']:11} {seconds:6.1f}s  {base / 'received'}/{call.n}.{'wav' if call.content_type == 'audio/wav' else 'mp3'}")
    return status
