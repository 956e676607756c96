"""The recorder worker alone: ``_render_job`` (sequencing, decode, in-band DTMF scan, mix,
encode) over the raw media logs of a replay, in this process, CPU time.

Replays a synthetic capture once (cached under /tmp) with media deferred, as the recorder's
workers receive it, and keeps every call's raw log, plan and record. Then runs exactly the
worker's job for each call and prints audio-seconds per CPU-second (a call of 60 s is 60
audio-seconds) with the time of each phase. ``--loss``/``--reorder`` make the capture
impaired; ``--profile`` prints the top of a cProfile; ``--repeat N`` runs the whole set N
times and reports the round that used the least CPU (the machine is shared: the least is
the least disturbed). BLAS is kept to one thread and glibc's heap set as in the recorder's
workers (``agent.worker_heap``; ``--default-malloc`` leaves it).

    python3 bench/render_rate.py [--calls 40] [--duration-s 60] [--format wav] [--rate 0]
                                 [--loss 0.01 --reorder 0.01] [--profile] [--repeat 3]
                                 [--default-malloc]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from proctree import machine_load  # noqa: E402
from synth import write_calls  # noqa: E402


def prepare(capture: Path, keep_dir: Path) -> list:
    """Replay ``capture`` once, media deferred; keep (raw log, plan, record, specs) per call."""
    index = keep_dir / "calls.pickle"
    if index.exists():
        return pickle.loads(index.read_bytes())
    from agent.config import load_config
    from agent.pipeline.engine import MediaMode
    from agent.replay import replay

    keep_dir.mkdir(parents=True, exist_ok=True)
    calls = []

    def on_finished(finished) -> None:
        if finished.media_log is None or not finished.media_log.exists():
            return
        kept = keep_dir / f"call{len(calls):05d}.raw"
        shutil.copyfile(finished.media_log, kept)
        finished.media_log.unlink(missing_ok=True)
        calls.append((kept, finished.media_plan, finished.record, finished.streams))

    engine = replay([capture], load_config(None), on_finished, progress=False, workdir=keep_dir / ".work",
                    media=MediaMode.DEFERRED)
    engine.close()
    index.write_bytes(pickle.dumps(calls))
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--format", default="wav", choices=("wav", "mp3"))
    ap.add_argument("--rate", type=int, default=-1, help="[recording] sample_rate_hz (-1: by format, 0: native)")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--reorder", type=float, default=0.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the least CPU is reported")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's thresholds (agent.worker_heap)")
    args = ap.parse_args()

    tmp = Path(tempfile.gettempdir())
    tag = f"{args.calls}x{int(args.duration_s)}s" + (f"-loss{args.loss:g}-reorder{args.reorder:g}"
                                                     if args.loss or args.reorder else "")
    capture = tmp / f"calln-render-bench-{tag}.pcap"
    if not capture.exists():
        print(f"generating {capture} ...", flush=True)
        write_calls(capture, calls=args.calls, concurrent=args.calls, duration_s=args.duration_s,
                    loss=args.loss, reorder=args.reorder)
    calls = prepare(capture, tmp / f"calln-render-bench-{tag}.raw")
    # A worker imports these once; keep the imports out of the timing.
    import av  # noqa: F401  # pyflakes: imported for its side effect
    import lameenc  # noqa: F401

    from agent.config import RecordingSection
    from agent.media import render, stream
    from agent.recorder import _render_job
    from agent.worker_heap import keep_arrays_on_heap

    if not args.default_malloc:
        keep_arrays_on_heap()     # as each recorder worker does (recorder._worker_init)

    settings = RecordingSection(sample_rate_hz=args.rate)
    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.process_time() - t
        return wrapper

    stream.sequence_capture = timed("sequencing", stream.sequence_capture)
    render._render_stream_rows = timed("place + decode", render._render_stream_rows)
    render._inband_dtmf = timed("in-band DTMF scan", render._inband_dtmf)
    render._mix_and_encode = timed(f"mix + {args.format}", render._mix_and_encode)
    import agent.pipeline.completion
    agent.pipeline.completion.sequence_capture = stream.sequence_capture
    agent.pipeline.completion._stream_quality = timed("stream quality", agent.pipeline.completion._stream_quality)

    best: tuple[float, dict[str, float]] | None = None
    for _round in range(max(1, args.repeat)):
        phases.clear()
        cpu = _one_round(calls, args, settings, _render_job)
        phases["other (record, files)"] = cpu - sum(phases.values())
        if best is None or cpu < best[0]:
            best = (cpu, dict(phases))
    cpu, phases = best
    audio_s = len(calls) * args.duration_s
    print(f"worker job, {args.format} at {settings.output_rate_hz(args.format) or 'native'} Hz, {capture.name}: "
          f"{len(calls)} calls, {audio_s:,.0f} audio-s in {cpu:.2f} CPU-s = {audio_s / cpu:,.0f} audio-s per CPU-s "
          f"({machine_load()}{', default malloc' if args.default_malloc else ''})")
    for name, seconds in phases.items():
        print(f"  {name:20} {seconds * 1000 / len(calls):6.2f} ms per call")
    return 0


def _one_round(calls: list, args, settings, render_job) -> float:
    """Run the worker's job over fresh copies of every call's raw log; CPU seconds used."""
    out = Path(tempfile.mkdtemp(prefix="calln-render-out-"))
    work = []
    for i, (raw, plan, record, streams) in enumerate(calls):
        copy = out / f"c{i}.raw"
        shutil.copyfile(raw, copy)
        work.append((copy, plan, record, streams))
    try:
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        cpu0 = time.process_time()
        for i, (raw, plan, record, streams) in enumerate(work):
            render_job(raw, streams, plan, out / f"r{i:05d}.{args.format}", settings, args.format, record)
        cpu = time.process_time() - cpu0
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats(os.environ.get("PROF_SORT", "tottime")).print_stats(int(os.environ.get("PROF_N", "25")))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return cpu


if __name__ == "__main__":
    raise SystemExit(main())
