"""What decides the output of this install: the agent's version and the libraries behind it.

``calln-agent --version`` and ``check-config`` print these lines. The agent's version is
written once, as ``agent.__version__`` (pyproject.toml reads it from there).
"""

from __future__ import annotations

import ctypes
import platform


def _lame_version() -> str:
    """LAME's own version, asked of the libmp3lame that libavcodec loaded (PyAV's wheel bundles
    one; a system FFmpeg links the distribution's). libavcodec does not report it."""
    import av
    av.codec.Codec("libmp3lame", "w")           # fails here when the MP3 encoder is missing
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libmp3lame" in line})
        for path in paths:
            get_version = ctypes.CDLL(path).get_lame_version
            get_version.restype = ctypes.c_char_p
            return get_version().decode("ascii", "replace")
    except (OSError, AttributeError):
        pass
    return "unknown version"


def version_lines() -> list[str]:
    """One line per component, e.g. ``PyAV 14.2.0 (FFmpeg 7.1, libavcodec 61.19.100)``."""
    from agent import __version__
    lines = [f"calln-agent {__version__} (Python {platform.python_version()})"]
    try:
        import av
        codec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
        ffmpeg = getattr(av, "ffmpeg_version_info", "?")
        lines.append(f"PyAV {av.__version__} (FFmpeg {ffmpeg}, libavcodec {codec})")
        try:
            lines.append(f"MP3 encoder: LAME {_lame_version()} (libmp3lame)")
        except Exception as exc:                 # noqa: BLE001 - report, never crash --version
            lines.append(f"MP3 encoder: unavailable ({exc})")
    except ImportError as exc:
        lines.append(f"PyAV: not installed ({exc})")
    try:
        import numpy
        lines.append(f"numpy {numpy.__version__}")
    except ImportError as exc:
        lines.append(f"numpy: not installed ({exc})")
    return lines
