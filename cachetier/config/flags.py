"""
The checks that turn C{twistd cachetier}'s flags into L{Settings}: every
value refused with a message naming its flag.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import stat
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..names import normalise_base
from . import SettingError, Settings, parse_duration, parse_endpoint, parse_rate, parse_size
from .tiers import tiers

T = TypeVar("T")

# The smallest --max-size taken: below this a cache holds next to nothing.
MIN_CACHE_SIZE = 16 << 20


class StartupFailure(SystemExit, Exception):
    """
    Start-up cannot go on (a port that cannot be bound, a cache directory
    out of reach): the process ends with one line and exit status 1.

    Both kinds on purpose.  twistd reports an L{Exception} raised while
    the application starts: without C{-n}, through the pipe its waiting
    parent reads (the parent prints it, cut at 100 bytes, and exits 1),
    and it removes the pidfile; a L{SystemExit} alone skips both and
    leaves the parent waiting forever.  Being a L{SystemExit} too, it then
    ends the process with its line alone, no traceback.

    @ivar code: the line the interpreter prints as it exits.
    """

    # twistd's parent shows the class's dotted name before the message,
    # within its 100 bytes: the short name leaves room for the message.
    __module__ = "cachetier"

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.code = f"cachetier: {why}"


def option(flag: str, parse: Callable[[str], T], text: str) -> T:
    """
    C{parse(text)}, or a L{SettingError} naming C{--flag} and why.
    """
    try:
        return parse(text)
    except ValueError as e:
        raise SettingError(f"--{flag}: {e}") from None


def positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, not {text!r}")
    return seconds


def positive_size(text: str) -> int:
    size = parse_size(text)
    if size < 1:
        raise ValueError(f"must be at least 1 byte, not {text!r}")
    return size


def cache_size(text: str) -> int:
    size = parse_size(text)
    if size < MIN_CACHE_SIZE:
        raise ValueError(f"must be at least 16M (a cache smaller holds nothing), not {text!r}")
    return size


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def writable_directory(path: str) -> bool:
    """
    Whether a directory can be made in C{path}: tried, since
    C{os.access} says yes to root anywhere, C{/proc} included.
    """
    if not os.path.isdir(path):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cachetier-probe-", dir=path))
    except OSError:
        return False
    return True


def check_port(description: str) -> None:
    """
    Refuse a TCP or TLS port out of range (the endpoint parser takes any
    number; bind() would refuse it only after start-up).
    """
    kind, positional, named = parse_endpoint(description)
    if kind not in ("tcp", "tcp6", "ssl"):
        return
    port = named.get("port", positional[0] if positional else "")
    if not port.isdigit():
        raise SettingError(f"--listen {description!r}: the port {port!r} is not a number")
    if not 0 <= int(port) <= 65535:
        raise SettingError(f"--listen {description!r}: port {port} is not in 0-65535")


def listen_hint(description: str) -> str:
    """
    What a C{--listen} written as another server's listen directive
    (nginx's C{8080}, C{127.0.0.1:8080}, a URL's scheme) is in Twisted's
    words, as a suggestion; C{""} for anything else.
    """
    host, _, port = description.rpartition(":")
    if not port.isdigit():
        return ""
    if host in ("", "*", "http"):
        return f" (did you mean tcp:{port}?)"
    if host == "https":
        return f" (did you mean ssl:{port}:privateKey=KEY.pem:certKey=FULLCHAIN.pem?)"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    kind = "tcp" if address.version == 4 else "tcp6"
    interface = str(address).replace(":", "\\:")
    return f" (did you mean {kind}:{port}:interface={interface}?)"


def admin_token(path: str | None) -> bytes | None:
    """
    The admin token, from a file or the environment: never from the
    command line, where every user of the machine could read it.
    """
    if path is None:
        token = os.environ.get("CACHETIER_ADMIN_TOKEN", "").encode("utf-8").strip()
        return token or None
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise SettingError(f"--admin-token-file: cannot read {path}: {e.strerror}") from None
    if len(token) < 16:
        raise SettingError("--admin-token-file: the token must be at least 16 characters")
    return token


def origin_auth(
    flags: Mapping[str, Any], origin: str, read_header_file: Callable[[str], object]
) -> dict[str, Any]:
    """
    The origin's authentication settings, checked together.

    @param read_header_file: reads an origin header file, raising
        L{OSError} or L{ValueError} when it cannot be used.
    """
    auth, region, addressing = flags["origin-auth"], flags["s3-region"], flags["s3-addressing"]
    if auth not in ("none", "s3"):
        raise SettingError(f"--origin-auth must be 'none' or 's3', not {auth!r}")
    if addressing not in ("path", "virtual"):
        raise SettingError(f"--s3-addressing must be 'path' or 'virtual', not {addressing!r}")
    if auth == "s3":
        if not region:
            raise SettingError("--origin-auth=s3 needs --s3-region (R2: auto)")
        if addressing == "path" and urlsplit(origin).path.strip("/") == "":
            raise SettingError(
                "--s3-addressing=path: the origin URL must name the bucket (https://host/bucket/)"
            )
    header_file = flags["origin-header-file"]
    if header_file is not None:
        try:
            read_header_file(header_file)
        except OSError as e:
            raise SettingError(
                f"--origin-header-file: cannot read {header_file}: {e.strerror}"
            ) from None
        except ValueError as e:
            raise SettingError(f"--origin-header-file: {e}") from None
    return {
        "origin_auth": auth,
        "s3_region": region,
        "s3_addressing": addressing,
        "origin_header_file": header_file,
    }


def owner(uid: int | None, gid: int | None) -> tuple[int, int] | None:
    """
    The user and group twistd will switch to (C{--uid}, C{--gid}), if
    any: the cache directory is made theirs.
    """
    if uid is None:
        return None
    if gid is not None:
        return uid, gid
    # twistd takes the user's own group when only --uid is given.
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid, os.getgid()


def pidfile(path: str | None, rundir: str, owner: tuple[int, int] | None) -> None:
    """
    Refuse a twistd C{--pidfile} that the user twistd switches to could
    not remove at stop: twistd writes it as root, before the switch, and
    removes it after, which takes writing in its directory.  A pidfile
    left behind names a process that is gone, or another one later.

    @param rundir: twistd's C{--rundir}, where a relative C{path} is.
    """
    if not path or owner is None or owner[0] == 0:
        return
    directory = os.path.dirname(os.path.abspath(os.path.join(rundir, path)))
    if not may_write_in(directory, *owner):
        raise SettingError(
            f"--pidfile={path}: uid {owner[0]} could not remove it at stop (it cannot write"
            f" in {directory}); put it in a directory of that user's, e.g. /run/cachetier/"
        )


def may_write_in(directory: str, uid: int, gid: int) -> bool:
    """
    Whether C{uid}, with C{gid} and its user's groups, may remove a file
    of root's from C{directory}, by the mode bits of the directory and
    its parents (ACLs aside).
    """
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}

    def allows(path: str, bits: int) -> bool:
        st = os.stat(path)
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits

    try:
        parents = [directory]
        while parents[-1] != os.path.dirname(parents[-1]):
            parents.append(os.path.dirname(parents[-1]))
        if not all(allows(parent, 0o1) for parent in parents[1:]):
            return False
        # In a sticky directory (/tmp) only the file's owner, root here,
        # or the directory's may remove it.
        sticky = os.stat(directory).st_mode & stat.S_ISVTX
        return allows(directory, 0o3) and not (sticky and os.stat(directory).st_uid != uid)
    except OSError:
        return False


def trusted_proxy(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """
    A C{--trusted-proxy}: an address or a CIDR network.
    """
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise SettingError(f"--trusted-proxy: not an address or network: {cidr!r}") from None


def settings_from(
    flags: Mapping[str, Any],
    check_listen: Callable[[str], None],
    read_header_file: Callable[[str], object],
) -> Settings:
    """
    The L{Settings} of C{twistd cachetier}'s flags, every value checked.

    @param flags: the flags by name, as L{twisted.python.usage.Options}
        holds them.
    @param check_listen: raises L{SettingError} for a C{--listen}
        description that cannot be listened on.
    @raise SettingError: naming the first flag refused.
    """
    where = _where(flags, check_listen)
    return Settings(
        **where,
        **_bounds(flags),
        admin_token=admin_token(flags["admin-token-file"]),
        trusted_proxies=tuple(flags["trusted-proxy"]),
        forward_request_headers=tuple(flags["forward-request-header"]),
        shutdown_grace=option("shutdown-grace", parse_duration, flags["shutdown-grace"]),
        fill_connections=option("fill-connections", positive, flags["fill-connections"]),
        analytics_retention_days=_retention(flags["analytics-retention"]),
        bots_file=_bots_file(flags["bots-file"]),
        **tiers(flags),
        **origin_auth(flags, where["origin"], read_header_file),
    )


def _where(flags: Mapping[str, Any], check_listen: Callable[[str], None]) -> dict[str, Any]:
    """
    What the service talks to and where it keeps things: the origin, the
    listeners and processes, the logs and the cache directory.
    """
    if not flags["origin"]:
        raise SettingError("--origin is required")
    origin = option("origin", normalise_base, flags["origin"])
    public_url = None
    if flags["public-url"]:
        public_url = option("public-url", normalise_base, flags["public-url"])
    if flags["miss"] not in ("stream", "redirect"):
        raise SettingError(f"--miss must be 'stream' or 'redirect', not {flags['miss']!r}")
    listen = tuple(flags["listen"]) or ("tcp:8080",)
    for description in listen:
        check_port(description)
        check_listen(description)
    workers = _workers(flags["workers"], listen)
    access_log = flags["access-log"]
    if access_log not in (None, "off"):
        directory = os.path.dirname(os.path.abspath(access_log))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise SettingError(f"--access-log: cannot write in {directory}")
    cache_dir = os.path.abspath(flags["cache-dir"])
    return {
        "origin": origin,
        "public_url": public_url,
        "miss": flags["miss"],
        "listen": listen,
        "workers": workers,
        "access_log": access_log,
        "cache_dir": cache_dir,
        "min_free": _min_free(cache_dir, flags["min-free"]),
    }


def _workers(text: str, listen: tuple[str, ...]) -> int:
    workers = len(os.sched_getaffinity(0)) if text == "auto" else option("workers", positive, text)
    if workers > 1:
        for description in listen:
            if not description.startswith(("tcp:", "tcp6:")):
                raise SettingError(
                    f"--workers shares plain TCP listeners only, not {description!r}"
                )
    return workers


def _min_free(cache_dir: str, text: str) -> int:
    """
    C{--min-free}, checked against the file system the cache directory
    will be made in (which must be writable).
    """
    existing = cache_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not writable_directory(existing):
        raise SettingError(f"--cache-dir: {existing} is not a writable directory")
    min_free = option("min-free", parse_size, text)
    st = os.statvfs(existing)
    if min_free >= st.f_blocks * st.f_frsize:
        raise SettingError(
            f"--min-free: {text} is not less than the"
            f" {st.f_blocks * st.f_frsize >> 20} MiB the cache's file system holds"
        )
    return min_free


def _bounds(flags: Mapping[str, Any]) -> dict[str, Any]:
    """
    The limits, timeouts and lifetimes, each checked.
    """

    def value(flag: str, parse: Callable[[str], T]) -> T:
        return option(flag, parse, flags[flag])

    def size(flag: str, parse: Callable[[str], int] = positive_size) -> int | None:
        return None if flags[flag] is None else value(flag, parse)

    return {
        "max_concurrent_syncs": value("max-concurrent-syncs", positive),
        "origin_timeout": value("origin-timeout", positive_duration),
        "cache_control_max_age": int(value("cache-control-max-age", parse_duration)),
        "negative_ttl": value("negative-ttl", parse_duration),
        "max_variants": value("max-variants", positive),
        "ttl": value("ttl", parse_duration),
        "stale_if_error": value("stale-if-error", parse_duration),
        "stale_while_revalidate": value("stale-while-revalidate", parse_duration),
        "max_size": size("max-size", cache_size),
        "max_object_size": size("max-object-size"),
        "max_queued_syncs": value("max-queued-syncs", positive),
        "max_syncs_per_second": float(value("max-syncs-per-second", positive)),
        "max_syncs_per_client": float(value("max-syncs-per-client", positive)),
        "idle_timeout": value("idle-timeout", positive_duration),
        "send_timeout": value("send-timeout", positive_duration),
        "max_connections": size("max-connections", positive),
        "origin_min_rate": value("origin-min-rate", parse_rate),
        "queue_timeout": value("queue-timeout", positive_duration),
        "origin_retries": value("origin-retries", positive),
        "breaker_threshold": value("breaker-threshold", positive),
        "breaker_cooloff": value("breaker-cooloff", positive_duration),
    }


def _bots_file(path: str | None) -> str | None:
    """
    C{--bots-file}: a UTF-8 text file that can be read now (and, to be
    read again on SIGHUP, by the user the service runs as).
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            f.read()
    except OSError as e:
        raise SettingError(f"--bots-file: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise SettingError(f"--bots-file: {path} is not UTF-8 text") from None
    return os.path.abspath(path)


def _retention(text: str) -> int | None:
    if text == "off":
        return None
    days = option("analytics-retention", positive_duration, text) / 86400
    if days < 1:
        raise SettingError("--analytics-retention: at least 1d, or 'off'")
    return int(days)
