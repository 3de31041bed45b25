"""
Tests for the deployment files in C{contrib/}: each parses (YAML, TOML,
JSON), its parts agree with one another, and the lbproxy configuration it
carries passes C{lbproxy check}.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tomllib
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lbproxy.cli import main
from lbproxy.config.dns import DnsSource
from lbproxy.config.file import load_config

_CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib")


def _path(*parts: str) -> str:
    return os.path.join(_CONTRIB, *parts)


class _Checking(SynchronousTestCase):
    """
    Runs C{lbproxy check} on a configuration's text.
    """

    def check(self, text: str) -> str:
        """
        Write C{text} to a file, run C{lbproxy check} on it, and assert
        that it passed; returns the file's path.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = main(["check", path])
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertTrue(out.getvalue().startswith(f"{path}: ok: "), out.getvalue())
        return path


class KubernetesTests(_Checking):
    """
    C{contrib/kubernetes/lbproxy.yaml}: a ConfigMap with the TOML, a
    Deployment running twistd on it, the proxy's Service and the app's
    headless Service the configuration's C{dns+a://} name points at.
    """

    def setUp(self) -> None:
        try:
            import yaml
        except ImportError:
            raise SkipTest("PyYAML is not installed (pip install pyyaml)") from None
        with open(_path("kubernetes", "lbproxy.yaml")) as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        self.objects: dict[tuple[str, str], Any] = {
            (d["kind"], d["metadata"]["name"]): d for d in documents
        }

    def test_config_checks(self) -> None:
        """
        The ConfigMap's C{lbproxy.toml} passes C{lbproxy check} (its admin
        token file where the Secret would be, here a file of the test's),
        with one DNS source and the admin on the pod's addresses.
        """
        text = self.objects["ConfigMap", "lbproxy"]["data"]["lbproxy.toml"]
        token_file = tomllib.loads(text)["admin-token-file"]
        ours = self.mktemp()
        with open(ours, "w") as f:
            f.write("0123456789abcdef\n")
        config = load_config(self.check(text.replace(token_file, ours)))
        self.assertEqual(
            [source for pool in config.pools for source in pool.sources],
            [DnsSource("a", "web-app.default.svc.cluster.local", 3000)],
        )
        self.assertEqual(config.admin_token_file, ours)
        # Without the token file, the check refuses an admin off loopback.
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text.replace(f'admin-token-file = "{token_file}"', ""))
        err = io.StringIO()
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", err)
        self.assertNotEqual(main(["check", path]), 0)
        self.assertIn("neither on loopback nor a unix socket", err.getvalue())

    def test_deployment_runs_the_config(self) -> None:
        """
        The Deployment runs C{twistd -n lbproxy --config} on the file the
        ConfigMap is mounted as; its Service and liveness probe use the
        port lbproxy listens on, its readiness probe the admin's
        C{/healthz}, whose token file is the Secret's.
        """
        pod = self.objects["Deployment", "lbproxy"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        command = container["command"]
        self.assertEqual(command[:2], ["twistd", "-n"])
        self.assertEqual(command[command.index("lbproxy") + 1], "--config")
        config_path = command[command.index("--config") + 1]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(set(mounts), set(volumes))
        [config_volume] = [v for v in volumes.values() if "configMap" in v]
        data = self.objects["ConfigMap", config_volume["configMap"]["name"]]["data"]
        self.assertIn(os.path.relpath(config_path, mounts[config_volume["name"]]), data)

        config = tomllib.loads(data["lbproxy.toml"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(config["listen"], [f"tcp:{ports['http']}"])
        self.assertEqual(container["livenessProbe"]["tcpSocket"]["port"], "http")
        [service_port] = self.objects["Service", "lbproxy"]["spec"]["ports"]
        self.assertEqual(service_port["targetPort"], "http")
        # The kubelet probes the pod's IP: the admin listens on every
        # address (no interface=), on the probe's port.
        self.assertEqual(config["admin"], f"tcp:{ports['admin']}")
        self.assertEqual(
            container["readinessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"}
        )
        # The token file is the Secret's key "token", in its mount; the
        # file's header says how to make that Secret.
        [secret_volume] = [v for v in volumes.values() if "secret" in v]
        self.assertEqual(secret_volume["secret"]["secretName"], "lbproxy-admin")
        with open(_path("kubernetes", "lbproxy.yaml")) as f:
            self.assertIn("create secret generic lbproxy-admin --from-literal=token=", f.read())
        self.assertEqual(
            config["admin-token-file"], os.path.join(mounts[secret_volume["name"]], "token")
        )
        # SIGTERM's drain ends before Kubernetes kills the pod.
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        self.assertLess(sleep + config["drain-timeout"], pod["terminationGracePeriodSeconds"])

    def test_upstream_is_the_headless_service(self) -> None:
        """
        The C{dns+a://} name is the full name of the headless Service (one
        record per pod), with its port.
        """
        config = tomllib.loads(self.objects["ConfigMap", "lbproxy"]["data"]["lbproxy.toml"])
        [server] = config["upstream"]["web"]["servers"]
        service = self.objects["Service", "web-app"]
        [port] = service["spec"]["ports"]
        # Kubernetes spells headless as the string "None".
        self.assertEqual(service["spec"]["clusterIP"], "None")
        name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        self.assertEqual(server, f"dns+a://{name}:{port['port']}")


class ConsulTests(_Checking):
    """
    C{contrib/consul}: lbproxy's configuration asks the Consul agent's DNS
    interface for the SRV records of the service C{web.json} registers.
    """

    def setUp(self) -> None:
        with open(_path("consul", "lbproxy.toml")) as f:
            self.text = f.read()
        with open(_path("consul", "web.json")) as f:
            self.service = json.load(f)["service"]

    def test_config_checks(self) -> None:
        """
        C{lbproxy.toml} passes C{lbproxy check}, with Consul's DNS
        interface as its resolver and the registered service's SRV name.
        """
        config = load_config(self.check(self.text))
        self.assertEqual(config.resolver, "127.0.0.1:8600")
        self.assertEqual(
            [source for pool in config.pools for source in pool.sources],
            [DnsSource("srv", f"_{self.service['name']}._tcp.service.consul")],
        )

    def test_agent_dns_port(self) -> None:
        """
        The agent's configuration answers DNS on the resolver's port.
        """
        with open(_path("consul", "consul-agent.hcl")) as f:
            agent = f.read()
        self.assertIn("dns = 8600", agent)
