"""
Download analytics: per file and day, requests, bytes sent, complete
downloads, and downloads counted the way podcast measurement counts them
(IAB Podcast Measurement Technical Guidelines, v2):

  - one download per listener (client IP and User-Agent) per file per
    24 hours, from the listener's first request;
  - counted when the bytes delivered to that listener (summed over its
    range requests, aborted ones by what was really sent) reach one minute
    of audio, or the whole file when shorter: one minute is the file's
    size over its duration (from its ID3/MP4 metadata, read with mutagen),
    or 960,000 bytes (128 kbit/s) when the duration is unknown;
  - GET requests answered 200 or 206 only; known bots and monitors (the
    User-Agent fragments in C{data/bots.txt}, and the operator's in
    C{--bots-file}) never count.

Addresses are never stored: a listener is a hash of its address and
User-Agent with a salt that changes every day (yesterday's salt is kept
one more day so a 24-hour window can cross midnight, then deleted).

Stored in SQLite (C{analytics.sqlite3} in the cache directory, WAL mode,
so worker processes write to it too), in batches, in a thread, never on
the reactor thread.  Bounded: at most C{MAX_PENDING} events wait for a
write (more are dropped and counted), listener windows are deleted after
24 hours, daily rows after C{retention_days}.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any, NamedTuple

import mutagen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger()

DB_FILE = "analytics.sqlite3"
WINDOW = 24 * 3600.0
DEFAULT_MINUTE_BYTES = 128_000 // 8 * 60
MAX_PENDING = 100_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS daily (
    file TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0,
    downloads INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (file, day));
CREATE TABLE IF NOT EXISTS windows (
    file TEXT NOT NULL, listener TEXT NOT NULL, started REAL NOT NULL,
    bytes INTEGER NOT NULL, counted INTEGER NOT NULL, PRIMARY KEY (file, listener));
CREATE TABLE IF NOT EXISTS salts (day TEXT PRIMARY KEY, salt BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS media (
    file TEXT NOT NULL, size INTEGER NOT NULL, seconds REAL, PRIMARY KEY (file, size));
"""


def parse_bots(text: str) -> tuple[str, ...]:
    """
    The User-Agent fragments of a bots list: one a line, C{#} comments.
    """
    return tuple(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def load_bots() -> tuple[str, ...]:
    return parse_bots(files("cachetier").joinpath("data/bots.txt").read_text(encoding="utf-8"))


def read_bots_file(path: str) -> tuple[str, ...]:
    """
    An operator's bots list (C{--bots-file}).

    @raise OSError: when it cannot be read.
    @raise ValueError: when it is not UTF-8 text.
    """
    with open(path, encoding="utf-8") as f:
        return parse_bots(f.read())


# Read at import, while twistd still runs as root: after it switches to
# --uid the interpreter's (and the virtualenv's) files may be out of reach.
BOTS = load_bots()
try:
    # mutagen imports its format modules on first use: use it once now.
    mutagen.File(io.BytesIO(b"\0" * 64))
except Exception:
    pass


def is_bot(user_agent: str, bots: tuple[str, ...]) -> bool:
    agent = user_agent.lower()
    return not agent or agent == "-" or any(fragment in agent for fragment in bots)


class Event(NamedTuple):
    """
    One response to a GET for a file, as the access log saw it.
    """

    file: str
    client: str
    user_agent: str
    sent: int
    status: int
    when: float
    size: int | None = None


@functools.lru_cache(maxsize=8)
def _day_of(epoch_day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_day * 86400))


