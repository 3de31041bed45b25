# -*- test-case-name: tests.test_tls -*-
"""
TLS for listeners: certificates by SNI, the endpoint of a C{--listen}
description, and certificates read again on reload.

  - L{SNIContextFactory}: several certificates on one C{ssl:} listener,
    chosen by the client's SNI server name, with the listener's own
    certificate as the default.
  - L{server_endpoint}: the endpoint for a C{--listen} description, with
    SNI when a certificate directory is given.
  - L{ReloadableTLS}: a listener's context factory that reads its files
    again on reload.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamServerEndpoint
from twisted.web.http import H2_ENABLED
from zope.interface import implementer

from lbproxy.errors import ConfigError
from lbproxy.tlsfiles import MINIMUM_TLS, certificates, private_certificate, private_key, read_pem
from lbproxy.twistedinternals import parse_endpoint, set_ssl_context_factory, ssl_context_factory

__all__ = [
    "ReloadableTLS",
    "SNIContextFactory",
    "check_listener_files",
    "load_cert_dir",
    "server_endpoint",
]


def check_listener_files(description: str) -> None:
    """
    Read the key and certificate files of an C{ssl:} listener description
    as Twisted's parser reads them (C{privateKey=}, default C{server.pem};
    C{certKey=}, default the key's file), to say which file is wrong when
    the parser fails with an OpenSSL error that names none.

    @raise ConfigError: naming the file and what is wrong with it.
    """
    args, kwargs = parse_endpoint(description)
    if "ssl" not in args[:2]:  # ssl:..., or a wrapper such as haproxy:ssl:...
        return
    key_path = kwargs.get("privateKey", "server.pem")
    cert_path = kwargs.get("certKey", key_path)
    key = private_key(read_pem(key_path, "TLS key"), key_path, "TLS key")
    certificate = certificates(read_pem(cert_path, "TLS certificate"), cert_path, "TLS certificate")
    try:
        ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate[0], key)
    except VerifyError:
        raise ConfigError(
            f"TLS key {key_path!r} and certificate {cert_path!r} do not match"
        ) from None


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
        private, chain = private_certificate(os.path.join(path, name), "TLS certificate")
        by_name[name[: -len(".pem")].lower()] = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            extraCertChain=[c.original for c in chain],
            raiseMinimumTo=MINIMUM_TLS,
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

    def _select_protocol(
        self, connection: SSL.Connection, offered: list[bytes]
    ) -> bytes | SSL._NoOverlappingProtocols:
        # (pyOpenSSL names the type of its sentinel privately; annotation only.)
        for protocol in self._protocols:
            if protocol in offered:
                return protocol
        # No protocol in common: carry on without ALPN (RFC 7301 allows it).
        return SSL.NO_OVERLAPPING_PROTOCOLS


def server_endpoint(reactor: Any, description: str, cert_dir: str | None) -> IStreamServerEndpoint:
    """
    The server endpoint for a C{--listen} description: Twisted's parse of
    it, with SNI certificates added to an C{ssl:} listener when
    C{cert_dir} is given.

    @raise ConfigError: if the certificate directory is unusable.
    """
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    if cert_dir is not None and isinstance(endpoint, SSL4ServerEndpoint):
        # SSL4ServerEndpoint has no public way to change its context
        # factory; wrap the one Twisted built from privateKey=/certKey=.
        set_ssl_context_factory(
            endpoint,
            SNIContextFactory(ssl_context_factory(endpoint), load_cert_dir(cert_dir)),
        )
    return endpoint


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """
    The context factory of an C{ssl:} listener, built from its endpoint
    description (and C{--tls-cert-dir}), that can read its files again.

    Twisted asks the listener's context factory for a context for every
    new connection, so after L{reload} new connections get the renewed
    certificates and connections in progress keep theirs.
    """

    def __init__(self, reactor: Any, description: str, cert_dir: str | None) -> None:
        self._reactor = reactor
        self._description = description
        self._factory = self._build(cert_dir)

    def _build(self, cert_dir: str | None) -> Any:
        endpoint = server_endpoint(self._reactor, self._description, cert_dir)
        # Built only for ssl: listeners (see ProxyService._listener).
        assert isinstance(endpoint, SSL4ServerEndpoint)
        return ssl_context_factory(endpoint)

    def prepare(self, cert_dir: str | None) -> Any:
        """
        Read the key, certificates and SNI directory again, for L{use}.

        @return: the new context factory.
        @raise Exception: if they cannot be read.
        """
        factory = self._build(cert_dir)
        factory.getContext()  # load now, so that a bad file fails here
        return factory

    def use(self, factory: Any) -> None:
        """
        Give new connections the certificates of C{factory}, from
        L{prepare}.
        """
        self._factory = factory

    def getContext(self) -> Any:
        """
        The context for a new connection.
        """
        return self._factory.getContext()
