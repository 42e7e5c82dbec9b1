"""The chart's pods on podman: images built, chart rendered, pods played on a network of their own,
everything removed afterwards. Run by `make e2e-local` (marker e2e), not by `make test`."""

from __future__ import annotations

import base64
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests
import yaml

from tests.e2e import kube
from tests.e2e.podman import Podman
from tests.support.processes import ROOT, wait_until

NAMESPACE = "weather"
RELEASE = "demo"
VALUES = Path(__file__).parent / "values-e2e.yaml"


@dataclass
class Deployment:
    """The release as pods: fixed IPs stand in for Service addresses."""

    podman: Podman
    docs: list[dict]
    network: str
    subnet: str
    pods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workloads = kube.workloads(self.docs)
        names = kube.service_names(self.docs, NAMESPACE)
        self.ips = {"redis": self.ip(10), "proxy": self.ip(20)}
        self.aliases = {self.ips[component]: names[component] for component in ("redis", "proxy")}
        [self.redis_secret] = kube.secrets(self.docs)  # the chart's one Secret: Redis's password

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def worker_ip(self, slot: int) -> str:
        return self.ip(30 + slot)

    def worker_url(self, slot: int) -> str:
        return f"http://{self.worker_ip(slot)}:9100"

    def play(self, component: str, index: int, ip: str, with_claims: bool = False) -> str:
        workload = self.workloads[component]
        pod = kube.workload_pod(workload, index, self.aliases, self.docs)
        return self.play_pod(pod, ip, kube.claims(workload, index) if with_claims else [])

    def play_pod(self, pod: dict, ip: str, claims: list[dict] | None = None) -> str:
        self.podman.play([*(claims or []), *kube.config_documents(self.docs), pod], self.network, ip)
        self.pods.append(pod["metadata"]["name"])
        return str(pod["metadata"]["name"])

    def pin_bridge_address(self, octet: int) -> None:
        """A Linux bridge takes the lowest MAC of its ports unless it is given one, so each pod
        replaced (a new veth) could change the host's MAC on the network: every pod's ARP entry
        for the host went stale, and answers to the test were dropped until it was renewed (the
        Redis-pod-replaced test's 50 answers came 60 s late, or not within 120 s). Called once
        the network's bridge exists and before anything talks over it."""
        bridge = self.podman("network", "inspect", self.network, "--format", "{{.NetworkInterface}}").stdout.strip()
        subprocess.run(["ip", "link", "set", "dev", bridge, "address", f"02:42:0a:59:{octet:02x}:01"], check=True,
                       timeout=10)

    def remove(self, pod: str, timeout: int = 10) -> None:
        self.podman("pod", "rm", "--force", "--time", str(timeout), pod)
        self.pods.remove(pod)

    def remove_all(self, component: str, timeout: int) -> None:
        prefix = self.workloads[component].name + "-"
        for pod in [pod for pod in self.pods if pod.startswith(prefix)]:
            self.remove(pod, timeout)

    def redis(self) -> redis.Redis:
        password = base64.b64decode(self.redis_secret["data"]["redis-password"]).decode()
        # With the ACL users (redis.auth.mode acl) that password is the admin's; the default user is off.
        username = "admin" if "proxy-password" in self.redis_secret["data"] else None
        return redis.Redis(host=self.ips["redis"], port=6379, username=username, password=password, socket_timeout=5)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.ips['proxy']}:8080"

    def wait_redis(self, timeout: float = 60) -> None:
        wait_until(self.redis().ping, timeout, interval=0.5, what="the Redis pod answering PING")

    def wait_ready(self, url: str, timeout: float = 90) -> None:
        wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, timeout, interval=0.5,
                   what=f"{url}/readyz")

    def logs(self, pod: str) -> str:
        containers = self.podman("pod", "inspect", pod, "--format", "{{range .Containers}}{{.Name}} {{end}}").stdout
        out = []
        for container in containers.split():
            if not container.endswith("-infra"):
                result = self.podman("logs", container, check=False)
                out.append(f"--- {container}\n{result.stdout}{result.stderr}")
        return "\n".join(out)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="session")
def rendered() -> list[dict]:
    chart = ROOT / "charts" / "redis-stream-demo"
    result = subprocess.run([str(ROOT / ".tools" / "helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                             "-f", str(VALUES)], capture_output=True, text=True, check=True, timeout=120)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def deployment(podman: Podman, rendered: list[dict]) -> Iterator[Deployment]:
    with deployed(podman, rendered) as created:
        yield created


@contextmanager
def deployed(podman: Podman, rendered: list[dict]) -> Iterator[Deployment]:
    """Redis, two workers and the proxy played as the chart renders them, all ready;
    everything removed afterwards (and checked to be gone)."""
    volumes_before = set(podman("volume", "ls", "--quiet").stdout.split())
    octet = random.randint(100, 249)
    network = f"rsd-e2e-{octet}-{int(time.time())}"
    podman("network", "create", "--subnet", f"10.89.{octet}.0/24", network)
    created = Deployment(podman, rendered, network, f"10.89.{octet}")
    secret_names = [secret["metadata"]["name"] for secret in kube.secrets(rendered)]
    try:
        for secret in kube.secrets(rendered):
            podman.create_secret(secret)
        started = time.monotonic()
        created.play("redis", 0, created.ips["redis"], with_claims=True)
        created.pin_bridge_address(octet)
        created.wait_redis()
        for index in range(2):
            created.play("worker", index, created.worker_ip(index))
        created.play("proxy", 0, created.ips["proxy"])
        for index in range(2):
            created.wait_ready(created.worker_url(index))
        created.wait_ready(created.proxy_url)
        print(f"\nredis, 2 workers and the proxy ready {time.monotonic() - started:.1f} s after the first play")
        yield created
    except Exception:
        for pod in created.pods:
            print(created.logs(pod))
        raise
    finally:
        for pod in list(created.pods):
            podman("pod", "rm", "--force", "--time", "10", pod, check=False)
        for name in secret_names:
            podman("secret", "rm", name, check=False)
        for volume in set(podman("volume", "ls", "--quiet").stdout.split()) - volumes_before:
            podman("volume", "rm", "--force", volume, check=False)
        podman("network", "rm", "--force", network, check=False)
        prefix = f"{RELEASE}-redis-stream-demo"
        left = [name for name in podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
                + podman("pod", "ps", "--format", "{{.Name}}").stdout.split() if name.startswith(prefix)]
        left += [name for name in podman("network", "ls", "--format", "{{.Name}}").stdout.split() if name == network]
        left += [name for name in podman("volume", "ls", "--quiet").stdout.split() if name not in volumes_before]
        print(f"teardown: pods, secrets, volumes and network removed; left running or stored: {left or 'nothing'}")
        assert not left