def _day(when: float) -> str:
    return _day_of(int(when // 86400))


def _duration(path: str) -> float | None:
    try:
        media = mutagen.File(path)
    except Exception:
        return None
    length = getattr(getattr(media, "info", None), "length", None)
    return float(length) if length else None


class _Batch:
    """
    What arrived since the last write, summed as it arrives (a dictionary
    update a request on the reactor thread; the rows are written later).

    @ivar daily: (file, day) -> [requests, bytes, complete].
    @ivar listens: what may count as a download: not a bot, some bytes.
    """

    def __init__(self) -> None:
        self.daily: dict[tuple[str, str], list[int]] = {}
        self.listens: list[Event] = []
        self.last = 0.0


class Analytics:
    """
    Records file responses and answers questions about them.

    @param locate: the body's path and size for a file name (or L{None}),
        for its duration; it runs in the writing thread.
    @param run_in_thread: runs a blocking callable off the reactor thread.
    @param bots_file: an operator's bots list, added to C{bots} and read
        again by L{reload_bots} (SIGHUP).
    """

    def __init__(
        self,
        directory: str,
        run_in_thread: Callable[..., Deferred[Any]],
        locate: Callable[[str], tuple[str, int] | None] = lambda name: None,
        retention_days: int = 400,
        bots: tuple[str, ...] | None = None,
        bots_file: str | None = None,
    ) -> None:
        self.path = os.path.join(directory, DB_FILE)
        self._run_in_thread = run_in_thread
        self._locate = locate
        self.retention_days = retention_days
        self._shipped = BOTS if bots is None else bots
        self.bots_file = bots_file
        self.bots = self._shipped
        self._is_bot = functools.lru_cache(maxsize=4096)(lambda agent: is_bot(agent, self.bots))
        self.reload_bots()
        self._batch = _Batch()
        self._writing: Deferred[Any] | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def reload_bots(self) -> None:
        """
        SIGHUP: read the operator's bots list again.  One that cannot be
        read leaves the list as it was, and says why.
        """
        if self.bots_file is None:
            return
        try:
            extra = read_bots_file(self.bots_file)
        except (OSError, ValueError) as e:
            log.error(
                "--bots-file: cannot read {path} ({why}); the bots list is unchanged",
                path=self.bots_file,
                why=getattr(e, "strerror", None) or type(e).__name__,
            )
            return
        self.bots = self._shipped + extra
        self._is_bot.cache_clear()
        log.info("--bots-file: {count} patterns from {path}", count=len(extra), path=self.bots_file)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    # --- recording (reactor thread) ------------------------------------------

    def record(self, event: Event) -> None:
        batch = self._batch
        bot = self._is_bot(event.user_agent)
        size = event.size
        complete = not bot and event.status == 200 and size is not None and event.sent >= size
        key = (event.file, _day(event.when))
        row = batch.daily.get(key)
        if row is None:
            if len(batch.daily) >= MAX_PENDING:
                self.dropped += 1
                return
            row = batch.daily[key] = [0, 0, 0]
        row[0] += 1
        row[1] += event.sent
        row[2] += complete
        batch.last = max(batch.last, event.when)
        if not bot and event.sent > 0:
            if len(batch.listens) >= MAX_PENDING:
                self.dropped += 1
                return
            batch.listens.append(event)

    def flush(self) -> Deferred[Any] | None:
        """
        Write what arrived, in a thread; one write at a time.
        """
        if self._writing is not None or not self._batch.daily:
            return self._writing
        batch, self._batch = self._batch, _Batch()
        d = self._writing = self._run_in_thread(self._write, batch)

        def written(result: Any) -> Any:
            self._writing = None
            return result

        def failed(failure: Any) -> None:
            log.failure("writing analytics failed", failure)

        d.addBoth(written)
        d.addErrback(failed)
        return d

    def query(self, **kwargs: Any) -> Deferred[list[dict[str, Any]]]:
        """
        L{stats}, in a thread.
        """
        return self._run_in_thread(self.stats, **kwargs)

    def drain(self) -> Deferred[Any]:
        """
        Write everything pending, including what arrives during a write
        in progress.
        """
        d: Deferred[Any] = self.flush() or succeed(None)
        d.addCallback(lambda _: self.flush())
        return d

    # --- writing (a thread) ------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        located: dict[str, tuple[str, int] | None] = {}

        def locate(name: str) -> tuple[str, int] | None:
            if name not in located:
                located[name] = self._locate(name)
            return located[name]

        self._located = locate
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO daily (file, day, requests, bytes, complete)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (file, day) DO UPDATE SET"
                    " requests = requests + excluded.requests,"
                    " bytes = bytes + excluded.bytes, complete = complete + excluded.complete",
                    [(f, day, r, b, c) for (f, day), (r, b, c) in batch.daily.items()],
                )
                salts = self._salts(db, batch.last)
                for event in batch.listens:
                    self._listen(db, event, salts)
                self._expire(db, batch.last)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.close()

    def _salts(self, db: sqlite3.Connection, now: float) -> dict[str, bytes]:
        today, yesterday = _day(now), _day(now - 86400)
        db.execute("DELETE FROM salts WHERE day < ?", (yesterday,))
        db.execute(
            "INSERT OR IGNORE INTO salts (day, salt) VALUES (?, ?)",
            (today, secrets.token_bytes(32)),
        )
        return dict(db.execute("SELECT day, salt FROM salts").fetchall())

    def _threshold(self, db: sqlite3.Connection, name: str, size: int) -> int:
        row = db.execute(
            "SELECT seconds FROM media WHERE file = ? AND size = ?", (name, size)
        ).fetchone()
        if row is None:
            located = self._located(name)
            seconds = _duration(located[0]) if located and located[1] == size else None
            db.execute("INSERT OR REPLACE INTO media VALUES (?, ?, ?)", (name, size, seconds))
        else:
            seconds = row[0]
        minute = int(size / seconds * 60) if seconds else DEFAULT_MINUTE_BYTES
        return min(size, minute)

    def _listen(self, db: sqlite3.Connection, event: Event, salts: dict[str, bytes]) -> None:
        """
        Add what one response delivered to its listener's 24-hour window,
        counting a download when the window reaches the threshold.
        """
        size = event.size
        if size is None:
            located = self._located(event.file)
            size = located[1] if located else None
        if size is None:
            return
        hashes = [
            hashlib.sha256(salt + f"{event.client}\0{event.user_agent}".encode()).hexdigest()[:32]
            for _, salt in sorted(salts.items(), reverse=True)
        ]
        window = None
        for listener in hashes:
            window = db.execute(
                "SELECT listener, started, bytes, counted FROM windows"
                " WHERE file = ? AND listener = ? AND started > ?",
                (event.file, listener, event.when - WINDOW),
            ).fetchone()
            if window is not None:
                break
        if window is None:
            listener, started, delivered, counted = hashes[0], event.when, 0, 0
            db.execute(
                "INSERT OR REPLACE INTO windows VALUES (?, ?, ?, 0, 0)",
                (event.file, listener, started),
            )
        else:
            listener, started, delivered, counted = window
        delivered += event.sent
        if not counted and delivered >= self._threshold(db, event.file, size):
            counted = 1
            db.execute(
                "INSERT INTO daily (file, day, requests, bytes, downloads) VALUES (?, ?, 0, 0, 1)"
                " ON CONFLICT (file, day) DO UPDATE SET downloads = downloads + 1",
                (event.file, _day(event.when)),
            )
        db.execute(
            "UPDATE windows SET bytes = ?, counted = ? WHERE file = ? AND listener = ?",
            (delivered, counted, event.file, listener),
        )

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM windows WHERE started <= ?", (now - WINDOW,))
        oldest = _day(now - self.retention_days * 86400)
        db.execute("DELETE FROM daily WHERE day < ?", (oldest,))

    # --- questions -----------------------------------------------------------------

    def stats(
        self,
        file: str | None = None,
        start: str | None = None,
        end: str | None = None,
        group: str = "day",
    ) -> list[dict[str, Any]]:
        """
        Rows of C{file, day, requests, bytes, complete, downloads} (by day),
        or totals by file (C{group="file"}).  Blocking: call in a thread.
        """
        where, args = [], []
        for clause, value in (("file = ?", file), ("day >= ?", start), ("day <= ?", end)):
            if value:
                where.append(clause)
                args.append(value)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        sums = "SUM(requests), SUM(bytes), SUM(complete), SUM(downloads)"
        if group == "file":
            query = (
                f"SELECT file, NULL, {sums} FROM daily {condition} GROUP BY file ORDER BY 6 DESC, 1"
            )
        else:
            query = (
                f"SELECT file, day, {sums} FROM daily {condition} GROUP BY file, day ORDER BY 2, 1"
            )
        with self._lock:
            db = self._connect()
            try:
                rows = db.execute(query, args).fetchall()
            finally:
                db.close()
        keys = ("file", "day", "requests", "bytes", "complete", "downloads")
        result = [dict(zip(keys, row, strict=True)) for row in rows]
        if group == "file":
            for row in result:
                del row["day"]
        return result


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()
