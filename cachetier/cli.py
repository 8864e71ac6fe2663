"""
The C{cachetier} command: operator tools that talk to a running server's
admin API (never to the origin).

  cachetier warm [NAME ...] [--from-file FILE|-] [--feed URL] [--watch SECONDS]
  cachetier stats [--file NAME] [--from DAY] [--to DAY] [--group day|file] [--cluster]
                  [--format table|csv]

Warms files ahead of a release: each is synced by the server at low
priority, at most C{--jobs} at a time, with a progress bar per file in
flight and a total on a terminal, a line per event otherwise, and a
summary table at the end.  Exit status 0 only if every file is cached.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any
from urllib.parse import quote, urlencode

from attrs import define, field
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .feeds import Feed, FeedError, FeedNames, names_from
from .names import InvalidName, validate_name

DONE = frozenset({"cached"})
FAILED = frozenset({"not_found", "error"})
# The width of a console that is not a terminal: nothing is cut to fit.
UNBOUNDED = 1 << 16
# --help's description: the docstring's first paragraph is epytext.
DESCRIPTION = "Operator tools that talk to a running cachetier's admin API (never to the origin)."


class ServerError(Exception):
    pass


class Server:
    """
    The admin API of a running cachetier.
    """

    def __init__(self, base: str, token: str, timeout: float = 10.0) -> None:
        self.base = base if base.endswith("/") else base + "/"
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.load(e)
            except ValueError:
                raise ServerError(f"{path}: HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise ServerError(f"cannot reach {self.base}: {e}") from None

    def origin(self) -> str:
        _, health = self.call("GET", "healthz")
        return str(health["origin"])

    def warm(self, name: str) -> tuple[int, Any]:
        return self.call("POST", "api/v1/warm", {"files": [name]})

    def status(self, name: str) -> dict[str, Any]:
        _, body = self.call("GET", f"api/v1/files/{quote(name, safe='/-._~')}?sync=0")
        return body  # type: ignore[no-any-return]

    def syncs(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """
        The downloads under way by name, and the names waiting to be warmed.
        """
        _, body = self.call("GET", "api/v1/syncs")
        return {s["file"]: s for s in body.get("syncs", [])}, set(body.get("warm_queue", []))


class Display:
    """
    Progress as it happens: bars on a terminal, a line per event elsewhere.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.total: TaskID | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}", justify="left"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.progress.start()
            self.total = self.progress.add_task("[bold]total", total=None)

    def event(self, name: str, what: str) -> None:
        if not self.live:
            self.console.print(f"{what} {name}", highlight=False)

    def update(self, name: str, done: int, size: int | None) -> None:
        if self.progress is None:
            return
        task = self.tasks.get(name)
        if task is None:
            task = self.tasks[name] = self.progress.add_task(name, total=size)
        self.progress.update(task, completed=done, total=size)

    def finish(self, name: str, size: int | None) -> None:
        if self.progress is not None and name in self.tasks:
            self.progress.remove_task(self.tasks.pop(name))

    def totals(self, done: int, total: int) -> None:
        if self.progress is not None and self.total is not None:
            self.progress.update(self.total, completed=done, total=total or None)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@define
