# -*- test-case-name: tests.service.test_validate -*-
"""
Everything a configuration needs before the proxy may start or a reload
may begin: the one check behind C{lbproxy check} (as C{nginx -t}), the
start (C{twistd lbproxy}) and every reload (SIGHUP).

L{lbproxy.config.file} and L{lbproxy.config.model} check the shape of the
configuration and the type and range of every key; L{check_config} checks
what only the system can say, without changing anything:

  - every C{listen} endpoint string parses with Twisted's own parser
    (C{serverFromString} builds an endpoint without listening), and a TCP
    port is in 0-65535; with C{workers} above 1, it is a kind the workers
    can share (L{lbproxy.service.listeners.SHAREABLE});
  - the key and certificate files of C{ssl:} listeners, of
    C{tls-cert-dir}, C{upstream-ca} and C{upstream-client-cert} load, and
    each key matches its certificate;
  - the access log file can be written (or created) where it is named;
  - the C{admin} endpoint parses, its token file reads, and an admin
    listener that is neither on loopback nor a unix socket has a token
    (anyone who reaches it could otherwise drain every server).
  - every pool's C{balance} names an installed strategy
    (L{lbproxy.balancing.registry.installed_strategies}).

What it cannot know in advance (a port in use, a directory that vanishes
in between) fails when the listener is bound; a reload then changes
nothing (L{lbproxy.service.service.ProxyService.apply}).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint, UNIXServerEndpoint, serverFromString

from lbproxy.balancing.registry import installed_strategies, unknown_strategy
from lbproxy.config.file import ConfigFileError, load_config
from lbproxy.config.model import Config, admin_token_problem
from lbproxy.errors import ConfigError
from lbproxy.http.servertls import check_listener_files, load_cert_dir
from lbproxy.service.listeners import (
    SHAREABLE,
    error_text,
    listener_kind,
    with_default_backlog,
)
from lbproxy.twistedinternals import listening_interface
from lbproxy.upstream.tls import UpstreamTLS

__all__ = ["Problem", "check_config", "load_checked", "on_loopback", "read_token_file"]


@dataclass(frozen=True, slots=True)
class Problem:
    """
    One thing wrong with a configuration.

    @ivar key: the key as the file spells it (C{listen}, C{upstream-ca});
        the command-line option is the same with two dashes.
    @ivar index: the position of the value in a list-valued key, or
        L{None}.
    @ivar reason: what is wrong, naming the value.
    """

    key: str
    index: int | None
    reason: str

    def in_file(self, path: str) -> str:
        """
        The problem as a line about the file at C{path}, in the form of
        L{lbproxy.config.file}'s: C{lb.toml: listen[0]: 'tcpp:1': ...}.
        """
        where = self.key if self.index is None else f"{self.key}[{self.index}]"
        return f"{path}: {where}: {self.reason}"

    def as_option(self) -> str:
        """
        The problem as a line about a command-line option:
        C{--listen 'tcpp:1': ...} (a repeatable option's value is in the
        reason) or C{--upstream-ca: ...}.
        """
        separator = " " if self.index is not None else ": "
        return f"--{self.key}{separator}{self.reason}"


def check_config(config: Config, reactor: Any) -> list[Problem]:
    """
    Check what C{config} needs from the system, changing nothing; see the
    module docstring.

    @param reactor: what the endpoint parser is given (it only keeps it).
    @return: every problem found, in the order of the keys; none if the
        configuration can be put in force.
    """
    problems = []
    for index, description in enumerate(config.listen):
        if config.workers > 1 and listener_kind(description)[1] not in SHAREABLE:
            reason: str | None = "workers share only tcp:, tcp6:, ssl: and unix: listeners"
        else:
            reason = _listener_problem(reactor, description)
        if reason is not None:
            problems.append(Problem("listen", index, f"{description!r}: {reason}"))
    if config.tls_cert_dir:
        problems += _tls_problems("tls-cert-dir", _load_cert_dir, config.tls_cert_dir)
    if config.upstream_ca:
        problems += _tls_problems("upstream-ca", _load_upstream_ca, config.upstream_ca)
    if config.upstream_client_cert:
        problems += _tls_problems(
            "upstream-client-cert", _load_client_cert, config.upstream_client_cert
        )
    for pool in config.pools:
        if pool.balance not in installed_strategies():
            # The command line's pool is "default": --balance names it.
            key = "balance" if pool.name == "default" else f"upstream.{pool.name}.balance"
            problems.append(Problem(key, None, unknown_strategy(pool.balance)))
    if config.access_log not in ("-", "off"):
        reason = _access_log_problem(config.access_log)
        if reason is not None:
            problems.append(Problem("access-log", None, f"{config.access_log!r}: {reason}"))
    if config.admin:
        problems += _admin_problems(config, reactor)
    return problems


def _admin_problems(config: Config, reactor: Any) -> list[Problem]:
    """
    The admin listener's endpoint, its token file, and the rule that an
    admin reachable from other machines has a token.
    """
    description = config.admin
    reason = _listener_problem(reactor, description)
    if reason is not None:
        return [Problem("admin", None, f"{description!r}: {reason}")]
    problems = []
    if config.admin_token_file:
        try:
            read_token_file(config.admin_token_file)
        except ConfigError as e:
            problems.append(Problem("admin-token-file", None, str(e)))
    elif not config.admin_token and not on_loopback(serverFromString(reactor, description)):
        problems.append(
            Problem(
                "admin",
                None,
                f"{description!r} is neither on loopback nor a unix socket: give "
                "admin-token or admin-token-file, or anyone who reaches it can "
                "drain every server",
            )
        )
    return problems


def on_loopback(endpoint: object) -> bool:
    """
    Whether a server endpoint can be reached from this machine only: a
    unix socket, or TCP bound to a loopback address (C{127.0.0.0/8},
    C{::1}, C{localhost}).  Any other kind (C{systemd:}, an interface left
    out, which is every interface) counts as reachable from elsewhere.
    """
    if isinstance(endpoint, UNIXServerEndpoint):
        return True
    interface = listening_interface(endpoint)
    if not interface:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def read_token_file(path: str) -> str:
    """
    The admin token held in the file at C{path}, without surrounding
    whitespace (an editor's final newline).

    @raise ConfigError: naming the file, if it cannot be read, is empty or
        does not hold a bearer token.
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path!r}: not a text file") from None
    if not token:
        raise ConfigError(f"{path!r} is empty")
    problem = admin_token_problem(token)
    if problem is not None:
        raise ConfigError(f"{path!r}: {problem}")
    return token


