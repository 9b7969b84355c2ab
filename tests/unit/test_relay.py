"""The Redis relay notices a connection whose other end went silent (a host gone without a reset)."""

from __future__ import annotations

import asyncio
import contextlib

from streams.cache import ResultCache


async def _fake_redis(answers_ping: bool) -> tuple[asyncio.Server, list[int]]:
    """A Redis that confirms SUBSCRIBE and then, unless ``answers_ping``, never says a word."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readline()
                if not head:
                    return
                args = []
                for _ in range(int(head[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                name = args[0].upper()
                if name == b"SUBSCRIBE":
                    channel = args[1]
                    writer.write(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel))
                elif name == b"PING":
                    if answers_ping:
                        writer.write(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
                else:  # CLIENT SETINFO and the like
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, connections


async def _connections_after(answers_ping: bool, seconds: float) -> int:
    server, connections = await _fake_redis(answers_ping)
    port = server.sockets[0].getsockname()[1]
    cache = ResultCache(f"redis://127.0.0.1:{port}/0", 60, 0.05, relay_silent_s=0.2)
    relay = asyncio.ensure_future(cache.relay(lambda kind, camera, payload: None))
    await asyncio.sleep(seconds)
    relay.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await relay
    server.close()
    return len(connections)


def test_a_silent_redis_is_left_and_connected_to_again():
    assert asyncio.run(_connections_after(False, 1.5)) >= 2  # silent 0.2 s, PING, silent 0.2 s: reconnect


def test_a_redis_that_answers_its_ping_keeps_the_connection():
    assert asyncio.run(_connections_after(True, 1.5)) == 1
