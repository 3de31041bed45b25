# -*- test-case-name: tests.test_tls -*-
"""
TLS both ways: certificates for listeners, verified connections to
C{https://} upstreams, and the HTTPS policies of the client side.

  - L{UpstreamTLS}: how lbproxy speaks TLS to app servers.  Certificates
    are verified against the server's host name with service-identity
    (Twisted's L{optionsForClientTLS}), trusting the platform's roots or a
    CA file; a client certificate may be presented (mTLS).  It is also an
    C{IPolicyForHTTPS}, so health checks' L{Agent} uses the same settings.
  - L{SNIContextFactory}: several certificates on one C{ssl:} listener,
    chosen by the client's SNI server name, with the listener's own
    certificate as the default.
  - L{server_endpoint}: the endpoint for a C{--listen} description, with
    SNI when a certificate directory is given.
  - L{HTTPSRequest}: redirects plain requests to https (C{308}) and adds
    C{Strict-Transport-Security} to TLS responses.

TLS 1.2 is the minimum everywhere: Twisted's own default since 22.8,
asked for explicitly here so a Twisted downgrade cannot lower it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.endpoints import _parse as _parse_endpoint
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import H2_ENABLED
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from lbproxy.config.model import Config, ConfigError
from lbproxy.http.site import ProxyRequest

__all__ = [
    "HTTPSRequest",
    "SNIContextFactory",
    "UpstreamTLS",
    "check_listener_files",
    "https_request_factory",
    "load_cert_dir",
    "server_endpoint",
    "tls_failure_text",
    "upstream_tls",
]

_MINIMUM = ssl.TLSVersion.TLSv1_2


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{what} {path!r}: {e.strerror}") from None


def _certificates(pem: bytes, path: str, what: str) -> list[ssl.Certificate]:
    """
    Every certificate of a PEM file, in order (Twisted's C{loadPEM} reads
    only the first).
    """
    try:
        loaded = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{what} {path!r}: no PEM certificate in it") from None
    return [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in loaded]


def _private_certificate(
    path: str, what: str
) -> tuple[ssl.PrivateCertificate, list[ssl.Certificate]]:
    """
    A PEM file holding a private key and its certificate, then any chain
    (HAProxy's C{crt} format).

    @return: the key with its certificate, and the chain certificates.
    @raise ConfigError: if the file cannot be read or lacks either part.
    """
    return _private_certificate_from(_read(path, what), path, what)


def _private_certificate_from(
    pem: bytes, path: str, what: str
) -> tuple[ssl.PrivateCertificate, list[ssl.Certificate]]:
    certificates = _certificates(pem, path, what)
    key = _key(pem, path, what)
    try:
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(certificates[0], key)
    except VerifyError:
        raise ConfigError(f"{what} {path!r}: private key and certificate do not match") from None
    return private, certificates[1:]


def _key(pem: bytes, path: str, what: str) -> ssl.KeyPair:
    try:
        return ssl.KeyPair.load(pem, crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ConfigError(f"{what} {path!r}: no PEM private key in it") from None


def check_listener_files(description: str) -> None:
    """
    Read the key and certificate files of an C{ssl:} listener description
    as Twisted's parser reads them (C{privateKey=}, default C{server.pem};
    C{certKey=}, default the key's file), to say which file is wrong when
    the parser fails with an OpenSSL error that names none.

    @raise ConfigError: naming the file and what is wrong with it.
    """
    args, kwargs = _parse_endpoint(description)
    if "ssl" not in args[:2]:  # ssl:..., or a wrapper such as haproxy:ssl:...
        return
    key_path = kwargs.get("privateKey", "server.pem")
    cert_path = kwargs.get("certKey", key_path)
    key = _key(_read(key_path, "TLS key"), key_path, "TLS key")
    certificate = _certificates(_read(cert_path, "TLS certificate"), cert_path, "TLS certificate")
    try:
        ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate[0], key)
    except VerifyError:
        raise ConfigError(
            f"TLS key {key_path!r} and certificate {cert_path!r} do not match"
        ) from None


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
        parts = [item[-1] for item in (reason.value.args[0] if reason.value.args else []) if item]
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
            ca_pem = _read(ca_path, "upstream CA")
            self._trust = ssl.trustRootFromCertificates(
                _certificates(ca_pem, ca_path, "upstream CA")
            )
        self._client: ssl.PrivateCertificate | None = None
        self._client_chain: list[ssl.Certificate] = []
        if client_cert_path is not None:
            what = "upstream client certificate"
            client_pem = _read(client_cert_path, what)
            self._client, self._client_chain = _private_certificate_from(
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
        options: dict[str, Any] = {"raiseMinimumTo": _MINIMUM}
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
            raiseMinimumTo=_MINIMUM,
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


def load_cert_dir(path: str) -> dict[str, ssl.CertificateOptions]:
    """
    The certificates of a C{--tls-cert-dir}: one PEM file per host name
    (C{example.com.pem}, or C{*.example.com.pem} for a wildcard), each
    holding the private key, the certificate and its chain.

    @return: context options by lower-case server name.
    @raise ConfigError: if the directory or a file cannot be read.
    """
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise ConfigError(f"TLS certificate directory {path!r}: {e.strerror}") from None
    by_name = {}
    for name in names:
        if not name.endswith(".pem"):
            continue
        private, chain = _private_certificate(os.path.join(path, name), "TLS certificate")
        by_name[name[: -len(".pem")].lower()] = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            extraCertChain=[c.original for c in chain],
            raiseMinimumTo=_MINIMUM,
        )
    if not by_name:
        raise ConfigError(f"TLS certificate directory {path!r}: no .pem files in it")
    return by_name


@implementer(IOpenSSLContextFactory)
class SNIContextFactory:
    """
    A server context factory that picks the certificate by SNI.

    The listener's own context (from C{privateKey=}/C{certKey=}) answers
    clients that send no server name or an unknown one; a known name
    switches the connection to that name's context from OpenSSL's
    servername callback, which runs before the certificate is sent.
    """

    def __init__(
        self,
        default: Any,
        by_name: dict[str, ssl.CertificateOptions],
        protocols: list[bytes] | None = None,
    ) -> None:
        """
        @param default: the listener's context factory (C{getContext}).
        @param by_name: context options by lower-case server name; a
            C{*.example.com} key matches one label below C{example.com}.
        @param protocols: the ALPN protocols to offer, preferred first;
            by default C{h2} (when installed) and C{http/1.1}, as
            twisted.web's C{Site} offers them.
        """
        self._default = default
        self._by_name = by_name
        if protocols is None:
            protocols = [b"h2", b"http/1.1"] if H2_ENABLED else [b"http/1.1"]
        self._protocols = protocols
        self._context: SSL.Context | None = None
        self._contexts: dict[str, SSL.Context] = {}

    def getContext(self) -> SSL.Context:
        """
        The default context, with the servername callback installed.
        """
        if self._context is None:
            self._context = self._default.getContext()
            self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
            self._context.set_tlsext_servername_callback(self._servername)
        return self._context

    def _servername(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        context = self._find(name.decode("ascii", "replace").lower())
        if context is not None:
            connection.set_context(context)

    def _find(self, name: str) -> SSL.Context | None:
        key = name if name in self._by_name else "*." + name.partition(".")[2]
        options = self._by_name.get(key)
        if options is None:
            return None
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = options.getContext()
            # Twisted sets ALPN on the listener's (default) context only,
            # and OpenSSL chooses the protocol with the callback of the
            # context in force after this switch: give each its own.
            context.set_alpn_select_callback(self._select_protocol)
        return context

    def _select_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in self._protocols:
            if protocol in offered:
                return protocol
        # No protocol in common: carry on without ALPN (RFC 7301 allows it).
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[no-any-return]


def server_endpoint(reactor: Any, description: str, cert_dir: str | None) -> IStreamServerEndpoint:
    """
    The server endpoint for a C{--listen} description: Twisted's parse of
    it, with SNI certificates added to an C{ssl:} listener when
    C{cert_dir} is given.

    @raise ConfigError: if the certificate directory is unusable.
    """
    endpoint = serverFromString(reactor, description)
    if cert_dir is not None and isinstance(endpoint, SSL4ServerEndpoint):
        # SSL4ServerEndpoint has no public way to change its context
        # factory; wrap the one Twisted built from privateKey=/certKey=.
        endpoint._sslContextFactory = SNIContextFactory(  # type: ignore[attr-defined]
            endpoint._sslContextFactory,  # type: ignore[attr-defined]
            load_cert_dir(cert_dir),
        )
    return endpoint


#: A C{Host} value lbproxy puts in a redirect: a name, IPv4 address or
#: bracketed IPv6 address, with an optional port.
_HOST = re.compile(rb"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?")


class HTTPSRequest(ProxyRequest):
    """
    A L{ProxyRequest} with HTTPS policies (L{https_request_factory} sets
    them on a subclass).

    @cvar redirect_port: when not 0, requests on plain listeners are
        answered C{308 Permanent Redirect} to the same target over https on
        this port (nginx's C{return 308 https://$host$request_uri}); a body
        is read and dropped first.
    @cvar hsts: the C{Strict-Transport-Security} value added to responses
        on TLS listeners (unless the app server sent its own), or L{None}.
    """

    redirect_port = 0
    hsts: bytes | None = None

    def _redirecting(self) -> bool:
        return bool(self.redirect_port) and not self.isSecure()

    def gotLength(self, length: int | None) -> None:
        """
        Do not start proxying a request that will be redirected.
        """
        if self._redirecting():
            self.content = None
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Drop the body of a request that will be redirected.
        """
        if not self._redirecting():
            super().handleContentChunk(data)

    def process(self) -> None:
        """
        Redirect a plain request, or proxy it.
        """
        if self._redirecting():
            self._redirect()
        else:
            super().process()

    def write(self, data: bytes) -> None:
        """
        Add C{Strict-Transport-Security} to the headers of a TLS response.
        """
        if not self.startedWriting and self.hsts is not None and self.isSecure():
            headers = self.responseHeaders
            if not headers.hasHeader(b"strict-transport-security"):
                headers.setRawHeaders(b"Strict-Transport-Security", [self.hsts])
        super().write(data)

    def _redirect(self) -> None:
        self.site = self.channel.site
        host = self.getHeader(b"host") or b""
        match = _HOST.fullmatch(host)
        target = self.uri
        if target[:1] != b"/":
            # Absolute form (GET http://host/x): keep its path and query.
            path_start = target.find(b"/", target.find(b"//") + 2)
            target = target[path_start:] if path_start > 0 else b"/"
        if match is None:
            self.setResponseCode(400)
            body = b"Bad Request: no usable Host header to redirect to\n"
        else:
            port = b"" if self.redirect_port == 443 else b":%d" % self.redirect_port
            location = b"https://" + match.group(1) + port + target
            self.setResponseCode(308)
            self.setHeader(b"Location", location)
            body = b"Redirecting to " + location + b"\n"
        self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()


def https_request_factory(redirect_port: int, hsts: int) -> type[ProxyRequest]:
    """
    The request class for a site with these HTTPS policies: plain
    L{ProxyRequest} (no cost per request) when both are off.

    @param redirect_port: see L{HTTPSRequest.redirect_port}.
    @param hsts: C{max-age} of C{Strict-Transport-Security} in seconds;
        0 for none.
    """
    if not redirect_port and not hsts:
        return ProxyRequest
    return type(
        "HTTPSRequest",
        (HTTPSRequest,),
        {
            "redirect_port": redirect_port,
            "hsts": b"max-age=%d" % hsts if hsts else None,
        },
    )
