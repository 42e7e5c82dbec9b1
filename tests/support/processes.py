"""Real processes for tests: redis-server, the gunicorn proxy and the worker.

Every process gets a free port and its own temp folder, logs to a file the test can
read, and is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from tests.support.netns import Host

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this test run: two processes started
    one after the other (a proxy, then a worker) could otherwise be given the same one
    before the first binds it."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class Managed:
    """A child process with a log file, stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> None:
        """``cwd``: the checkout whose code runs (the bench runs an earlier commit's too)."""
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self._cwd = cwd
        self._log_file = open(log_path, "ab")
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, cwd=self._cwd, env=self.env, stdout=self._log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def restart(self) -> None:
        """The same command started again after it exited or was killed (a node coming back)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is still running")
        self.process = self._start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 15) -> int | None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log_file.close()
        return self.process.returncode

    def log(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")


def base_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PROMETHEUS_", "REDIS_"))}
    env.update({"PYTHONUNBUFFERED": "1", "BIND_HOST": "127.0.0.1", "LOG_LEVEL": "INFO"})
    env.update(overrides)
    return env


class RedisServer(Managed):
    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False,
                 password: str | None = None, extra_args: list[str] | None = None,
                 acl_file: Path | None = None, username: str | None = None, host: Host | None = None) -> None:
        """``acl_file``: the users (then ``username``/``password`` are the test's own admin user);
        ``host``: a network namespace of its own to run in (tests.support.netns), else loopback."""
        self.port = port or free_port()
        self.workdir = workdir
        self.address = host.address if host else "127.0.0.1"
        self.host = host
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server", "--bind", self.address, "--port", str(self.port), "--dir", str(workdir),
            # Off the loopback interface protected mode refuses a server without a password.
            *(["--protected-mode", "no"] if host else []),
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
            *(["--requirepass", password] if password and not acl_file else []),
            *(["--aclfile", str(acl_file)] if acl_file else []),
            *(extra_args or []),
        ]
        self.password = password
        self.username = username
        super().__init__(f"redis:{self.port}", host.command(argv) if host else argv, base_env(),
                         workdir / "redis.log")
        self.url = f"redis://{self.address}:{self.port}/0"
        wait_until(lambda: self.client().ping(), 10, what=f"redis-server on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, username=self.username, password=self.password)


class Proxy(Managed):
    def __init__(self, workdir: Path, redis_url: str, code: Path = ROOT, app: str | None = None, **env: str) -> None:
        """``app``: another WSGI app under the proxy's gunicorn configuration (the bench's floors)."""
        self.port = free_port()
        self.metrics_port = free_port()
        metrics_dir = workdir / f"proxy-metrics-{self.port}"
        metrics_dir.mkdir(parents=True)
        environment = base_env(**{
            "REDIS_URL": redis_url, "PORT": str(self.port), "METRICS_PORT": str(self.metrics_port),
            "WEB_CONCURRENCY": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env,
        })
        argv = [str(BIN / "gunicorn"), "-c", "app/proxy/gunicorn.conf.py", *([app] if app else [])]
        super().__init__(f"proxy:{self.port}", argv, environment, workdir / f"proxy-{self.port}.log", code)
        self.url = f"http://127.0.0.1:{self.port}"
        # /metrics of every worker process, served by gunicorn's master.
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"

    def wait_ready(self, timeout: float = 20) -> Proxy:
        wait_until(lambda: requests.get(self.url + "/readyz", timeout=1).status_code == 200, timeout,
                   what=f"{self.name} ready")
        return self

    def ask(self, city: str, location: str, timeout: float = 30) -> requests.Response:
        return requests.post(self.url + "/WeatherForecast/city", json={"city": city, "location": location},
                             timeout=timeout)


class Worker(Managed):
    def __init__(self, workdir: Path, redis_url: str, name: str, code: Path = ROOT, **env: str) -> None:
        self.metrics_port = free_port()
        environment = base_env(**{
            "REDIS_URL": redis_url, "METRICS_PORT": str(self.metrics_port), "CONSUMER_NAME": name, **env,
        })
        argv = [sys.executable, "-m", "app.worker"]
        super().__init__(f"worker:{name}", argv, environment, workdir / f"worker-{name}.log", code)
        self.consumer = name
        self.url = f"http://127.0.0.1:{self.metrics_port}"
        self.metrics_url = self.url

    def wait_ready(self, timeout: float = 20) -> Worker:
        wait_until(lambda: requests.get(self.url + "/readyz", timeout=1).status_code == 200, timeout,
                   what=f"{self.name} ready")
        return self

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return metric_value(requests.get(self.url + "/metrics", timeout=5).text, name, labels)


def metric_value(exposition: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of one metric whose labels include the given ones."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def shard_states(metrics_url: str, streams: list[str] | None = None) -> dict[str, str]:
    """Each request stream shard's state as a proxy exports it (weather_proxy_shard_state; every
    shard it knows when ``streams`` is None). The series are the worst of its processes, so a
    shard reads as one state only when every process sees it so, else "mixed"."""
    from prometheus_client.parser import text_string_to_metric_families

    exposition = requests.get(metrics_url + "/metrics", timeout=2).text
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "weather_proxy_shard_state" and sample.value == 1:
                seen.setdefault(sample.labels["shard"], set()).add(sample.labels["state"])
    agreed = {shard: states.pop() if len(states) == 1 else "mixed" for shard, states in seen.items()}
    return agreed if streams is None else {stream: agreed.get(stream, "") for stream in streams}


def queues_of(stream: str = "weather-requests") -> tuple[str, str]:
    """A request stream shard and its prompt lane: where a request may wait."""
    from app.shared import contract

    return stream, contract.prompt_lane(stream)


def pending_entries(client: redis.Redis, stream: str = "weather-requests", group: str = "weather-workers") -> int:
    """Entries delivered and not acknowledged, in a shard and its prompt lane."""
    return sum(client.xpending(queue, group)["pending"] for queue in queues_of(stream) if client.exists(queue))


def pending_of(client: redis.Redis, consumer: str, stream: str = "weather-requests", group: str = "weather-workers",
               count: int = 100) -> list[dict[str, Any]]:
    """One consumer's pending entries in a shard and its prompt lane."""
    return [entry for queue in queues_of(stream) if client.exists(queue)
            for entry in client.xpending_range(queue, group, "-", "+", count, consumername=consumer)]


def entries_added(client: redis.Redis, stream: str = "weather-requests") -> int:
    """Entries ever added to a shard and its prompt lane."""
    return sum(int(client.xinfo_stream(queue)["entries-added"]) for queue in queues_of(stream) if client.exists(queue))


def entries_of(client: redis.Redis, stream: str = "weather-requests") -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a shard and its prompt lane."""
    return [entry for queue in queues_of(stream) if client.exists(queue) for entry in client.xrange(queue)]
