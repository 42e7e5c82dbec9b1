"""`make run`'s script: a closed terminal stops everything it started; a taken port stops it before it starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port, wait_until

pytestmark = pytest.mark.system

READY = "The proxy is ready"


def processes_with(variable: str, value: str) -> list[int]:
    """Every process carrying this environment entry: the script's children inherit it, whatever their session."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def start_script(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    ports = {"PORT": str(free_port()), "METRICS_PORT": str(free_port()),
             "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_DATA_DIR": str(tmp_path / "redis")}
    ports.update(env)
    script = subprocess.Popen(["scripts/run-local.sh"], cwd=ROOT, env={**os.environ, **ports}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    return script, ports


def read_until(script: subprocess.Popen[str], text: str) -> str:
    seen = []
    assert script.stdout is not None
    for line in script.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed:\n{''.join(seen)}")


def test_a_hang_up_stops_everything_the_script_started(tmp_path):
    script, ports = start_script(tmp_path)
    try:
        read_until(script, READY)
        started = processes_with("METRICS_PORT", ports["METRICS_PORT"])
        # redis-server, the worker, gunicorn's master and its workers
        assert len(started) >= 4, started

        script.send_signal(signal.SIGHUP)

        assert script.wait(timeout=60) == 129
        wait_until(lambda: not processes_with("METRICS_PORT", ports["METRICS_PORT"]), 10,
                   what="every started process gone")
    finally:
        for pid in processes_with("METRICS_PORT", ports["METRICS_PORT"]):
            os.kill(pid, signal.SIGKILL)
        if script.poll() is None:
            script.kill()


@pytest.mark.parametrize("taken", ["PORT", "METRICS_PORT"])
def test_a_taken_port_is_named_before_anything_starts(tmp_path, taken):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        script, ports = start_script(tmp_path, **{taken: port})
        try:
            output, _ = script.communicate(timeout=60)
        finally:
            if script.poll() is None:
                script.kill()

    assert script.returncode == 1
    assert f"Port {port}" in output and f"{taken}=<free port> make run" in output
    assert READY not in output
    assert processes_with("METRICS_PORT", ports["METRICS_PORT"]) == []
    assert not (tmp_path / "redis").exists(), "Redis was started although a port was taken"
