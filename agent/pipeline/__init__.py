"""The capture pipeline, one stage per module, wired by ``engine.py``:

- ``engine.py``: the Engine: frames in (``feed``, ``feed_batch``), tracker events handled in
  one loop, packet time, finished calls out;
- ``clock.py``: packet time (ticks, leaps, clock jumps);
- ``batch_routing.py``: the numpy router of a batch of RTP frames;
- ``media_routing.py``: the endpoint map, routing of one datagram or frame, held RTP;
- ``signalling.py``: SIP over UDP and TCP in, tracker events out;
- ``finishing.py``: a call's media object, and a call finished into a ``FinishedCall``;
- ``completion.py``: what the recorder's workers need to complete a record.

Nothing here is imported by the protocol packages (``net``, ``sip``, ``calls``, ``media``):
the pipeline sits above them.
"""
