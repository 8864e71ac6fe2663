"""
Run the test origin (tests/helpers.py) as a process, for measurements and
manual checks on loopback::

    python -m benchmarks.origin --port 8700 --file big.mp3=100M --rate 50M

Each file's content is deterministic (see L{tests.helpers.body_of}); its
SHA-256 is printed at startup.  Every request is logged on stdout, so the
log counts origin requests.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

from twisted.internet import reactor
from twisted.python import log
from twisted.web.server import Site

from cachetier.config import parse_size
from tests.helpers import TestOrigin, body_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--file", action="append", default=[], help="NAME=SIZE, repeatable")
    parser.add_argument("--rate", help="bytes/s per response, e.g. 50M (default: unthrottled)")
    parser.add_argument("--seed", default="", help="change it to change every file's content")
    args = parser.parse_args()
    origin = TestOrigin()
    origin.rate = parse_size(args.rate) if args.rate else None
    for spec in args.file:
        name, size = spec.split("=", 1)
        body = body_of(parse_size(size), name + args.seed)
        origin.put(name, body)
        print(f"{name}: {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}", flush=True)
    log.startLogging(sys.stdout)
    reactor.listenTCP(args.port, Site(origin), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