class Warming:
    """
    One warm in progress: the names not yet asked for, the syncs followed,
    and each finished name's final state and size.
    """

    server: Server
    display: Display
    pending: deque[str]
    flying: dict[str, str] = field(factory=dict)
    results: dict[str, dict[str, Any]] = field(factory=dict)
    sizes: dict[str, int] = field(factory=dict)

    def ask(self, jobs: int) -> None:
        """
        Ask the server to warm pending names while fewer than C{jobs} are in
        flight, until it says it is busy.
        """
        while self.pending and len(self.flying) < jobs:
            name = self.pending.popleft()
            code, body = self.server.warm(name)
            if code == 503:
                self.pending.appendleft(name)  # the server is busy: try again soon
                break
            if code != 200:
                note = body.get("message", f"HTTP {code}")
                self.results[name] = {"state": "error", "note": note}
                self.display.event(name, "failed")
                continue
            state = body["files"][0]["state"]
            if state in DONE | FAILED:
                self.finished(name, state, self.server.status(name))
            else:
                self.flying[name] = state
                self.display.event(name, state)

    def follow(self) -> dict[str, dict[str, Any]]:
        """
        Update the syncs in flight from the server and finish those that
        ended; returns the downloads under way by name.
        """
        syncs, queued = self.server.syncs()
        for name in list(self.flying):
            if name in queued:
                continue
            sync = syncs.get(name)
            if sync is not None:
                if sync.get("size"):
                    self.sizes[name] = sync["size"]
                self.display.update(name, sync["bytes_synced"], sync.get("size"))
                continue
            status = self.server.status(name)
            if status["state"] == "syncing":
                continue
            del self.flying[name]
            self.sizes[name] = status.get("size") or self.sizes.get(name, 0)
            self.display.finish(name, status.get("size"))
            self.finished(name, status["state"], status)
        return syncs

    def finished(self, name: str, state: str, status: dict[str, Any]) -> None:
        """
        Record C{name}'s final C{state} with the size and error of its
        C{status}, and show it.
        """
        self.results[name] = {
            "state": state,
            "size": status.get("size"),
            "note": status.get("error") or "",
        }
        self.display.event(name, "cached" if state in DONE else "failed")

    def show_totals(self, syncs: dict[str, dict[str, Any]]) -> None:
        """
        Show the bytes cached and under way against the sizes known so far.
        """
        total = sum(self.sizes.values())
        done = sum(self.sizes.get(n, 0) for n, r in self.results.items() if r["state"] == "cached")
        done += sum(syncs[n]["bytes_synced"] for n in self.flying if n in syncs)
        self.display.totals(done, total)


def warm(
    server: Server, names: list[str], jobs: int, display: Display, poll: float
) -> dict[str, Any]:
    """
    Have the server cache C{names}, C{jobs} at a time; returns each name's
    final state and size.
    """
    run = Warming(server, display, deque(names))
    while run.pending or run.flying:
        run.ask(jobs)
        if not run.flying:
            if run.pending:
                time.sleep(poll)
            continue
        time.sleep(poll)
        run.show_totals(run.follow())
    return run.results


def summary(console: Console, results: dict[str, Any], found: FeedNames) -> None:
    """
    A row per file warmed (with the tracking prefix its feed URL lost)
    and per feed URL skipped.
    """
    table = Table(title="cachetier warm")
    table.add_column("file", overflow="fold")
    table.add_column("state")
    table.add_column("size", justify="right")
    table.add_column("note", overflow="fold")
    for name, result in results.items():
        size = result.get("size")
        notes = [result.get("note", "")]
        if name in found.prefixes:
            notes.append(f"tracking prefix {found.prefixes[name]} stripped")
        table.add_row(
            name,
            result["state"],
            "" if size is None else f"{size:,}",
            "; ".join(n for n in notes if n),
        )
    for url, why in found.skipped:
        table.add_row(url, "skipped", "", why)
    console.print(table)


def _token(path: str | None) -> str:
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    token = os.environ.get("CACHETIER_ADMIN_TOKEN", "").strip()
    if not token:
        raise ServerError("no admin token: --admin-token-file or CACHETIER_ADMIN_TOKEN")
    return token


def _read_names(args: argparse.Namespace) -> list[str]:
    names = list(args.names)
    if args.from_file is not None:
        lines = sys.stdin if args.from_file == "-" else open(args.from_file, encoding="utf-8")
        with lines:
            names += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for name in names:
        try:
            validate_name(name)
        except InvalidName as e:
            raise ServerError(f"{name!r} is not a valid name: {e}") from None
    return names


