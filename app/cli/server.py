"""uvicorn's server, which takes in its listen queue's connections before it stops listening.

A connection the kernel has completed (the client has connected, and may
have sent its request) waits in the listening socket's queue until a worker
accepts it. When the last copy of the socket closes, the kernel resets every
connection still queued: their requests are lost, although the client saw
its connection accepted. Measured (bench/supervision.py): with kept-alive
connections already drained (app/http/limits.py), a rolling restart of two
servers under CPU load still lost 20 requests this way; with this, 0. So on
shutdown this server first accepts every
connection queued, then closes the socket in the same step, then drains them
with the rest: each is answered and closed.

A worker's copy of the socket is not the last while the other workers
still listen; each worker does this, so whichever closes last takes in what
is queued. A connection completed between that last accept and the close
(no await between them) is still reset: that window is microseconds, not the
event loop's latency under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn's server that takes in its queued connections before it closes the socket."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        queued = self._accept_queued()
        for server in self.servers:
            server.close()  # uvicorn's shutdown closes them again: closing twice is a no-op
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        for connection in queued:
            with contextlib.suppress(OSError):
                await loop.connect_accepted_socket(self._protocol, connection)
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    def _accept_queued(self) -> list[socket.socket]:
        """Accept, without waiting, every connection queued on the listening sockets."""
        queued: list[socket.socket] = []
        for server in self.servers:
            for listener in server.sockets:
                # A copy of the descriptor of the same socket: accept() is not
                # offered on asyncio's wrapper.
                with socket.socket(fileno=os.dup(listener.fileno())) as sock:
                    sock.setblocking(False)
                    while True:
                        try:
                            connection, _ = sock.accept()
                        except OSError:  # BlockingIOError: the queue is empty
                            break
                        connection.setblocking(False)
                        queued.append(connection)
        return queued
