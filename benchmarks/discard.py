"""
A load client light enough not to be the bottleneck of big-file tests:
N keep-alive connections GET one path over and over and throw the bodies
away with C{recv(MSG_TRUNC)}, which skips the copy to user space::

    python -m benchmarks.discard --port 8080 --path /big --connections 16 --seconds 10

Prints one JSON line: bytes, responses and seconds.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time

_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)


class _Connection:
    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.request = request
        self.head = b""
        self.remaining = 0

    def send_request(self) -> None:
        self.sock.sendall(self.request)
        self.head = b""
        self.remaining = -1  # reading headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    request = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    sink = bytearray(4 * 1024 * 1024)
    view = memoryview(sink)
    total = responses = 0
    connections = [_Connection(args.port, request) for _ in range(args.connections)]
    for c in connections:
        selector.register(c.sock, selectors.EVENT_READ, c)
        c.send_request()
    started = time.monotonic()
    deadline = started + args.seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            c: _Connection = key.data
            if c.remaining < 0:
                data = c.sock.recv(65536, socket.MSG_PEEK)
                if not data:
                    raise SystemExit("the server closed a connection")
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > 16384:
                        raise SystemExit("no end of headers")
                    continue
                head = c.sock.recv(end + 4)
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    raise SystemExit(f"status {status}")
                length = [
                    line
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ]
                c.remaining = int(length[0].split(b":")[1])
                continue
            n = c.sock.recv_into(view, min(len(sink), c.remaining), _TRUNC)
            if n == 0:
                raise SystemExit("the server closed a connection mid-body")
            c.remaining -= n
            total += n
            if c.remaining == 0:
                responses += 1
                c.send_request()
    elapsed = time.monotonic() - started
    for c in connections:
        c.sock.close()
    print(json.dumps({"bytes": total, "responses": responses, "seconds": elapsed}))


if __name__ == "__main__":
    main()
