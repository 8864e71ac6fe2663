"""
The checks behind C{twistd cachetier}'s flags: each refusal names its
flag and says why, in words an operator can act on.
"""

from __future__ import annotations

import os
import pwd
import socket
from ipaddress import ip_network

from attrs import evolve
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cachetier.config import Settings, from_json, parse_duration, to_json
from cachetier.config.flags import (
    SettingError,
    admin_token,
    cache_size,
    check_port,
    listen_hint,
    may_write_in,
    option,
    origin_auth,
    owner,
    pidfile,
    positive,
    positive_duration,
    positive_size,
    writable_directory,
)
from cachetier.config.tiers import node_name

AUTH = {
    "origin-auth": "none",
    "s3-region": None,
    "s3-addressing": "path",
    "origin-header-file": None,
}


def _unreadable(path: str) -> None:
    raise FileNotFoundError(2, "No such file or directory", path)


class OptionTests(SynchronousTestCase):
    def refusal(self, parse: object, text: str) -> str:
        with self.assertRaises(SettingError) as caught:
            option("flag", parse, text)  # type: ignore[arg-type]
        return str(caught.exception)

    def test_a_refusal_names_the_flag_and_why(self) -> None:
        self.assertEqual(
            self.refusal(parse_duration, "soon"),
            "--flag: not a duration: 'soon' (examples: 30, 30s, 24h, 7d)",
        )
        self.assertEqual(option("flag", parse_duration, "2m"), 120.0)

    def test_values_that_cannot_work(self) -> None:
        self.assertEqual(
            self.refusal(positive_duration, "0s"), "--flag: must be longer than 0, not '0s'"
        )
        self.assertEqual(
            self.refusal(positive_size, "0"), "--flag: must be at least 1 byte, not '0'"
        )
        self.assertEqual(
            self.refusal(cache_size, "1M"),
            "--flag: must be at least 16M (a cache smaller holds nothing), not '1M'",
        )
        self.assertEqual(self.refusal(positive, "0"), "--flag: must be at least 1, not 0")
        self.assertEqual(
            self.refusal(positive, "many"), "--flag: must be a whole number, not 'many'"
        )
        self.assertEqual(cache_size("16M"), 16 << 20)


