"""What Redis itself (and each of our processes) spent on a stretch of load.

Redis's CPU (user + system, every thread of the server) and its command count are the
figures that cap a deployment: whatever one request costs there, one primary's core
divides by it. Commands run inside Lua scripts are counted by commandstats too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class RedisUsage:
    cpu_seconds: float
    commands: dict[str, int]

    @classmethod
    def read(cls, client: redis.Redis) -> RedisUsage:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
        commands = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
        return cls(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands)


@dataclass(frozen=True)
class RedisCost:
    """Redis's work per answered request between two readings."""

    answered: int
    cpu_seconds: float
    commands: dict[str, int]

    @classmethod
    def between(cls, before: RedisUsage, after: RedisUsage, answered: int) -> RedisCost:
        commands = {name: calls - before.commands.get(name, 0) for name, calls in after.commands.items()}
        # The two INFO calls of the readings themselves are not the system's work.
        commands["info"] = commands.get("info", 0) - 2
        return cls(answered, after.cpu_seconds - before.cpu_seconds,
                   {name: calls for name, calls in commands.items() if calls > 0})

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds * 1e6 / self.answered if self.answered else float("nan")

    @property
    def commands_per_request(self) -> float:
        return sum(self.commands.values()) / self.answered if self.answered else float("nan")

    @property
    def ceiling_per_second(self) -> float:
        """Requests one Redis core could serve at this cost, everything else unlimited."""
        return 1e6 / self.cpu_us_per_request if self.answered else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "answered": self.answered, "cpu_seconds": round(self.cpu_seconds, 4),
            "cpu_us_per_request": round(self.cpu_us_per_request, 2),
            "commands_per_request": round(self.commands_per_request, 3),
            "ceiling_per_second": round(self.ceiling_per_second),
            "ceiling_per_minute": round(self.ceiling_per_second * 60),
            "commands_per_request_by_name": {name: round(calls / self.answered, 3)
                                             for name, calls in sorted(self.commands.items())} if self.answered else {},
        }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]
