"""
TLS listeners: a fullchain certificate file serves its whole chain, and
certificates are reloaded without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import Site
from twisted.web.static import Data

from cachetier.tls import tls_endpoint


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool, serial: int
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class Chain:
    """
    A test CA, an intermediate it signed, and leaves for 127.0.0.1 the
    intermediate signs; the server gets only the leaf and intermediate.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory)
        self.directory = directory
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root = _issue("Test Root CA", self.root_key, "Test Root CA", self.root_key, True, 1)
        self.ca = os.path.join(directory, "ca.pem")
        with open(self.ca, "wb") as f:
            f.write(_pem(root))
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _issue(
            "Test Intermediate", self.intermediate_key, "Test Root CA", self.root_key, True, 2
        )
        self.key = os.path.join(directory, "key.pem")
        self.fullchain = os.path.join(directory, "fullchain.pem")

    def issue_leaf(self, serial: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _issue("127.0.0.1", key, "Test Intermediate", self.intermediate_key, False, serial)
        with open(self.key, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with open(self.fullchain, "wb") as f:
            f.write(_pem(leaf, self.intermediate))


def _peer_serial(port: int, ca: str) -> int:
    """
    Connect trusting only the root CA (as a client that has no
    intermediates cached); the serial of the leaf the server sent.
    """
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class FullchainTests(TestCase):
    async def asyncSetUp(self) -> None:
        self.chain = Chain(os.path.abspath(self.mktemp()))
        self.chain.issue_leaf(serial=1000)
        endpoint, self.certificate = tls_endpoint(
            reactor,
            f"ssl:0:interface=127.0.0.1:privateKey={self.chain.key}:certKey={self.chain.fullchain}",
        )
        port = await endpoint.listen(Site(Data(b"hello", "text/plain")))
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def test_the_intermediate_is_served(self) -> None:
        await self.asyncSetUp()
        self.assertEqual(await deferToThread(_peer_serial, self.port, self.chain.ca), 1000)

    async def test_openssl_verifies_the_chain(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("openssl is not installed")
        await self.asyncSetUp()
        result = await deferToThread(
            subprocess.run,
            [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{self.port}",
                "-CAfile",
                self.chain.ca,
                "-verify_return_error",
            ],
            input=b"",
            capture_output=True,
            timeout=20,
        )
        output = result.stdout.decode()
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("Verification: OK", output)
        # The chain sent: the leaf, then the intermediate the CA signed.
        self.assertRegex(output, r"1 s:\s*CN\s*=\s*Test Intermediate")

    async def test_a_reload_takes_new_certificates_and_a_bad_one_keeps_the_old(self) -> None:
        await self.asyncSetUp()
        self.chain.issue_leaf(serial=2000)
        self.certificate.reload()
        self.assertEqual(await deferToThread(_peer_serial, self.port, self.chain.ca), 2000)
        with open(self.chain.fullchain, "wb") as f:
            f.write(b"half a file")
        with self.assertRaises(ValueError):
            self.certificate.reload()
        self.assertEqual(await deferToThread(_peer_serial, self.port, self.chain.ca), 2000)
