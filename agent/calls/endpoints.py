"""The media map: which call, and which side of it, announced each ``(ip, port)``.

Owns ``(ip, port) -> (call, side)`` and the two views of it that make every operation cost
O(1) in the number of calls:

- an index from each call to the endpoints it holds, so ending a call releases its
  endpoints without looking at anyone else's (a burst of 10,000 endings used to scan the
  whole map once per call: the square of the burst);
- the same map under packed keys (the 4 or 16 address bytes and the 2 port bytes as they
  sit in a frame) for the batch router, and a journal of the packed keys changed since it
  last looked, so it updates its sorted copy instead of rebuilding it.

The media-routing stage creates the map and passes it to the call tracker, which claims and
releases endpoints as SDP comes and calls end. Only this class writes to it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from agent.calls.call import Call, Side

Endpoint = tuple[str, int]
Holder = tuple["Call", "Side"]       # (call, the side that announced the endpoint)

# Past this many changed keys between two looks, the journal gives up and says "everything":
# the reader rebuilds its copy, which then costs no more than the changes themselves.
JOURNAL_MAX = 65_536


class EndpointMap:
    def __init__(self) -> None:
        self._holders: dict[Endpoint, Holder] = {}
        self._of_call: dict[int, dict[Endpoint, None]] = {}   # id(call) -> its endpoints, in order
        self.packed: dict[bytes, Holder] = {}
        self.version = 0                 # bumped on every change
        self._changed: set[bytes] | None = set()

    # ------------------------------------------------------------------ reading

    def get(self, endpoint: Endpoint) -> Holder | None:
        return self._holders.get(endpoint)

    def __getitem__(self, endpoint: Endpoint) -> Holder:
        return self._holders[endpoint]

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._holders

    def __len__(self) -> int:
        return len(self._holders)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._holders)

    def holds_any(self, call: Call) -> bool:
        return id(call) in self._of_call

    def of_call(self, call: Call) -> list[Endpoint]:
        return list(self._of_call.get(id(call), ()))

    def take_changed(self) -> set[bytes] | None:
        """Packed keys changed since the last call (``None``: too many, read them all)."""
        changed, self._changed = self._changed, set()
        return changed

    # ------------------------------------------------------------------ writing

    def claim(self, endpoint: Endpoint, call: Call, side: Side) -> Holder | None:
        """``call``'s ``side`` now holds ``endpoint``; returns the previous holder."""
        before = self._holders.get(endpoint)
        if before is not None:
            self._unindex(endpoint, before[0])
        self._holders[endpoint] = (call, side)
        self._of_call.setdefault(id(call), {})[endpoint] = None
        self._mirror(endpoint, (call, side))
        return before

    def release(self, endpoint: Endpoint) -> None:
        holder = self._holders.pop(endpoint, None)
        if holder is not None:
            self._unindex(endpoint, holder[0])
            self._mirror(endpoint, None)

    def release_call(self, call: Call) -> None:
        """Every endpoint ``call`` holds (it ended): costs what it holds, not the map's size."""
        for endpoint in self._of_call.pop(id(call), ()):
            del self._holders[endpoint]
            self._mirror(endpoint, None)

    def _unindex(self, endpoint: Endpoint, call: Call) -> None:
        mine = self._of_call.get(id(call))
        if mine is not None:
            mine.pop(endpoint, None)
            if not mine:
                del self._of_call[id(call)]

    def _mirror(self, endpoint: Endpoint, holder: Holder | None) -> None:
        self.version += 1
        key = packed_endpoint(endpoint)
        if key is None:
            return
        if holder is not None:
            self.packed[key] = holder
        else:
            self.packed.pop(key, None)
        if self._changed is not None:
            self._changed.add(key)
            if len(self._changed) > JOURNAL_MAX:
                self._changed = None


def packed_endpoint(endpoint: Endpoint) -> bytes | None:
    """The address bytes and the 2 port bytes of ``endpoint`` as a frame carries them, or None
    when SDP named no canonical address (the fast paths then never match it)."""
    ip, port = endpoint
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        return None
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        packed = socket.inet_pton(family, ip)
    except (OSError, ValueError):          # not an address (SDP may carry anything)
        return None
    # Only the canonical text, which is what packets decode to: the fast paths must match
    # exactly what the text map would ("010.0.0.1" or "1" must not become 10.0.0.1, nor
    # "2001:DB8::1" 2001:db8::1).
    if socket.inet_ntop(family, packed) != ip:
        return None
    return packed + port.to_bytes(2, "big")
