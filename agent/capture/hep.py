"""The HEP v3 listener: a collector socket (UDP, or TCP with many senders) whose messages
become datagrams for the engine (``Engine.feed_datagram``), beside or instead of capture
interfaces (``[capture] hep``).

Owns: the sockets, accepting and reading connections, cutting TCP streams into messages.
Its own epoll holds every socket, and the epoll's descriptor is what the capture loop polls:
to the loop the listener is one more source, however many senders are connected.
Does not own: HEP parsing and the auth-key check (agent.net.hep), what datagrams mean.
Bad input is counted (``hep.*``), never raised; a sender that misbehaves loses its connection.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from dataclasses import dataclass
from typing import Callable

from agent.errors import AgentError
from agent.net.datagram import Datagram
from agent.net.hep import HepStreamSplitter, HepUnwrapper

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256          # TCP senders at once; more are refused (counted)
READ_BYTES = 65536
MAX_READS_PER_WAKE = 1024      # UDP datagrams taken per wake-up, so one busy socket cannot starve the rings


@dataclass(frozen=True, slots=True)
class HepListen:
    transport: str      # "udp" | "tcp"
    host: str
    port: int


def parse_hep_listen(text: str) -> HepListen:
    """'udp:0.0.0.0:9060', 'tcp:[::]:9060' -> HepListen (ValueError when malformed)."""
    transport, sep, rest = text.partition(":")
    host, sep2, port = rest.rpartition(":")
    if transport not in ("udp", "tcp") or not sep or not sep2 or not port.isdigit() \
            or not 0 <= int(port) <= 65535:
        raise ValueError(f"[capture] hep {text!r}: expected udp:HOST:PORT or tcp:HOST:PORT")
    return HepListen(transport, host.strip("[]") or "0.0.0.0", int(port))


class HepListener:
    def __init__(self, listen: HepListen, counters, auth_key: bytes = b"",
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.listen = listen
        self.counters = counters
        self.unwrap = HepUnwrapper(counters, auth_key)
        self._clock_ns = clock_ns
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if listen.transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(family, kind)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if kind == socket.SOCK_DGRAM:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind((listen.host, listen.port))
            if kind == socket.SOCK_STREAM:
                self.sock.listen(64)
        except OSError as exc:
            self.sock.close()
            raise AgentError(f"[capture] hep: cannot listen on {listen.transport}:{listen.host}:"
                             f"{listen.port}: {exc.strerror}") from None
        self.sock.setblocking(False)
        self._epoll = select.epoll()
        self._epoll.register(self.sock.fileno(), select.EPOLLIN)
        self._conns: dict[int, tuple[socket.socket, HepStreamSplitter]] = {}

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the kernel chose when 0 was asked)."""
        return self.sock.getsockname()[:2]

    @property
    def name(self) -> str:
        host, port = self.address
        return f"hep {self.listen.transport}:{host}:{port}"

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read(self, feed: Callable[[Datagram], None]) -> tuple[int, int]:
        """Everything ready now into ``feed``; returns (datagrams, bytes) like a capture source."""
        got = nbytes = 0
        for fd, events in self._epoll.poll(0):
            if fd == self.sock.fileno():
                if self.listen.transport == "udp":
                    n, b = self._read_udp(feed)
                else:
                    self._accept()
                    continue
            else:
                n, b = self._read_conn(fd, feed)
            got += n
            nbytes += b
        return got, nbytes

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        self._epoll.close()
        self.sock.close()

    # -- internals ------------------------------------------------------------

    def _deliver(self, message: bytes, feed: Callable[[Datagram], None]) -> int:
        dgram = self.unwrap.datagram(message, self._clock_ns())
        if dgram is None:
            return 0
        feed(dgram)
        return 1

    def _read_udp(self, feed) -> tuple[int, int]:
        got = nbytes = 0
        for _ in range(MAX_READS_PER_WAKE):
            try:
                message = self.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["hep.receive_errors"] += 1
                break
            nbytes += len(message)
            got += self._deliver(message, feed)
        return got, nbytes

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["hep.receive_errors"] += 1
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self.counters["hep.connections_refused"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            self._conns[conn.fileno()] = (conn, HepStreamSplitter(self.counters))
            self._epoll.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            self.counters["hep.connections"] += 1
            log.info("HEP sender connected from %s", peer[0])

    def _read_conn(self, fd: int, feed) -> tuple[int, int]:
        conn, splitter = self._conns[fd]
        try:
            data = conn.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return 0, 0
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return 0, 0
        got = 0
        for message in splitter.feed(data):
            got += self._deliver(message, feed)
        return got, len(data)

    def _drop(self, fd: int) -> None:
        conn, _ = self._conns.pop(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        conn.close()
