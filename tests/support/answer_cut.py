"""A TCP proxy in front of an HTTP server that loses the server's next answer.

When armed, the proxy passes the next request on, waits until the server has
answered it (its transaction committed), and then resets the client's
connection instead of passing the answer on: what a client sees when a
server, a load balancer or the network dies between the answer and the client.
A real connection is cut (RST), so the client's own error handling runs.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress
from types import TracebackType


class AnswerCut:
    """``with AnswerCut(port) as cut``: listens on ``cut.url``; ``cut.arm()`` loses one answer."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._armed = 0
        self.cut = 0  # answers lost so far
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> AnswerCut:
        self._start(self._accept)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)

    def arm(self, answers: int = 1) -> None:
        """Lose the next ``answers`` answers, whichever connections carry them."""
        with self._lock:
            self._armed = answers

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            self._start(self._requests, client, server)
            self._start(self._answers, server, client)

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        with suppress(OSError):
            while data := client.recv(65536):
                server.sendall(data)
        with suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        with suppress(OSError):
            while data := server.recv(65536):
                with self._lock:
                    lose = self._armed > 0
                    if lose:
                        self._armed -= 1
                        self.cut += 1
                if lose:  # the answer came: reset the client's connection instead
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                    server.close()
                    return
                client.sendall(data)
        with suppress(OSError):
            client.shutdown(socket.SHUT_WR)
