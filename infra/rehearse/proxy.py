"""The registries for the rehearsal hosts, without touching the root namespace's network: an HTTP
proxy (plain requests and ``CONNECT``) on a unix socket in the root namespace, and in each host a
relay from ``127.0.0.1:PORT`` to that socket. apt and pip in the hosts are pointed at the relay.

    python -m infra.rehearse.proxy serve SOCKET       (root namespace)
    python -m infra.rehearse.proxy relay SOCKET PORT  (inside a host)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import urllib.parse

LIMIT = 64 * 1024
LOOKUP_TRIES = 6  # 0.5 s doubling: about 30 s for a resolver that answers "try again"
_addresses: dict[str, str] = {}
_lookup = asyncio.Lock()


async def address(host: str, port: int) -> str:
    """``host``'s IPv4 address, looked up one name at a time, remembered, and asked again while the
    resolver says "try again". In the micro-VM the names go to qemu's user-mode DNS forwarder,
    which answers parallel lookups (apt asks for its three suites at once, each an A and an AAAA
    query) with failures: every request of a rehearsal's first apt-get update then failed. A
    registry has a handful of names, and the hosts reach nothing by IPv6."""
    if host in _addresses:
        return _addresses[host]
    async with _lookup:
        for attempt in range(LOOKUP_TRIES):
            if host in _addresses:
                break
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
                _addresses[host] = str(infos[0][4][0])
            except socket.gaierror as exc:
                if exc.errno != socket.EAI_AGAIN or attempt == LOOKUP_TRIES - 1:
                    raise
                await asyncio.sleep(0.5 * 2 ** attempt)
    return _addresses[host]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(LIMIT):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


async def _proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client: ``CONNECT host:port`` opens a tunnel; ``GET http://host/path`` is forwarded
    with the request line made relative, one request per connection (``Connection: close``; the
    hosts' apt is told not to pipeline, so no second request follows on the same connection)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        writer.close()
        return
    first, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = first.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await asyncio.wait_for(asyncio.open_connection(await address(host, int(port)), int(port)), 30)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _splice((reader, writer), upstream)
            return
        url = urllib.parse.urlsplit(target)
        if not url.hostname:
            raise ValueError(f"not a proxy request: {target}")
        upstream = await asyncio.wait_for(asyncio.open_connection(await address(url.hostname, url.port or 80), url.port or 80), 30)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        headers = [h for h in rest.split(b"\r\n") if h and not h.lower().startswith((b"proxy-connection:", b"connection:", b"keep-alive:"))]
        upstream[1].write(f"{method} {path} {version}\r\n".encode("latin-1") + b"\r\n".join([*headers, b"Connection: close"]) + b"\r\n\r\n")
        await upstream[1].drain()
        await _splice((reader, writer), upstream)
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"rehearsal proxy: {first.decode('latin-1', 'replace')}: 502 ({exc})", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {len(str(exc))}\r\nConnection: close\r\n\r\n{exc}".encode())
            await writer.drain()
            writer.close()


async def serve(socket_path: str) -> None:
    server = await asyncio.start_unix_server(_proxy, socket_path, limit=LIMIT)
    async with server:
        await server.serve_forever()


async def relay(socket_path: str, port: int) -> None:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_unix_connection(socket_path, limit=LIMIT)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), upstream)

    server = await asyncio.start_server(one, "127.0.0.1", port, limit=LIMIT)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        asyncio.run(serve(argv[1]))
    elif len(argv) == 3 and argv[0] == "relay":
        asyncio.run(relay(argv[1], int(argv[2])))
    else:
        print("usage: python -m infra.rehearse.proxy serve SOCKET | relay SOCKET PORT", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
