"""Relays on loopback: a TCP one that makes a link behave like a long-haul one (delay, jitter,
a cut), and a datagram one that cuts an encoder's input.

There is no netem on a machine without privileges, so mesh links that must be slow (encoders
in different regions) pass through this relay instead: every byte it forwards is held for the
one-way delay plus a half-normal jitter, in order (a byte never overtakes an earlier one, as on
a TCP stream), in both directions. ``cut()`` makes the link a partition: nothing is forwarded
and nothing is closed (no FIN, no RST; a connection attempted meanwhile is accepted and
hangs), until ``heal()`` delivers what was held, late, as a real network's retransmissions
would. The relay runs its own event loop in a thread, so tests and tools drive it with plain
calls; ``close()`` ends every connection and the thread.

:class:`DatagramRelay` forwards UDP datagrams (an encoder's live input) from one local port to
another and, while cut, drops them all: an input cut as a broken feed is, with no error anywhere.
:class:`InputRelays` runs one per encoder in a process of their own (``python -m
meshenc.local.relay``), driven over a pipe: they stand for the network, and must not stand
still when the process that injects faults and judges them is busy (measured in a chaos run:
while that process was held up for seconds restarting etcd or an encoder, every encoder's
input stopped at once, and each filled the gap with pictures of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence

__all__ = ["DatagramRelay", "DelayRelay", "InputRelays"]

#: Bytes read from one side before the relay stops reading it while its data cannot be sent
#: (a cut, a slow receiver): the sender's TCP window then fills, as it would on a real link.
_HELD_LIMIT = 4 * 1024 * 1024


class DelayRelay:
    """Relay connections made to ``127.0.0.1:port`` to ``upstream``, delayed by
    ``delay_s`` plus half-normal jitter of standard deviation ``jitter_s`` each way."""

    def __init__(
        self,
        upstream: tuple[str, int],
        delay_s: float,
        *,
        jitter_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.upstream = upstream
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._open = threading.Event()  # set while the link is up
        self._open.set()
        self._healed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def start(self, port: int = 0) -> int:
        """Listen on ``127.0.0.1:port`` (0: any free port); returns the port."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(port), self._loop).result(10)
        return self.port

    def cut(self) -> None:
        """Stop forwarding anything, in both directions, until ``heal``."""
        self._open.clear()
        self._call(lambda healed: healed.clear())

    def heal(self) -> None:
        """Forward again, starting with what was held during the cut."""
        self._open.set()
        self._call(lambda healed: healed.set())

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def close(self) -> None:
        """Close the listener and every connection, and stop the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> DelayRelay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the relay's own loop --------------------------------------------------------------

    def _call(self, change: Callable[[asyncio.Event], None]) -> None:
        def apply() -> None:
            if self._healed is not None:
                change(self._healed)

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(apply)

    async def _listen(self, port: int) -> int:
        self._healed = asyncio.Event()
        if self._open.is_set():
            self._healed.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        assert self._healed is not None
        try:
            await self._healed.wait()  # a connection attempted during a cut hangs
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            return
        self._writers.add(upstream_w)
        await asyncio.gather(
            self._pump(client_r, upstream_w),
            self._pump(upstream_r, client_w),
            return_exceptions=True,
        )
        for writer in (client_w, upstream_w):
            writer.close()
            self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction: each chunk is sent when its delay is over and the link is
        up, never before an earlier chunk."""
        loop = asyncio.get_running_loop()
        held: deque[tuple[float, bytes]] = deque()
        held_bytes = 0
        arrived = asyncio.Event()
        done = False
        assert self._healed is not None
        healed = self._healed

        async def send() -> None:
            nonlocal held_bytes
            while held or not done:
                if not held:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, data = held[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await healed.wait()
                held.popleft()
                held_bytes -= len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(send())
        last_due = 0.0
        try:
            while True:
                while held_bytes > _HELD_LIMIT:
                    await asyncio.sleep(0.01)
                data = await reader.read(65536)
                if not data:
                    break
                jitter = abs(self._random.gauss(0.0, self.jitter_s)) if self.jitter_s else 0.0
                last_due = max(last_due, loop.time() + self.delay_s + jitter)
                held.append((last_due, data))
                held_bytes += len(data)
                arrived.set()
        finally:
            done = True
            arrived.set()
            await sender


class DatagramRelay:
    """Forward datagrams sent to ``127.0.0.1:port`` on to ``127.0.0.1:to_port``; drop them all
    while cut. A thread of its own; ``close()`` stops it."""

    def __init__(self, to_port: int, listen: socket.socket | None = None) -> None:
        if listen is None:
            listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            listen.bind(("127.0.0.1", 0))
        self._listen = listen
        self._listen.settimeout(0.1)
        self.port: int = self._listen.getsockname()[1]
        self._to = ("127.0.0.1", to_port)
        self._cut = threading.Event()
        self._stop = threading.Event()
        self.forwarded = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="datagram-relay", daemon=True)

    def start(self) -> int:
        """Start forwarding; returns the port to send to."""
        self._thread.start()
        return self.port

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        self._cut.clear()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._listen.close()

    def __enter__(self) -> DatagramRelay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            while not self._stop.is_set():
                try:
                    data = self._listen.recv(65_536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self._cut.is_set():
                    self.dropped += 1
                    continue
                with contextlib.suppress(OSError):  # nobody listening yet (a restart)
                    out.sendto(data, self._to)
                    self.forwarded += 1


class InputRelays:
    """A :class:`DatagramRelay` per name, in a process of their own (see the module
    docstring). The listening sockets are bound here, so ``ports`` is known at once, and handed
    to the process by ``start()``; ``cut``/``heal`` are answered once the process has done
    them; ``close()`` ends the process (and so do the parent's end and its stdin closing)."""

    def __init__(self, to_ports: Mapping[str, int]) -> None:
        self._to = dict(to_ports)
        self._sockets: dict[str, socket.socket] = {}
        for name in self._to:
            listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            listen.bind(("127.0.0.1", 0))
            self._sockets[name] = listen
        self.ports = {name: s.getsockname()[1] for name, s in self._sockets.items()}
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        relays = [f"{name}={s.fileno()}:{self._to[name]}" for name, s in self._sockets.items()]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "meshenc.local.relay", *relays],
            pass_fds=[s.fileno() for s in self._sockets.values()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ask("ready")
        for listen in self._sockets.values():
            listen.close()  # the process holds them now

    def cut(self, name: str) -> None:
        self._ask(f"cut {name}")

    def heal(self, name: str) -> None:
        self._ask(f"heal {name}")

    def _ask(self, command: str) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the relays are not running")
        if command != "ready":
            process.stdin.write(command + "\n")
            process.stdin.flush()
        answer = process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"the relays answered {answer!r} to {command!r}")

    def close(self) -> None:
        process, self._process = self._process, None
        for listen in self._sockets.values():
            listen.close()
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> InputRelays:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _serve(specs: Sequence[str]) -> None:
    """The relays' process: ``NAME=FD:TO_PORT`` per relay; then ``cut NAME`` / ``heal NAME``
    lines on stdin, each answered ``ok``; ends when stdin does."""
    relays: dict[str, DatagramRelay] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        fd, _, to_port = rest.partition(":")
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=int(fd))
        relays[name] = DatagramRelay(int(to_port), listen)
    for relay in relays.values():
        relay.start()
    print("ok", flush=True)
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if name not in relays or command not in ("cut", "heal"):
            print(f"unknown: {line.strip()}", flush=True)
            continue
        if command == "cut":
            relays[name].cut()
        else:
            relays[name].heal()
        print("ok", flush=True)
    for relay in relays.values():
        relay.close()


if __name__ == "__main__":
    _serve(sys.argv[1:])
