"""
Tests for L{lbproxy.service.validate}: what C{lbproxy check}, the start and every
reload check beyond the file's shape (endpoint strings, certificate and key
files, the access log).
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.file import ConfigFileError
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.service.validate import Problem, check_config, load_checked
from lbproxy.tap import Options
from tests.certs import CA


def _config(**settings: object) -> Config:
    """
    A valid configuration with one https server, changed by C{settings}.
    """
    pool = PoolConfig("web", (ServerConfig("127.0.0.1", 3000, scheme="https"),))
    return replace(Config(pools=(pool,), listen=("tcp:8080",), access_log="off"), **settings)


class CheckConfigTests(SynchronousTestCase):
    """
    L{check_config} finds what would stop the proxy from starting, or a
    reload from applying, before anything changes.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.ca = CA()
        self.ca_path = self.ca.write(self.dir)
        self.key, self.cert = self.ca.issue("localhost").write_split(self.dir, "server")
        self.other_key, _ = self.ca.issue("other").write_split(self.dir, "other")
        self.garbage = os.path.join(self.dir, "garbage.pem")
        with open(self.garbage, "w") as f:
            f.write("not PEM\n")
        self.reactor = MemoryReactorClock()

    def _problems(self, **settings: object) -> list[str]:
        return [p.as_option() for p in check_config(_config(**settings), self.reactor)]

    def test_valid(self) -> None:
        """
        A configuration whose every endpoint and file is usable has no
        problem.
        """
        client = self.ca.issue("lbproxy", client=True).write(self.dir, "client.pem")
        cert_dir = os.path.join(self.dir, "certs")
        os.makedirs(cert_dir)
        self.ca.issue("a.example").write(cert_dir, "a.example.pem")
        problems = self._problems(
            listen=("tcp:8080", f"ssl:8443:privateKey={self.key}:certKey={self.cert}"),
            upstream_ca=self.ca_path,
            upstream_client_cert=client,
            tls_cert_dir=cert_dir,
            access_log=os.path.join(self.dir, "access.log"),
        )
        self.assertEqual(problems, [])
        # Checking creates nothing.
        self.assertFalse(os.path.exists(os.path.join(self.dir, "access.log")))

    def test_unknown_endpoint_type(self) -> None:
        """
        An endpoint string Twisted's parser refuses is named with the
        parser's reason.
        """
        self.assertEqual(
            self._problems(listen=("tcp:8080", "tcpp:1")),
            ["--listen 'tcpp:1': Unknown endpoint type: 'tcpp'"],
        )

    def test_endpoint_arguments(self) -> None:
        """
        A port that is not a number, and an unknown argument, are refused.
        """
        problems = self._problems(listen=("tcp:http", "tcp:80:colour=red"))
        self.assertEqual(len(problems), 2)
        self.assertIn("--listen 'tcp:http': ", problems[0])
        self.assertIn("--listen 'tcp:80:colour=red': ", problems[1])
        self.assertIn("colour", problems[1])

    def test_port_range(self) -> None:
        """
        A TCP port beyond 65535 parses in Twisted but cannot be bound.
        """
        self.assertEqual(
            self._problems(listen=("tcp:70000", "haproxy:tcp:65536")),
            [
                "--listen 'tcp:70000': port 70000 is not in 0-65535",
                "--listen 'haproxy:tcp:65536': port 65536 is not in 0-65535",
            ],
        )

    def test_listener_key_missing(self) -> None:
        """
        An C{ssl:} listener whose key file does not exist is named with the
        file.
        """
        missing = os.path.join(self.dir, "missing.key")
        problems = self._problems(listen=(f"ssl:443:privateKey={missing}:certKey={self.cert}",))
        self.assertEqual(len(problems), 1)
        self.assertIn(f"{missing!r}: No such file or directory", problems[0])

    def test_listener_files_not_pem(self) -> None:
        """
        A key file without a key, and a certificate file without a
        certificate, are each named.
        """
        problems = self._problems(
            listen=(
                f"ssl:443:privateKey={self.garbage}:certKey={self.cert}",
                f"ssl:444:privateKey={self.key}:certKey={self.garbage}",
            )
        )
        self.assertEqual(len(problems), 2)
        self.assertIn(f"TLS key {self.garbage!r}: no PEM private key in it", problems[0])
        self.assertIn(f"TLS certificate {self.garbage!r}: no PEM certificate in it", problems[1])

    def test_listener_key_does_not_match(self) -> None:
        """
        A key that is not the certificate's is refused.
        """
        problems = self._problems(
            listen=(f"ssl:443:privateKey={self.other_key}:certKey={self.cert}",)
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("do not match", problems[0])

    def test_upstream_ca(self) -> None:
        """
        A CA file that is missing or holds no certificate is named.
        """
        self.assertIn("No such file", self._problems(upstream_ca=self.garbage + ".x")[0])
        self.assertEqual(
            self._problems(upstream_ca=self.garbage),
            [f"--upstream-ca: upstream CA {self.garbage!r}: no PEM certificate in it"],
        )

    def test_upstream_client_cert_mismatch(self) -> None:
        """
        A client certificate file whose key is not the certificate's is
        refused (OpenSSL would refuse it at the first https connection).
        """
        issued = self.ca.issue("lbproxy", client=True)
        other = self.ca.issue("other", client=True)
        path = os.path.join(self.dir, "mixed.pem")
        with open(path, "wb") as f:
            f.write(other.key_pem + issued.cert_pem)
        problems = self._problems(upstream_client_cert=path)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("--upstream-client-cert: "), problems[0])
        self.assertIn("do not match", problems[0])

    def test_cert_dir_mismatch(self) -> None:
        """
        A file of C{--tls-cert-dir} whose key is not its certificate's is
        refused now, not at the first handshake that asks for its name.
        """
        cert_dir = os.path.join(self.dir, "certs")
        os.makedirs(cert_dir)
        issued = self.ca.issue("a.example")
        other = self.ca.issue("b.example")
        with open(os.path.join(cert_dir, "a.example.pem"), "wb") as f:
            f.write(other.key_pem + issued.cert_pem)
        problems = self._problems(tls_cert_dir=cert_dir)
        self.assertEqual(len(problems), 1)
        self.assertIn("a.example.pem", problems[0])
        self.assertIn("do not match", problems[0])

    def test_access_log_directory_missing(self) -> None:
        """
        An access log in a directory that does not exist is refused.
        """
        path = os.path.join(self.dir, "nope", "access.log")
        self.assertEqual(
            self._problems(access_log=path),
            [f"--access-log: {path!r}: directory {os.path.dirname(path)!r} does not exist"],
        )

    def test_access_log_is_directory(self) -> None:
        """
        An access log path that is a directory is refused.
        """
        self.assertEqual(
            self._problems(access_log=self.dir),
            [f"--access-log: {self.dir!r}: is a directory"],
        )

    def test_every_problem(self) -> None:
        """
        Every problem is reported at once, in the order of the keys.
        """
        problems = check_config(
            _config(listen=("tcpp:1", "tcp:8080"), upstream_ca=self.garbage), self.reactor
        )
        self.assertEqual(
            [(p.key, p.index) for p in problems], [("listen", 0), ("upstream-ca", None)]
        )

    def test_file_format(self) -> None:
        """
        In a file, a problem names the file, the key (with its index in a
        list) and the value.
        """
        problem = Problem("listen", 2, "'tcpp:1': Unknown endpoint type: 'tcpp'")
        self.assertEqual(
            problem.in_file("lb.toml"),
            "lb.toml: listen[2]: 'tcpp:1': Unknown endpoint type: 'tcpp'",
        )
        self.assertEqual(
            Problem("upstream-ca", None, "x").in_file("lb.toml"), "lb.toml: upstream-ca: x"
        )


