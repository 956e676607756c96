"""What decides the output of this install: the agent's version and the libraries behind it
(PyAV/FFmpeg decode the codecs, lameenc encodes MP3, libsoxr converts sample rates, numpy
does the PCM).

``calln-agent --version`` and ``check-config`` print these lines. The agent's version is
written once, as ``agent.__version__`` (pyproject.toml reads it from there).
"""

from __future__ import annotations

import ctypes
import platform


def _mp3_encoder() -> str:
    """The MP3 encoder the recorder uses: lameenc, with the LAME version compiled into it (the
    module does not say; its extension exports LAME's own ``get_lame_version``)."""
    import importlib.metadata

    import lameenc                               # fails here when the MP3 encoder is missing
    lame = "unknown version"
    try:
        get_version = ctypes.CDLL(lameenc.__file__).get_lame_version
        get_version.restype = ctypes.c_char_p
        lame = get_version().decode("ascii", "replace")
    except (OSError, AttributeError):
        pass
    return f"lameenc {importlib.metadata.version('lameenc')} (LAME {lame})"


def version_lines() -> list[str]:
    """One line per component, e.g. ``PyAV 14.2.0 (FFmpeg 7.1, libavcodec 61.19.100)``."""
    from agent import __version__
    lines = [f"calln-agent {__version__} (Python {platform.python_version()})"]
    try:
        import av
        codec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
        ffmpeg = getattr(av, "ffmpeg_version_info", "?")
        lines.append(f"PyAV {av.__version__} (FFmpeg {ffmpeg}, libavcodec {codec})")
    except ImportError as exc:
        lines.append(f"PyAV: not installed ({exc})")
    try:
        lines.append(f"MP3 encoder: {_mp3_encoder()}")
    except Exception as exc:                     # noqa: BLE001 - report, never crash --version
        lines.append(f"MP3 encoder: unavailable ({exc})")
    try:
        import numpy
        lines.append(f"numpy {numpy.__version__}")
    except ImportError as exc:
        lines.append(f"numpy: not installed ({exc})")
    try:
        import soxr
        lines.append(f"resampler: soxr {soxr.__version__} (libsoxr {soxr.__libsoxr_version__})")
    except (ImportError, AttributeError) as exc:
        lines.append(f"resampler: unavailable ({exc})")
    return lines