def load_checked(path: str, reactor: Any) -> Config:
    """
    Read the configuration file at C{path} and check it all (its shape
    with L{load_config}, then L{check_config}).

    @raise ConfigFileError: listing every problem, each naming the file.
    """
    config = load_config(path)
    problems = check_config(config, reactor)
    if problems:
        raise ConfigFileError([problem.in_file(path) for problem in problems])
    return config


def rechecked(config: Config, reactor: Any) -> Config:
    """
    The command line's configuration, checked again: what a SIGHUP
    reloads when there is no file (C{--config}).  The options cannot
    change, but what they name on disk is read anew (certificates, the
    admin token file, the access log file that logrotate moved away), as
    nginx reads its files again on SIGHUP.

    @raise ConfigFileError: listing every problem, each naming its option.
    """
    problems = check_config(config, reactor)
    if problems:
        raise ConfigFileError([problem.as_option() for problem in problems])
    return config


def _listener_problem(reactor: Any, description: str) -> str | None:
    # Imported here: lbproxy.service.service imports the site and the whole proxy,
    # which C{lbproxy check} does not need otherwise.

    try:
        # As the service will build it (with the default backlog, which
        # must parse too).
        endpoint = serverFromString(reactor, with_default_backlog(description))
        if isinstance(endpoint, SSL4ServerEndpoint):
            endpoint._sslContextFactory.getContext()
    except Exception as e:
        try:
            # OpenSSL's errors name no file: find the one at fault.
            check_listener_files(description)
        except ConfigError as named:
            return str(named)
        except Exception:
            pass
        return error_text(e)
    # Twisted's parser takes any integer; the kernel does not.
    inner = getattr(endpoint, "_wrappedEndpoint", endpoint)
    port = getattr(inner, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is not in 0-65535"
    return None


def _load_cert_dir(path: str) -> None:
    for options in load_cert_dir(path).values():
        # Build each context now: the listener builds them only when a
        # client asks for that name.
        options.getContext()


def _load_upstream_ca(path: str) -> None:
    UpstreamTLS(ca_path=path)


def _load_client_cert(path: str) -> None:
    # Making a connection creator builds the OpenSSL context with the
    # certificate, as the first https connection would.
    UpstreamTLS(client_cert_path=path).creator("localhost")


def _tls_problems(key: str, load: Any, path: str) -> list[Problem]:
    try:
        load(path)
    except ConfigError as e:
        return [Problem(key, None, str(e))]
    except Exception as e:
        return [Problem(key, None, f"{path!r}: {error_text(e)}")]
    return []


def _access_log_problem(path: str) -> str | None:
    """
    Why the access log at C{path} could not be opened for appending, found
    without creating it (C{lbproxy check} may run as another user, or on
    another machine).
    """
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "not writable"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {os.path.dirname(path) or directory!r} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create it: directory {directory!r} is not writable"
    return None