class LoadCheckedTests(SynchronousTestCase):
    """
    L{load_checked} reads a file and checks it all.
    """

    def _write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_endpoint_problem(self) -> None:
        """
        A bad endpoint in a well-formed file is a L{ConfigFileError} whose
        one line names the file, the key and the value.
        """
        path = self._write('listen = ["tcpp:1"]\n[upstream.web]\nservers = ["a:1"]\n')
        error = self.assertRaises(ConfigFileError, load_checked, path, MemoryReactorClock())
        self.assertEqual(
            error.problems, [f"{path}: listen[0]: 'tcpp:1': Unknown endpoint type: 'tcpp'"]
        )

    def test_valid(self) -> None:
        """
        A valid file gives its L{Config}.
        """
        path = self._write('listen = ["tcp:0"]\n[upstream.web]\nservers = ["a:1"]\n')
        self.assertEqual(load_checked(path, MemoryReactorClock()).listen, ("tcp:0",))


class StartTests(SynchronousTestCase):
    """
    C{twistd lbproxy} checks the same at start: one line, no traceback.
    """

    def test_config_file_bad_ca(self) -> None:
        """
        With C{--config}, an unusable C{upstream-ca} is a usage error naming
        the file and the key (it used to pass the options and raise a
        traceback while building the service).
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('upstream-ca = "/nonexistent/ca.pem"\n[upstream.web]\nservers = ["a:1"]\n')
        error = self.assertRaises(UsageError, Options().parseOptions, ["--config", path])
        self.assertEqual(
            str(error),
            f"{path}: upstream-ca: upstream CA '/nonexistent/ca.pem': No such file or directory",
        )

    def test_config_file_bad_listen(self) -> None:
        """
        With C{--config}, an endpoint string Twisted refuses is a usage
        error.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('listen = ["tcp:8080", "tcpp:1"]\n[upstream.web]\nservers = ["a:1"]\n')
        error = self.assertRaises(UsageError, Options().parseOptions, ["--config", path])
        self.assertEqual(str(error), f"{path}: listen[1]: 'tcpp:1': Unknown endpoint type: 'tcpp'")

    def test_listen_port_range(self) -> None:
        """
        C{--listen} with a port beyond 65535 is a usage error.
        """
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["--upstream", "a:1", "--listen", "tcp:70000"]
        )
        self.assertEqual(str(error), "--listen 'tcp:70000': port 70000 is not in 0-65535")


