"""
TLS listeners: C{ssl:} endpoint descriptions whose certificate files can
be read again (on SIGHUP) without a restart, and whose whole chain is
served.

Twisted's own C{ssl:} parser takes only the first certificate of the
C{certKey} file: a C{fullchain.pem} (what Let's Encrypt and most CAs hand
out) loses its intermediates, and clients that do not have them cached
fail with "unable to verify the first certificate".  Here every
certificate after the first in C{certKey}, and any in C{extraCertChain},
is sent after the leaf.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, quoteStringArgument, serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from .config import default_backlog, parse_endpoint

log = Logger()

_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


@implementer(IOpenSSLContextFactory)
class ReloadableCertificate:
    """
    A TLS context factory for a listener, built from a key file and a
    certificate file (leaf first, then its chain), and rebuilt from them by
    L{reload}.  Each new connection takes the current context.
    """

    def __init__(self, key_path: str, cert_path: str, chain_path: str | None = None) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self.chain_path = chain_path
        self._options = self._load()

    def _load(self) -> ssl.CertificateOptions:
        with open(self.cert_path, "rb") as f:
            pems = _CERTIFICATE.findall(f.read())
        if self.chain_path is not None:
            with open(self.chain_path, "rb") as f:
                pems += _CERTIFICATE.findall(f.read())
        if not pems:
            raise ValueError(f"no certificate in {self.cert_path}")
        with open(self.key_path, "rb") as f:
            key = ssl.KeyPair.load(f.read(), FILETYPE_PEM)
        leaf = ssl.Certificate.loadPEM(pems[0])
        if not leaf.getPublicKey().matches(key):
            raise ValueError(f"the key in {self.key_path} is not the certificate's")
        chain = [ssl.Certificate.loadPEM(pem).original for pem in pems[1:]]
        return ssl.CertificateOptions(
            privateKey=key.original, certificate=leaf.original, extraCertChain=chain
        )

    def reload(self) -> None:
        """
        Read the files again; on any error the certificate in use stays.
        """
        self._options = self._load()
        log.info("TLS certificate reloaded from {path}", path=self.cert_path)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()


@implementer(IStreamServerEndpoint)
class TLSOverEndpoint:
    """
    TLS over the connections of another endpoint: a socket systemd passes
    (C{systemd:domain=INET:name=https:privateKey=...:certKey=...}).
    """

    def __init__(self, endpoint: Any, certificate: ReloadableCertificate) -> None:
        self.endpoint = endpoint
        self.certificate = certificate

    def listen(self, factory: Any) -> Any:
        return self.endpoint.listen(TLSMemoryBIOFactory(self.certificate, False, factory))


def is_tls(description: str) -> bool:
    return description.startswith("ssl:") or (
        description.startswith("systemd:") and "privateKey=" in description
    )


def tls_endpoint(reactor: Any, description: str) -> tuple[Any, ReloadableCertificate]:
    """
    An endpoint for C{ssl:PORT:privateKey=KEY[:certKey=CERT]
    [:extraCertChain=CHAIN][:interface=ADDRESS][:backlog=N]}, or for a
    systemd socket with the same certificate fields, and its reloadable
    certificate.

    @raise ValueError: when the description or the files are unusable.
    @raise OSError: when a file cannot be read.
    """
    kind, positional, named = parse_endpoint(description)
    key = named.pop("privateKey", None)
    if key is None:
        raise ValueError(f"{kind}: needs privateKey= for TLS")
    certificate = ReloadableCertificate(
        key, named.pop("certKey", key), named.pop("extraCertChain", None)
    )
    if kind == "systemd":
        rest = ":".join(
            [quoteStringArgument(p) for p in positional]
            + [f"{k}={quoteStringArgument(v)}" for k, v in named.items()]
        )
        return TLSOverEndpoint(
            serverFromString(reactor, f"systemd:{rest}"), certificate
        ), certificate
    port = named.pop("port", positional[0] if positional else None)
    if port is None:
        raise ValueError("ssl: needs a port")
    interface = named.pop("interface", "")
    backlog = int(named.pop("backlog", default_backlog()))
    if named:
        raise ValueError(f"ssl: does not take {', '.join(sorted(named))}")
    endpoint = SSL4ServerEndpoint(reactor, int(port), certificate, backlog, interface)
    return endpoint, certificate
