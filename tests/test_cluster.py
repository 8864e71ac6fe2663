"""
The cluster (issue 23): its flags, its Redis connection, and the purge
log between real C{twistd} nodes and a real C{redis-server}.
"""

from __future__ import annotations

import os

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachetier.cluster.connection import connect
from cachetier.config import SettingError, Settings, from_json, to_json
from cachetier.config.tiers import cluster_settings

from .redis_server import start_redis

FLAGS = {
    "cluster": None,
    "cluster-name": "cachetier",
    "cluster-password-file": None,
    "node-url": None,
    "role": "edge",
    "cluster-stream-length": "100000",
    "cluster-max-lag": "5s",
}


def flags(**changed: str | None) -> dict[str, str | None]:
    return {**FLAGS, **{key.replace("_", "-"): value for key, value in changed.items()}}


class FlagTests(SynchronousTestCase):
    def refusal(self, listen: tuple[str, ...] = ("tcp:8080",), **changed: str | None) -> str:
        with self.assertRaises(SettingError) as caught:
            cluster_settings(flags(**changed), listen)
        return str(caught.exception)

    def test_without_cluster_nothing_changes(self) -> None:
        settings = cluster_settings(flags(), ("tcp:8080:interface=10.0.0.5",))
        self.assertIsNone(settings["cluster"])
        self.assertEqual(settings["node_url"], "http://10.0.0.5:8080/")
        self.assertEqual(settings["cluster_stream_length"], 100000)
        self.assertEqual(settings["cluster_max_lag"], 5.0)

    def test_redis_urls(self) -> None:
        for url in ("redis://r:6379/0", "rediss://r.example/2", "unix:///run/redis.sock?db=3"):
            self.assertEqual(cluster_settings(flags(cluster=url), ("tcp:1",))["cluster"], url)

    def test_refusals(self) -> None:
        self.assertIn("not a Redis URL", self.refusal(cluster="http://r:6379/"))
        self.assertIn(
            "--cluster-password-file, not the URL", self.refusal(cluster="redis://:pw@r:6379/0")
        )
        self.assertIn("names no socket", self.refusal(cluster="unix://"))
        self.assertIn("not in 1-65535", self.refusal(cluster="redis://r:99999/0"))
        self.assertIn("needs --cluster", self.refusal(cluster_password_file="/x"))
        self.assertIn("--cluster-name: not a cluster name", self.refusal(cluster_name="a b"))
        self.assertIn("--role must be 'edge' or 'shield'", self.refusal(role="origin"))
        self.assertIn("--cluster-stream-length", self.refusal(cluster_stream_length="10"))
        self.assertIn("--cluster-max-lag: at least 1s", self.refusal(cluster_max_lag="0.5"))
        self.assertIn("--node-url:", self.refusal(node_url="ftp://x/"))

    def test_node_url_by_default_from_the_first_listener(self) -> None:
        def url(*listen: str) -> str | None:
            return cluster_settings(flags(), listen)["node_url"]

        self.assertEqual(url("tcp6:80:interface=\\:\\:1"), "http://[::1]:80/")
        self.assertEqual(url("ssl:443:privateKey=k.pem:interface=1.2.3.4"), "https://1.2.3.4:443/")
        self.assertIsNone(url("tcp:0:interface=127.0.0.1"))
        self.assertIsNone(url("systemd:domain=INET:index=0"))
        self.assertEqual(
            cluster_settings(flags(node_url="http://edge1:8080"), ("tcp:1",))["node_url"],
            "http://edge1:8080/",
        )

    def test_the_password_from_a_file_never_in_repr_nor_json(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret-redis-pw\n")
        fields = cluster_settings(flags(cluster="redis://r/0", cluster_password_file=path), ("x",))
        self.assertEqual(fields["cluster_password"], "s3cret-redis-pw")
        settings = Settings(origin="http://o/", **fields)
        self.assertNotIn("s3cret", repr(settings))
        self.assertNotIn("s3cret", to_json(settings))
        self.assertIsNone(from_json(to_json(settings)).cluster_password)
        self.assertIn(
            "cannot read", self.refusal(cluster="redis://r/0", cluster_password_file="/no")
        )


class ConnectionTests(TestCase):
    async def test_connect_with_the_password_file(self) -> None:
        redis = await start_redis(self, "--requirepass", "pw-from-the-file")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("pw-from-the-file\n")
        fields = cluster_settings(flags(cluster=redis.url, cluster_password_file=path), ("x",))
        client = connect(Settings(origin="http://o/", **fields))
        self.addCleanup(client.close)
        self.assertTrue(await deferToThread(client.ping))
        self.assertEqual(await deferToThread(client.client_getname), "cachetier:cachetier")