class AdminCheckTests(SynchronousTestCase):
    """
    The admin endpoint is checked as listeners are, and one reachable from
    other machines must have a token.
    """

    def _problems(self, **settings: object) -> list[str]:
        return [p.as_option() for p in check_config(_config(**settings), MemoryReactorClock())]

    def test_local_without_token(self) -> None:
        """
        On loopback (IPv4, IPv6, C{localhost}) or a unix socket, no token is
        needed.
        """
        for admin in (
            "tcp:9000:interface=127.0.0.1",
            "tcp:9000:interface=127.0.0.2",
            "tcp6:9000:interface=\\:\\:1",
            "tcp:9000:interface=localhost",
            "unix:/run/lbproxy-admin.sock",
        ):
            self.assertEqual(self._problems(admin=admin), [], admin)

    def test_exposed_without_token(self) -> None:
        """
        On every interface, another address, or an endpoint whose address
        cannot be told: refused, in one line saying why.
        """
        for admin in ("tcp:9000", "tcp:9000:interface=10.0.0.5", "tcp6:9000"):
            self.assertEqual(
                self._problems(admin=admin),
                [
                    f"--admin: {admin!r} is neither on loopback nor a unix socket: give "
                    "admin-token or admin-token-file, or anyone who reaches it can drain "
                    "every server"
                ],
            )

    def test_exposed_with_token(self) -> None:
        """
        With a token, or a token file that holds one, any endpoint will do.
        """
        token_file = self.mktemp()
        with open(token_file, "w") as f:
            f.write("  s3cret\n")
        self.assertEqual(self._problems(admin="tcp:9000", admin_token="s3cret"), [])
        self.assertEqual(self._problems(admin="tcp:9000", admin_token_file=token_file), [])

    def test_bad_endpoint(self) -> None:
        """
        An admin endpoint Twisted cannot parse is named as a listener's is.
        """
        self.assertEqual(
            self._problems(admin="tcpp:1"), ["--admin: 'tcpp:1': Unknown endpoint type: 'tcpp'"]
        )

    def test_token_file(self) -> None:
        """
        A token file that is missing, empty or not a bearer token is a
        problem naming it (never repeating what it holds).
        """
        missing = "/nonexistent/token"
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("\n")
        spaced = self.mktemp()
        with open(spaced, "w") as f:
            f.write("two words\n")
        self.assertEqual(
            [
                self._problems(admin="unix:/tmp/a.sock", admin_token_file=path)
                for path in (missing, empty, spaced)
            ],
            [
                [f"--admin-token-file: {missing!r}: No such file or directory"],
                [f"--admin-token-file: {empty!r} is empty"],
                [
                    f"--admin-token-file: {spaced!r}: expected letters, digits and "
                    "-._~+/ (a bearer token)"
                ],
            ],
        )

    def test_refused_at_start(self) -> None:
        """
        C{twistd lbproxy --admin tcp:9000} without a token does not start:
        one line, naming the option and why.
        """
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["--upstream", "a:1", "--admin", "tcp:9000"]
        )
        self.assertEqual(
            str(error),
            "--admin: 'tcp:9000' is neither on loopback nor a unix socket: give admin-token "
            "or admin-token-file, or anyone who reaches it can drain every server",
        )

    def test_refused_by_check(self) -> None:
        """
        C{lbproxy check} says the same of a file, naming it.
        """
        import io
        import sys

        from lbproxy.cli import main

        path = self.mktemp()
        with open(path, "w") as f:
            f.write('admin = "tcp:9000"\n[upstream.web]\nservers = ["a:1"]\n')
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(main(["check", path]), 1)
        self.assertEqual(
            err.getvalue(),
            f"{path}: admin: 'tcp:9000' is neither on loopback nor a unix socket: give "
            "admin-token or admin-token-file, or anyone who reaches it can drain every server\n",
        )


