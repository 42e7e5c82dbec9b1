"""podman for make e2e-local: runc, vfs storage and lowered ulimits, as this sandbox needs them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

# runc, because crun fails on this host's cgroups; limits the sandbox cannot raise are lowered.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


class Podman:
    def __init__(self, workdir: Path, storage_root: Path | None = None, pull_args: tuple[str, ...] = ()) -> None:
        """``storage_root``: an image store of its own (empty: every image must be pulled);
        ``pull_args``: what kube play needs to pull (--creds, --cert-dir)."""
        self._workdir = workdir
        self._pull_args = pull_args
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "STORAGE_DRIVER": "vfs"}
        if storage_root is not None:
            storage = workdir / "storage.conf"
            storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{storage_root}/graph"\n'
                               f'runroot = "{storage_root}/run"\n')
            self.env["CONTAINERS_STORAGE_CONF"] = str(storage)

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def create_secret(self, secret: dict) -> None:
        """podman 4.3's kube play reads a Secret as a podman secret holding JSON {key: base64 value};
        a Secret document played alongside is stored as YAML and then cannot be read back."""
        data = dict(secret.get("data") or {})
        for key, value in (secret.get("stringData") or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self._workdir, delete=False) as file:
            json.dump(data, file)
        self("secret", "create", secret["metadata"]["name"], file.name)
        Path(file.name).unlink()

    def play(self, docs: list[dict], network: str, ip: str) -> None:
        """A pod played again at the same IP gets the same MAC too: with a new MAC, peers keep the
        old one in their ARP caches and cannot reach the pod for tens of seconds."""
        path = self._workdir / f"play-{ip}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        mac = "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))
        self("kube", "play", *self._pull_args, "--network", network, "--ip", ip, "--mac-address", mac, str(path))

    def exit_code(self, container: str) -> int | None:
        state = json.loads(self("inspect", container, "--format", "{{json .State}}").stdout)
        return None if state["Running"] else int(state["ExitCode"])
