"""Render-only throughput: ``render_recording`` over already-sequenced media logs.

Replays a synthetic capture once (cached under /tmp) with the engine sequencing media
itself, keeps every call's ordered media log and stream specs, then times only
``render_recording`` over them (CPU time of this process), and reports RTP packets per
CPU-second. ``--profile`` prints the top of a cProfile of the render pass. Run it with
``OPENBLAS_NUM_THREADS=1`` to match the recorder's workers (BLAS threads only add CPU time).

    python3 bench/render_rate.py [--calls 20] [--duration-s 60] [--format wav] [--profile]
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from synth import write_calls  # noqa: E402


def prepare(capture: Path, keep_dir: Path) -> list[tuple[Path, list, dict]]:
    """Replay ``capture`` once and keep (ordered log, stream specs, record) per call."""
    index = keep_dir / "calls.pickle"
    if index.exists():
        return pickle.loads(index.read_bytes())
    from agent.config import load_config
    from agent.replay import replay

    keep_dir.mkdir(parents=True, exist_ok=True)
    calls: list[tuple[Path, list, dict]] = []

    def on_finished(finished) -> None:
        if finished.media_log is None or not finished.media_log.exists():
            return
        kept = keep_dir / f"call{len(calls):05d}.log"
        shutil.copyfile(finished.media_log, kept)
        finished.media_log.unlink(missing_ok=True)
        calls.append((kept, finished.streams, finished.record))

    engine = replay([capture], load_config(None), on_finished, progress=False,
                    workdir=keep_dir / ".work", defer_media=False)
    engine.close()
    index.write_bytes(pickle.dumps(calls))
    return calls


def render_all(calls, out_dir: Path, fmt: str) -> int:
    from agent.config import RecordingSection
    from agent.media.render import render_recording
    from agent.recorder import dtmf_plan

    settings = RecordingSection()
    packets = 0
    for i, (log_path, streams, record) in enumerate(calls):
        directions, spans = dtmf_plan(record, settings.mask_dtmf_audio)
        result = render_recording(log_path, streams, out_dir / f"r{i:05d}.{fmt}", fmt=fmt,
                                  channels=settings.channels,
                                  sample_rate_hz=settings.sample_rate_hz,
                                  bitrate_kbps=settings.mp3_bitrate_kbps,
                                  inband_dtmf_directions=directions, mask_spans_ns=spans,
                                  mask_inband=settings.mask_dtmf_audio)
        packets += result.audio_packets
        if result.path is not None:
            Path(result.path).unlink(missing_ok=True)
    return packets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--format", default="wav", choices=("wav", "mp3"))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.gettempdir())
    tag = f"{args.calls}x{int(args.duration_s)}s"
    capture = tmp / f"calln-render-bench-{tag}.pcap"
    if not capture.exists():
        print(f"generating {capture} ...", flush=True)
        write_calls(capture, calls=args.calls, concurrent=args.calls, duration_s=args.duration_s)
    calls = prepare(capture, tmp / f"calln-render-bench-{tag}.logs")
    out_dir = Path(tempfile.mkdtemp(prefix="calln-render-out-"))
    # A worker imports these once; keep the imports out of the timing.
    import av  # noqa: F401  # pyflakes: imported for its side effect
    import agent.media.render  # noqa: F401
    import agent.recorder  # noqa: F401

    try:
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        packets = render_all(calls, out_dir, args.format)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"render {args.format}: {len(calls)} calls, {packets} audio packets, "
          f"CPU {cpu:.2f} s, wall {wall:.2f} s -> {packets / cpu:,.0f} packets/CPU-s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
