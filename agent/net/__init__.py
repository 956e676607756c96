"""Network layers: frames (L2) to datagrams (L3/L4), with reassembly and tunnels."""
