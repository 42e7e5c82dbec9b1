"""Faults done to the running system on the schedule's times, each in a thread of its own
(they may overlap), each printed as it starts: ``fault: <seconds> <kind> <target>``.

What is killed comes back as an orchestrator would bring it back: a worker or Redis node is
started again (a Redis node from its own files: append-only file, cluster config), a proxy
process is replaced by its gunicorn master."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from soak.schedule import Fault
from soak.system import System, children
from tests.support.processes import Managed, RedisServer


@dataclass
class Happened:
    at: float  # seconds since the soak started
    kind: str
    target: str
    ended: float | None = None  # when it was undone (the process back, the link healed)
    error: str | None = None  # it could not be done or undone


class Injector:
    def __init__(self, system: System, schedule: list[Fault], clock: Callable[[], float],
                 say: Callable[[str], None] = print) -> None:
        self._system = system
        self._schedule = schedule
        self._now = clock
        self._say = say
        self.happened: list[Happened] = []
        self._threads: list[threading.Thread] = []
        self._abandoned = threading.Event()
        self._runner = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    def start(self) -> Injector:
        self._runner.start()
        return self

    def join(self) -> list[Happened]:
        """Waits until every fault has been undone (the schedule ends before the load does)."""
        self._runner.join()
        for thread in self._threads:
            thread.join()
        return self.happened

    def abandon(self) -> None:
        """No fault from now on (the run was stopped); one under way finishes on its own."""
        self._abandoned.set()

    def _run(self) -> None:
        for fault in self._schedule:
            if self._abandoned.wait(max(0.0, fault.at - self._now())):
                return
            thread = threading.Thread(target=self._do, args=(fault,), name=f"fault-{fault.kind}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _do(self, fault: Fault) -> None:
        target, act = self._resolve(fault)
        happened = Happened(round(self._now(), 1), fault.kind, target)
        self.happened.append(happened)
        self._say(f"fault: {happened.at:.1f} {fault.kind} {target}")
        try:
            act()
        except Exception as error:  # any failure is named in the report, never silent
            happened.error = f"{type(error).__name__}: {error}"
            self._say(f"fault: {self._now():.1f} {fault.kind} {target} failed: {happened.error}")
        happened.ended = round(self._now(), 1)

    def _resolve(self, fault: Fault) -> tuple[str, Callable[[], None]]:
        system, pick, seconds = self._system, fault.pick, fault.seconds
        if fault.kind.startswith("worker-"):
            worker = system.workers[pick % len(system.workers)]
            actions = {"worker-kill": lambda: _kill_and_restart(worker, seconds),
                       "worker-term": lambda: _stop_and_restart(worker),
                       "worker-freeze": lambda: _freeze(worker.pid, seconds)}
            return worker.name, actions[fault.kind]
        if fault.kind.startswith("proxy-"):
            proxy = system.proxies[pick % len(system.proxies)]
            processes = children(proxy.pid)
            victim = processes[pick % len(processes)] if processes else proxy.pid
            signum = signal.SIGKILL if fault.kind == "proxy-kill" else signal.SIGTERM
            return f"{proxy.name}/{victim}", lambda: _signal(victim, signum)
        primaries = system.primaries()
        node = primaries[pick % len(primaries)]
        target = f"redis:{node.address}:{node.port}"
        host = node.host
        assert host is not None, "soak Redis nodes each run on a host of their own"
        actions = {
            "redis-kill": lambda: _kill_and_restart(node, seconds, ready=_answers(node), restart=system.restart),
            "redis-restart": lambda: _stop_and_restart(node, ready=_answers(node), restart=system.restart),
            "redis-freeze": lambda: _freeze(node.pid, seconds),
            "redis-partition": lambda: _for_a_while(lambda: system.network.partition(host),
                                                    lambda: system.network.heal(host), seconds),
            "slow-link": lambda: _for_a_while(lambda: system.network.slow(host),
                                              lambda: system.network.heal(host), seconds),
        }
        return target, actions[fault.kind]


def _signal(pid: int, signum: int) -> None:
    os.kill(pid, signum)


def _for_a_while(begin: Callable[[], None], end: Callable[[], None], seconds: float) -> None:
    begin()
    try:
        time.sleep(seconds)
    finally:
        end()


def _freeze(pid: int, seconds: float) -> None:
    _for_a_while(lambda: _signal(pid, signal.SIGSTOP), lambda: _signal(pid, signal.SIGCONT), seconds)


def _answers(node: RedisServer) -> Callable[[], None]:
    def wait() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Loading the append-only file answers LOADING: not back yet.
            with contextlib.suppress(Exception):
                if node.client().ping():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{node.name} did not answer within 60 s of its restart")
    return wait


def _kill_and_restart(process: Managed, seconds: float, ready: Callable[[], None] | None = None,
                      restart: Callable[[Any], None] = Managed.restart) -> None:
    process.signal(signal.SIGKILL)
    process.wait(10)
    time.sleep(seconds)
    restart(process)
    if ready:
        ready()


def _stop_and_restart(process: Managed, ready: Callable[[], None] | None = None,
                      restart: Callable[[Any], None] = Managed.restart) -> None:
    process.signal(signal.SIGTERM)
    process.wait(30)
    time.sleep(0.5)  # as an orchestrator restarts it: not at the same instant
    restart(process)
    if ready:
        ready()
