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
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
# Description fields are separated by unescaped colons (see
# twisted.internet.endpoints.quoteStringArgument).
_FIELD = re.compile(r"(?<!\\):")


def _fields(description: str) -> tuple[list[str], dict[str, str]]:
    parts = [p.replace("\\:", ":").replace("\\\\", "\\") for p in _FIELD.split(description)]
    positional, named = [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            named[key] = value
        else:
            positional.append(part)
    return positional, named


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


def tls_endpoint(reactor: Any, description: str) -> tuple[Any, ReloadableCertificate]:
    """
    An endpoint for C{ssl:PORT:privateKey=KEY[:certKey=CERT]
    [:extraCertChain=CHAIN][:interface=ADDRESS][:backlog=N]}, and its
    reloadable certificate.

    @raise ValueError: when the description or the files are unusable.
    @raise OSError: when a file cannot be read.
    """
    positional, named = _fields(description)
    port = named.pop("port", positional[0] if positional else None)
    key = named.pop("privateKey", None)
    if port is None or key is None:
        raise ValueError("ssl: needs a port and privateKey=")
    certificate = ReloadableCertificate(
        key, named.pop("certKey", key), named.pop("extraCertChain", None)
    )
    interface = named.pop("interface", "")
    backlog = int(named.pop("backlog", "50"))
    if named:
        raise ValueError(f"ssl: does not take {', '.join(sorted(named))}")
    endpoint = SSL4ServerEndpoint(reactor, int(port), certificate, backlog, interface)
    return endpoint, certificate
