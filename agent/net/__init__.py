"""Network layers: frames (L2) to datagrams (L3/L4), with reassembly and tunnels.

Entry point: ``agent.net.decode.FrameDecoder`` (re-exported here).
"""

from agent.net.datagram import Datagram
from agent.net.decode import FrameDecoder

__all__ = ["Datagram", "FrameDecoder"]
