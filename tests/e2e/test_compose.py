"""docker-compose.yml's default profile brought up for real with podman-compose on the locally built
images (PROXY_IMAGE, WORKER_IMAGE, REDIS_IMAGE), a request answered through it, then brought down."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from tests.support.processes import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e

IMAGES = {
    "PROXY_IMAGE": "localhost/redis-stream-demo-proxy:test",
    "WORKER_IMAGE": "localhost/redis-stream-demo-worker:test",
    "REDIS_IMAGE": "localhost/redis-stream-demo-redis:test",
}


DEFAULT_PROFILE = ("redis", "proxy", "worker")


def test_the_default_profile_comes_up_answers_and_comes_down_clean(podman):
    project = f"rsd-compose-{int(time.time())}"
    port = free_port()
    env = {**podman.env, **IMAGES, "PROXY_PORT": str(port)}

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    def ours(*listing: str) -> list[str]:
        return [line for line in podman(*listing).stdout.split() if project in line]

    started = time.monotonic()
    # Debian's podman-compose 1.0.3 ignores `profiles`: the default profile's services are named.
    up = compose("up", "--detach", "--no-build", *DEFAULT_PROFILE)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, 90, interval=0.5,
                       what="the compose proxy ready")
        except TimeoutError:
            print(podman("logs", "--tail", "20", f"{project}_proxy_1", check=False).stdout)
            raise
        answer = requests.post(url + "/WeatherForecast/city", json={"city": "Oslo", "location": "compose"},
                               timeout=35)
        running = ours("ps", "--format", "{{.Names}}")
        print(f"compose up: {running} ready and answered {answer.status_code} "
              f"{time.monotonic() - started:.1f} s after `up`")
        assert answer.status_code == 200, answer.text
        assert answer.json()["city"] == "Oslo"
        assert len(running) == 3, running  # redis, proxy, one worker: the monitoring profile stays off
    finally:
        down = compose("down", "--volumes")
        logs = "" if down.returncode == 0 else down.stdout + down.stderr
    left = ours("ps", "--all", "--format", "{{.Names}}") + ours("volume", "ls", "--format", "{{.Name}}")
    # podman-compose 1.0.3's `down` keeps the project network (docker compose removes it): removed here.
    networks = ours("network", "ls", "--format", "{{.Name}}")
    for network in networks:
        podman("network", "rm", network)
    print(f"compose down: containers and volumes left: {left or 'none'}; network removed by the test: {networks}")
    assert down.returncode == 0, logs
    assert left == []
