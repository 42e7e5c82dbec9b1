"""`make run`'s script: Ctrl-C stops everything in an order that loses nothing, twice stops it at once, a
closed terminal stops it too; it starts again at once; a taken port or an orphaned Redis stops it before it starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.support.load import SteadyLoad, ask
from tests.support.processes import ROOT, RedisServer, free_port, wait_until

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


def _ctrl_c_as_a_terminal_sends_it() -> None:
    """A shell started in the background without job control (a CI runner's `cmd &`) ignores
    SIGINT, children inherit that, and bash cannot trap a signal ignored at its start: the
    script gets SIGINT as a terminal's Ctrl-C would deliver it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_script(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    ports = {"PORT": str(free_port()), "METRICS_PORT": str(free_port()), "PROXY_METRICS_PORT": str(free_port()),
             "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_DATA_DIR": str(tmp_path / "redis")}
    ports.update(env)
    script = subprocess.Popen(["scripts/run-local.sh"], cwd=ROOT, env={**os.environ, **ports}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=_ctrl_c_as_a_terminal_sends_it)
    return script, ports


def read_until(script: subprocess.Popen[str], text: str) -> str:
    seen = []
    assert script.stdout is not None
    for line in script.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed:\n{''.join(seen)}")


def kill_leftovers(script: subprocess.Popen[str], ports: dict[str, str]) -> None:
    for pid in processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]):
        os.kill(pid, signal.SIGKILL)
    if script.poll() is None:
        script.kill()


def drain(script: subprocess.Popen[str]) -> list[str]:
    """Read the script's output in the background (a full pipe would block it)."""
    lines: list[str] = []
    assert script.stdout is not None
    threading.Thread(target=lambda: lines.extend(script.stdout), daemon=True).start()
    return lines


def test_it_starts_again_right_after_ctrl_c(tmp_path):
    script, ports = start_script(tmp_path)
    try:
        read_until(script, READY)
        proxy = f"http://127.0.0.1:{ports['PORT']}"
        # Answered connections leave TIME-WAIT sockets on the proxy's and the worker's ports.
        for index in range(5):
            assert ask(proxy, index, timeout=10).status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['METRICS_PORT']}/readyz", timeout=5) as answer:
                assert answer.status == 200
        drain(script)
        script.send_signal(signal.SIGINT)
        assert script.wait(timeout=60) == 130
    finally:
        kill_leftovers(script, ports)

    again, _ = start_script(tmp_path, **ports)
    try:
        output = read_until(again, READY)
        assert "already in use" not in output
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(timeout=60)
        kill_leftovers(again, ports)


def test_ctrl_c_under_load_answers_every_accepted_request_within_seconds(tmp_path):
    """10 req/s, below the ~16/s the default worker (5 terminals, 100-500 ms) serves."""
    script, ports = start_script(tmp_path)
    try:
        read_until(script, READY)
        output = drain(script)
        with SteadyLoad(f"http://127.0.0.1:{ports['PORT']}", rate=10, max_seconds=15, timeout=40) as load:
            time.sleep(4)
            signalled = time.monotonic()
            script.send_signal(signal.SIGINT)
            status = script.wait(timeout=60)
            took = time.monotonic() - signalled
            time.sleep(1)  # requests sent after the stop are refused, not answered
            results = load.stop()
        answered = [r for r in results if r.status is not None]
        refused = [r for r in results if r.status is None]
        held = [r for r in answered if r.started < signalled < r.started + r.seconds]
        print(f"Ctrl-C under 10 req/s: stopped in {took:.1f} s; answered {Counter(r.status for r in answered)}, "
              f"{len(held)} of them in flight at the signal; refused after it: {len(refused)}")

        assert status == 130, "".join(output)
        assert took < 10, "".join(output)
        assert [r.status for r in answered] == [200] * len(answered)
        assert held, "no request was in flight at the signal: the test proved nothing"
        assert all(r.started >= signalled for r in refused), [r.error for r in refused][:3]
        wait_until(lambda: not processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]), 10,
                   what="every started process gone")
    finally:
        kill_leftovers(script, ports)


def test_a_second_ctrl_c_stops_everything_at_once_and_leaves_nothing(tmp_path):
    # Work of 5 s holds the proxy's requests, so the first Ctrl-C has something to wait for.
    script, ports = start_script(tmp_path, PROCESSING_DELAY_MS="5000")
    try:
        read_until(script, READY)
        drain(script)
        proxy = f"http://127.0.0.1:{ports['PORT']}"
        senders = [threading.Thread(target=ask, args=(proxy, i, 30), daemon=True) for i in range(3)]
        for sender in senders:
            sender.start()
        time.sleep(1)
        script.send_signal(signal.SIGINT)
        time.sleep(1)
        signalled = time.monotonic()
        script.send_signal(signal.SIGINT)

        assert script.wait(timeout=30) == 137
        assert time.monotonic() - signalled < 5
        assert processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]) == []
    finally:
        kill_leftovers(script, ports)


def test_a_redis_an_earlier_run_left_running_is_named_not_adopted(tmp_path):
    data = tmp_path / "redis"
    orphan = RedisServer(data)  # a redis-server on this data folder, as an interrupted run leaves it
    try:
        script, ports = start_script(tmp_path, REDIS_URL=f"redis://127.0.0.1:{orphan.port}/0",
                                     REDIS_DATA_DIR=str(data))
        try:
            output, _ = script.communicate(timeout=60)
        finally:
            kill_leftovers(script, ports)

        assert script.returncode == 1, output
        assert f"kill {orphan.pid}" in output and "earlier 'make run'" in output
        assert READY not in output
    finally:
        orphan.stop()


def test_a_hang_up_stops_everything_the_script_started(tmp_path):
    script, ports = start_script(tmp_path)
    try:
        read_until(script, READY)
        started = processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"])
        # redis-server, the worker, gunicorn's master and its workers
        assert len(started) >= 4, started

        script.send_signal(signal.SIGHUP)

        assert script.wait(timeout=60) == 129
        wait_until(lambda: not processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]), 10,
                   what="every started process gone")
    finally:
        for pid in processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]):
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
    assert processes_with("PROXY_METRICS_PORT", ports["PROXY_METRICS_PORT"]) == []
    assert not (tmp_path / "redis").exists(), "Redis was started although a port was taken"
