# -*- test-case-name: tests.test_tls -*-
"""
TLS to C{https://} upstreams: L{UpstreamTLS}.

Certificates are verified against the server's host name with
service-identity (Twisted's L{optionsForClientTLS}), trusting the
platform's roots or a CA file; a client certificate may be presented
(mTLS).  It is also an C{IPolicyForHTTPS}, so that health checks' L{Agent}
verifies what requests verify.
"""

from __future__ import annotations

from typing import Any, cast

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from lbproxy.config.model import Config
from lbproxy.tlsfiles import MINIMUM_TLS, certificates, private_certificate_from, read_pem

__all__ = ["UpstreamTLS", "tls_failure_text", "upstream_tls"]


def tls_failure_text(reason: Failure) -> str | None:
    """
    A readable reason for a failed TLS handshake, or L{None} if C{reason}
    is not a TLS error.

    OpenSSL errors come as lists of C{(library, function, reason)};
    service-identity's say which identities did not match.
    """
    from service_identity import VerificationError

    if reason.check(VerificationError):
        errors = getattr(reason.value, "errors", [])
        names = ", ".join(str(getattr(e, "mismatched_id", e)) for e in errors)
        return f"certificate does not match the host name ({names or reason.value})"
    if reason.check(SSL.Error):
        # check() matched: the value is an SSL.Error (a Failure always holds
        # its exception; Twisted types the attribute Optional).
        args = cast(SSL.Error, reason.value).args
        parts = [item[-1] for item in (args[0] if args else []) if item]
        return ", ".join(p for p in parts if p) or "TLS error"
    return None


@implementer(IPolicyForHTTPS)
class UpstreamTLS:
    """
    The TLS settings for C{https://} upstreams, shared by the proxy path
    and the health checks.

    @ivar insecure: certificates are not verified at all.
    @ivar source: what the settings were made from (the contents of the
        files, not their names), to tell whether a reload changes them.
    """

    _log = Logger()

    def __init__(
        self,
        ca_path: str | None = None,
        client_cert_path: str | None = None,
        insecure: bool = False,
    ) -> None:
        """
        @param ca_path: a PEM file of CA certificates to trust instead of
            the platform's roots.
        @param client_cert_path: a PEM file with a private key and its
            certificate (and chain), presented to upstreams (mTLS).
        @param insecure: do not verify upstream certificates (see
            L{warn_if_insecure}).
        @raise ConfigError: if a file cannot be read or parsed.
        """
        self.insecure = insecure
        self._trust: Any = None
        ca_pem = client_pem = None
        if ca_path is not None:
            ca_pem = read_pem(ca_path, "upstream CA")
            self._trust = ssl.trustRootFromCertificates(
                certificates(ca_pem, ca_path, "upstream CA")
            )
        self._client: ssl.PrivateCertificate | None = None
        self._client_chain: list[ssl.Certificate] = []
        if client_cert_path is not None:
            what = "upstream client certificate"
            client_pem = read_pem(client_cert_path, what)
            self._client, self._client_chain = private_certificate_from(
                client_pem, client_cert_path, what
            )
        self.source = (insecure, ca_pem, client_pem)
        self._creators: dict[str, Any] = {}

    def warn_if_insecure(self) -> None:
        """
        Log a warning if certificates are not verified: it lets anyone on
        the path read the traffic.
        """
        if self.insecure:
            self._log.warn(
                "--upstream-insecure: certificates of https upstreams are NOT "
                "verified; anyone on the path can impersonate them"
            )

    def creator(self, host: str) -> Any:
        """
        The TLS connection creator for an upstream at C{host} (a name or
        an IP address), made once per host.
        """
        creator = self._creators.get(host)
        if creator is None:
            creator = self._creators[host] = self._make_creator(host)
        return creator

    def _make_creator(self, host: str) -> Any:
        if self.insecure:
            return _UnverifiedCreator(host, self._client, self._client_chain)
        return ssl.optionsForClientTLS(
            host,
            trustRoot=self._trust,
            clientCertificate=self._client,
            extraCertificateOptions=self._chain_options(),
        )

    def _chain_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"raiseMinimumTo": MINIMUM_TLS}
        if self._client_chain:
            options["extraCertChain"] = [c.original for c in self._client_chain]
        return options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """
        C{IPolicyForHTTPS}: the creator for a health check's connection.
        """
        return self.creator(hostname.decode("ascii"))


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """
    TLS to an upstream without verifying its certificate
    (C{--upstream-insecure}); SNI is still sent, since the server may
    need it to choose its certificate.
    """

    def __init__(
        self,
        host: str,
        client: ssl.PrivateCertificate | None,
        chain: list[ssl.Certificate],
    ) -> None:
        options = ssl.CertificateOptions(
            privateKey=client.privateKey.original if client else None,
            certificate=client.original if client else None,
            extraCertChain=[c.original for c in chain] if client and chain else None,
            verify=False,
            raiseMinimumTo=MINIMUM_TLS,
        )
        self._context = options.getContext()
        self._sni = None if isIPAddress(host) or isIPv6Address(host) else host.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection


def upstream_tls(config: Config, warn: bool = True) -> UpstreamTLS:
    """
    The upstream TLS settings of a configuration.

    @param warn: log the warning of C{--upstream-insecure} (at start).
    @raise ConfigError: if a file cannot be read or parsed.
    """
    tls = UpstreamTLS(
        config.upstream_ca or None,
        config.upstream_client_cert or None,
        config.upstream_insecure,
    )
    if warn:
        tls.warn_if_insecure()
    return tls