class StrategyNameTests(SynchronousTestCase):
    """
    Every pool's C{balance} must name a strategy of the table: the command
    line, C{lbproxy check} and reloads say so in one line.
    """

    def test_command_line(self) -> None:
        """
        C{--balance} with an unknown name is a usage error listing the
        known ones.
        """
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["--upstream", "a:1", "--balance", "fastest"]
        )
        self.assertEqual(
            str(error),
            "--balance: unknown strategy 'fastest' (expected one of ewma, hash, leastconn, "
            "random2, roundrobin)",
        )

    def test_file(self) -> None:
        """
        In a file the problem names the pool's key.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[upstream.web]\nservers = ["a:1"]\nbalance = "fastest"\n')
        error = self.assertRaises(ConfigFileError, load_checked, path, MemoryReactorClock())
        self.assertEqual(
            error.problems,
            [
                f"{path}: upstream.web.balance: unknown strategy 'fastest' (expected one of "
                "ewma, hash, leastconn, random2, roundrobin)"
            ],
        )

    def test_known(self) -> None:
        """
        Every strategy of the table passes.
        """
        for name in ("roundrobin", "leastconn", "random2", "ewma", "hash"):
            pool = PoolConfig("web", (ServerConfig("a", 1),), balance=name)
            config = Config(pools=(pool,), access_log="off")
            self.assertEqual(check_config(config, MemoryReactorClock()), [], name)