class CheckTests(SynchronousTestCase):
    def test_ports_out_of_range_are_refused(self) -> None:
        with self.assertRaises(SettingError) as caught:
            check_port("tcp:99999")
        self.assertEqual(
            str(caught.exception), "--listen 'tcp:99999': port 99999 is not in 0-65535"
        )
        check_port("tcp:0")
        check_port("unix:/tmp/99999")

    def test_a_port_that_is_not_a_number_is_refused(self) -> None:
        with self.assertRaises(SettingError) as caught:
            check_port("tcp:notaport")
        self.assertEqual(
            str(caught.exception), "--listen 'tcp:notaport': the port 'notaport' is not a number"
        )
        check_port("tcp:port=8080:interface=127.0.0.1")

    def test_a_writable_directory_is_tried(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertTrue(writable_directory(directory))
        self.assertFalse(writable_directory("/proc"))
        self.assertFalse(writable_directory(os.path.join(directory, "missing")))

    def test_admin_token(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("short\n")
        with self.assertRaises(SettingError) as caught:
            admin_token(path)
        self.assertEqual(
            str(caught.exception), "--admin-token-file: the token must be at least 16 characters"
        )
        with self.assertRaises(SettingError) as caught:
            admin_token("/nonexistent")
        self.assertEqual(
            str(caught.exception),
            "--admin-token-file: cannot read /nonexistent: No such file or directory",
        )

    def test_origin_auth(self) -> None:
        def refusal(origin: str = "https://host/", **flags: object) -> str:
            with self.assertRaises(SettingError) as caught:
                origin_auth({**AUTH, **flags}, origin, _unreadable)
            return str(caught.exception)

        self.assertEqual(
            refusal(**{"origin-auth": "s3"}), "--origin-auth=s3 needs --s3-region (R2: auto)"
        )
        self.assertEqual(
            refusal(**{"origin-auth": "s3", "s3-region": "auto"}),
            "--s3-addressing=path: the origin URL must name the bucket (https://host/bucket/)",
        )
        self.assertEqual(
            refusal(**{"origin-header-file": "/nonexistent"}),
            "--origin-header-file: cannot read /nonexistent: No such file or directory",
        )
        self.assertEqual(
            origin_auth({**AUTH, "origin-auth": "s3", "s3-region": "auto"}, "https://h/b/", print),
            {
                "origin_auth": "s3",
                "s3_region": "auto",
                "s3_addressing": "path",
                "origin_header_file": None,
            },
        )

    def test_owner(self) -> None:
        self.assertIsNone(owner(None, None))
        # As twistd switches: to the user's own group without --gid.
        nobody = pwd.getpwnam("nobody")
        self.assertEqual(owner(nobody.pw_uid, None), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(owner(4242424, None), (4242424, os.getgid()))  # no such user
        self.assertEqual(owner(1000, 1001), (1000, 1001))


class NodeNameTests(SynchronousTestCase):
    def test_a_name_fit_for_hop_headers_or_a_refusal(self) -> None:
        self.assertEqual(node_name("edge-1.fra"), "edge-1.fra")
        for bad in ("1edge", "edge 1", "edge;1", "e" * 64, ""):
            with self.assertRaises(SettingError) as caught:
                node_name(bad)
            self.assertIn("--node-name: not a node name", str(caught.exception))

    def test_the_default_is_the_host_name_or_its_first_label(self) -> None:
        self.patch(socket, "gethostname", lambda: "web1.example.com")
        self.assertEqual(node_name(None), "web1.example.com")
        self.patch(socket, "gethostname", lambda: "web1.ex ample")
        self.assertEqual(node_name(None), "web1")
        self.patch(socket, "gethostname", lambda: "9")
        self.assertEqual(node_name(None), "cachetier")


class ListenHintTests(SynchronousTestCase):
    def test_only_other_servers_shapes_get_a_hint(self) -> None:
        self.assertEqual(listen_hint("*:80"), " (did you mean tcp:80?)")
        self.assertEqual(
            listen_hint("localhost:8080"), " (did you mean tcp:8080:interface=127.0.0.1?)"
        )
        self.assertIn("ssl:443:privateKey=", listen_hint("https:443"))
        for description in ("tcp:8080", "unix:/run/cachetier.sock", "frob:8080", "8080x"):
            self.assertEqual(listen_hint(description), "", description)


class PidfileTests(SynchronousTestCase):
    """
    With C{--uid}, the pidfile's directory must let that user remove it.
    """

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("giving directories to another user needs root")
        self.nobody = pwd.getpwnam("nobody")
        self.user = (self.nobody.pw_uid, self.nobody.pw_gid)

    def directory(self, mode: int, uid: int = 0) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        os.chmod(os.path.dirname(path), 0o755)
        os.chown(path, uid, 0)
        os.chmod(path, mode)
        return path

    def test_the_users_own_directory_or_one_all_may_write(self) -> None:
        self.assertTrue(may_write_in(self.directory(0o755, self.nobody.pw_uid), *self.user))
        self.assertTrue(may_write_in(self.directory(0o777), *self.user))

    def test_roots_sticky_or_out_of_reach_directories_are_not(self) -> None:
        self.assertFalse(may_write_in(self.directory(0o755), *self.user))
        self.assertFalse(may_write_in(self.directory(0o1777), *self.user))  # /tmp
        hidden = self.directory(0o755, self.nobody.pw_uid)
        os.chmod(os.path.dirname(hidden), 0o700)
        self.assertFalse(may_write_in(hidden, *self.user))
        self.assertFalse(may_write_in(hidden + "/nonexistent", *self.user))

    def test_a_pidfile_the_user_could_not_remove_is_refused(self) -> None:
        directory = self.directory(0o755)
        with self.assertRaises(SettingError) as caught:
            pidfile("twistd.pid", directory, self.user)
        self.assertIn(f"--pidfile=twistd.pid: uid {self.user[0]} could not", str(caught.exception))
        self.assertIn(directory, str(caught.exception))
        pidfile("twistd.pid", directory, None)  # no --uid: root removes it
        pidfile("", directory, self.user)  # --pidfile=: none
        pidfile("twistd.pid", self.directory(0o755, self.nobody.pw_uid), self.user)


class WorkerSettingsTests(SynchronousTestCase):
    def test_a_worker_gets_the_same_settings_but_the_admin_token(self) -> None:
        settings = Settings(
            origin="http://127.0.0.1:9/",
            listen=("tcp:8080", "tcp6:8080"),
            trusted_proxies=(ip_network("10.0.0.0/8"), ip_network("fd00::/8")),
            max_size=1 << 30,
            admin_token=b"a-long-enough-admin-token",
        )
        text = to_json(settings)
        self.assertNotIn("a-long-enough-admin-token", text)
        self.assertEqual(from_json(text), evolve(settings, admin_token=None))