def run_warm(args: argparse.Namespace, console: Console) -> int:
    server = Server(args.server, _token(args.admin_token_file))
    names = _read_names(args)
    found = FeedNames()
    feed = Feed(args.feed) if args.feed else None
    origin = server.origin() if feed else ""
    if feed is not None:
        found = names_from(feed.enclosures() or [], origin)
        names += [n for n in found.names if n not in names]
    if not names and feed is None:
        raise ServerError("nothing to warm: give names, --from-file or --feed")
    display = Display(console)
    try:
        results = warm(server, names, args.jobs, display, args.poll)
    finally:
        display.stop()
    summary(console, results, found)
    ok = all(r["state"] == "cached" for r in results.values())
    if args.watch is None:
        return 0 if ok else 1
    assert feed is not None
    seen = set(names)
    while True:
        time.sleep(args.watch)
        urls = feed.enclosures()
        if urls is None:
            continue
        found = names_from(urls, origin)
        new = [n for n in found.names if n not in seen]
        if not new:
            continue
        seen.update(new)
        console.print(f"new in the feed: {', '.join(new)}", highlight=False)
        display = Display(console)
        try:
            results = warm(server, new, args.jobs, display, args.poll)
        finally:
            display.stop()
        summary(console, results, FeedNames([], [], found.prefixes))


def run_stats(args: argparse.Namespace, console: Console) -> int:
    server = Server(args.server, _token(args.admin_token_file))
    query = {"group": args.group}
    for key, value in (("file", args.file), ("from", args.start), ("to", args.end)):
        if value:
            query[key] = value
    if args.cluster:
        query["scope"] = "cluster"
    code, body = server.call("GET", "api/v1/stats?" + urlencode(query))
    if code != 200:
        raise ServerError(body.get("message", f"HTTP {code}"))
    for missing in body.get("unanswered", []):
        print(
            f"cachetier stats: {missing['node']} did not answer: {missing['error']}",
            file=sys.stderr,
        )
    columns = ["file", "day", "requests", "bytes", "complete", "downloads"]
    if args.group == "file":
        columns.remove("day")
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] for row in body["rows"])
        return 0
    table = Table(title="downloads (IAB-style: one a listener a file a day)")
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in ("file", "day") else "right",
            overflow="fold",
        )
    for row in body["rows"]:
        table.add_row(*(f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns))
    console.print(table)
    return 0


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="http://127.0.0.1:8080/", help="the cachetier")
    parser.add_argument(
        "--admin-token-file", metavar="FILE", help="the admin token (or CACHETIER_ADMIN_TOKEN)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cachetier", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("warm", help="cache files ahead of their listeners")
    w.add_argument("names", nargs="*", help="file names (as under /files/)")
    w.add_argument("--from-file", metavar="FILE", help="names, one a line ('-': stdin)")
    w.add_argument("--feed", metavar="URL", help="an RSS or Atom podcast feed")
    _server_options(w)
    w.add_argument("--jobs", type=int, default=4, help="files synced at once (default 4)")
    w.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep polling --feed this often and warm new episodes",
    )
    w.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    st = commands.add_parser("stats", help="download counts per file and day")
    _server_options(st)
    st.add_argument("--file", help="one file only")
    st.add_argument("--from", dest="start", metavar="YYYY-MM-DD")
    st.add_argument("--to", dest="end", metavar="YYYY-MM-DD")
    st.add_argument("--group", choices=("day", "file"), default="day")
    st.add_argument(
        "--cluster", action="store_true", help="every live node's counts, merged (--cluster)"
    )
    st.add_argument(
        "--format", choices=("table", "csv"), default="table", help="a table, or CSV rows"
    )
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Piped or redirected: a table as wide as its contents, never cut.
        console = Console(width=UNBOUNDED)
    try:
        if args.command == "stats":
            return run_stats(args, console)
        if args.watch is not None and not args.feed:
            parser.error("--watch needs --feed")
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        return run_warm(args, console)
    except (ServerError, FeedError) as e:
        print(f"cachetier {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
