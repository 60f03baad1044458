"""A TCP proxy on 127.0.0.1 that the tests control: a network fault between two processes.

Put it between a client and a server (a beat and its Redis, a beat and RabbitMQ) and
break the link without touching either process::

    with TcpProxy("127.0.0.1", server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"   # give this to the client
        proxy.partition()   # drop new connections and cut the open ones: connection errors
        proxy.blackhole()   # accept, forward nothing, close nothing: clients time out
        proxy.heal()        # forward again (held bytes flow on, in order)

Modes (:attr:`mode`) decide what happens to traffic:

``pass``       forward both ways (the default);
``drop``       close every new connection at once (the client sees a reset or EOF);
               the open ones are left alone (use :meth:`cut` to close them too);
``blackhole``  accept new connections and forward nothing on any connection, open or new,
               in either direction. Nothing is read, so nothing is lost: as in a real
               partition that heals before TCP gives up, the held bytes are delivered, in
               order, after :meth:`heal`. Clients see their reads time out.

:meth:`cut` closes every open connection now (both sides, at once), in any mode.

The proxy runs an asyncio loop in a daemon thread; every control method waits until
the loop has applied it, so a fault is in force when the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["MODES", "TcpProxy"]

HOST = "127.0.0.1"
MODES = ("pass", "drop", "blackhole")
CHUNK = 65536
CONTROL_TIMEOUT_S = 10.0

T = TypeVar("T")


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client_w: asyncio.StreamWriter) -> None:
        self.client_w = client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        for writer in (self.client_w, self.upstream_w):
            if writer is not None:
                _abort(writer)
        for task in self.tasks:
            task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once (RST), dropping what it has not sent."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._requested_port = port
        self.port = 0
        self.mode = "pass"
        #: connections accepted, connections closed by the drop mode, cuts made
        self.stats = {"accepted": 0, "dropped": 0, "cut": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"TcpProxy->{self.target_port}")
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(CONTROL_TIMEOUT_S):
            raise RuntimeError("the proxy did not start listening")
        return self

    async def _serve(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, HOST, self._requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        self._links.clear()

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT_S)
        self._thread = None
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {MODES}")
        self._call(self._set_mode(mode))

    def cut(self) -> int:
        """Close every open connection now. Returns how many were closed."""
        return self._call(self._cut())

    def partition(self) -> int:
        """:meth:`cut` + ``drop``: the server is unreachable, clients get errors at once.
        Bytes held by a blackhole are lost with their connections (cut first)."""
        return self._call(self._partition())

    def blackhole(self) -> None:
        """Hold all traffic (open and new connections); clients time out."""
        self.set_mode("blackhole")

    def heal(self) -> None:
        """Forward again."""
        self.set_mode("pass")

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT_S)

    async def _set_mode(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _partition(self) -> int:
        cut = await self._cut()  # before the mode change lets held bytes flow
        await self._set_mode("drop")
        return cut

    async def _cut(self) -> int:
        links = list(self._links)
        for link in links:
            link.close()
        self._links.difference_update(links)
        self.stats["cut"] += len(links)
        return len(links)

    # -- forwarding ----------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        if self.mode == "drop":
            self.stats["dropped"] += 1
            _abort(client_w)
            return
        link = _Link(client_w)
        self._links.add(link)
        try:
            assert self._flowing is not None
            await self._flowing.wait()  # a blackholed connection is accepted, then held
            if link not in self._links:  # cut meanwhile
                return
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                link.close()
                return
            link.upstream_w = upstream_w
            if link not in self._links:
                link.close()
                return
            link.tasks = [
                asyncio.create_task(self._pump(client_r, upstream_w, link)),
                asyncio.create_task(self._pump(upstream_r, client_w, link)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()  # blackhole: read nothing, so lose nothing
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # read just before a blackhole: hold it too
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port} "
            f"{self.mode} open={self.open_connections} {self.stats}>"
        )
