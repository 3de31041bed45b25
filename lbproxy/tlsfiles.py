# -*- test-case-name: tests.test_tls -*-
"""
PEM files into Twisted's TLS objects, for listeners and upstreams alike.

Every loader raises L{ConfigError} naming the file and what is wrong with
it, so that a bad file is one readable line at start, in C{lbproxy check}
and on reload.  TLS 1.2 is the minimum everywhere (L{MINIMUM_TLS}):
Twisted's own default since 22.8, asked for explicitly so that a Twisted
downgrade cannot lower it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.error import VerifyError

from lbproxy.errors import ConfigError

__all__ = [
    "MINIMUM_TLS",
    "certificates",
    "private_certificate",
    "private_certificate_from",
    "private_key",
    "read_pem",
]


MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


def read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{what} {path!r}: {e.strerror}") from None


def certificates(pem: bytes, path: str, what: str) -> list[ssl.Certificate]:
    """
    Every certificate of a PEM file, in order (Twisted's C{loadPEM} reads
    only the first).
    """
    try:
        loaded = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{what} {path!r}: no PEM certificate in it") from None
    return [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in loaded]


def private_certificate(
    path: str, what: str
) -> tuple[ssl.PrivateCertificate, list[ssl.Certificate]]:
    """
    A PEM file holding a private key and its certificate, then any chain
    (HAProxy's C{crt} format).

    @return: the key with its certificate, and the chain certificates.
    @raise ConfigError: if the file cannot be read or lacks either part.
    """
    return private_certificate_from(read_pem(path, what), path, what)


def private_certificate_from(
    pem: bytes, path: str, what: str
) -> tuple[ssl.PrivateCertificate, list[ssl.Certificate]]:
    loaded = certificates(pem, path, what)
    key = private_key(pem, path, what)
    try:
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(loaded[0], key)
    except VerifyError:
        raise ConfigError(f"{what} {path!r}: private key and certificate do not match") from None
    return private, loaded[1:]


def private_key(pem: bytes, path: str, what: str) -> ssl.KeyPair:
    try:
        return ssl.KeyPair.load(pem, crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ConfigError(f"{what} {path!r}: no PEM private key in it") from None
