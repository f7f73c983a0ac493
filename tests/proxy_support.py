"""A TCP proxy the test controls: it forwards, or goes silent without closing.

What a phone that walks out of Wi-Fi looks like from both ends: the
connections stay open, nothing more gets through (``freeze``), and perhaps
later everything flows again (``thaw``). Threads, so that the synchronous
browser tests can use it; every socket it opens it closes in ``close``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

POLL_S = 0.1  # how often an idle pump looks at the stop flag


class SilentProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``freeze`` stops it silently.

    While frozen, connections are still accepted (and their upstream opened),
    but no byte moves in either direction and nothing is closed: a byte read
    just before the freeze waits for the thaw.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Break every connection open now (new ones are still forwarded)."""
        with self._lock:
            open_now = [sock for sock in self._sockets if sock is not self._listener]
            self._sockets = [self._listener]
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()  # release the pumps waiting for a thaw
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                self._flowing.wait()
                readable, _, _ = select.select([source], [], [], POLL_S)
                if not readable:
                    continue
                data = source.recv(65536)
                self._flowing.wait()  # read just before a freeze: held until the thaw
                if self._stop.is_set():
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)


class ReadyBalancer:
    """A load balancer in front of several servers, as an operator's would be.

    Each new WebSocket upgrade (a connection whose first request is ``GET
    /ws``) goes to the next server, round robin, whose ``GET /readyz``
    answers 200 now; other requests go to the first ready server. A server
    that drains answers 503 and gets no new connection. Connections already
    open stay where they are.
    """

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets
        self._next = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        self.sockets_to: list[int] = []  # the target of each WebSocket upgrade, in order
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _ready(self, port: int) -> bool:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _pick(self, upgrade: bool) -> int | None:
        with self._lock:
            start = self._next if upgrade else 0
            for n in range(len(self.targets)):
                port = self.targets[(start + n) % len(self.targets)]
                if self._ready(port):
                    if upgrade:
                        self._next = start + n + 1
                        self.sockets_to.append(port)
                    return port
        return None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(downstream,), daemon=True).start()

    def _connect(self, downstream: socket.socket) -> None:
        downstream.settimeout(5)
        try:
            first = downstream.recv(8, socket.MSG_PEEK)
        except OSError:
            downstream.close()
            return
        downstream.settimeout(None)
        port = self._pick(upgrade=first.startswith(b"GET /ws"))
        if port is None:
            downstream.close()  # nobody is ready: the client retries
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            downstream.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [downstream, upstream]
        for source, sink in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=_pump, args=(source, sink, self._stop), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            readable, _, _ = select.select([source], [], [], POLL_S)
            if not readable:
                continue
            data = source.recv(65536)
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            sink.sendall(data)
    except OSError:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)
