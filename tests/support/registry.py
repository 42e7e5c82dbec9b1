"""A real OCI registry for tests: Debian's docker-registry (CNCF distribution) on a free
loopback port, with htpasswd authentication, TLS from a CA made for the run, and storage in
a temp folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from tests.support.processes import Managed, base_env, free_port, wait_until

USER = "ci"
PASSWORD = "registry-Pa55word"  # noqa: S105 - a test registry's password


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Registry(Managed):
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = workdir / "ca.crt"
        key, csr, cert = workdir / "ca.key", workdir / "server.csr", workdir / "server.crt"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(self.ca),
                 "-days", "1", "-subj", "/CN=redis-stream-demo test CA")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(workdir / "server.key"), "-out", str(csr),
                 "-subj", "/CN=127.0.0.1")
        (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(key), "-CAcreateserial",
                 "-out", str(cert), "-days", "1", "-extfile", str(workdir / "san.cnf"))
        htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True)
        (workdir / "htpasswd").write_text(htpasswd.stdout)
        self.port = free_port()
        (workdir / "config.yml").write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"  tls:\n    certificate: {cert}\n    key: {workdir / 'server.key'}\n"
            f"auth:\n  htpasswd:\n    realm: test\n    path: {workdir / 'htpasswd'}\n"
        )
        super().__init__(f"registry:{self.port}", ["docker-registry", "serve", str(workdir / "config.yml")],
                         base_env(), workdir / "registry.log")
        self.address = f"127.0.0.1:{self.port}"
        wait_until(lambda: requests.get(f"https://{self.address}/v2/", auth=(USER, PASSWORD), verify=self.ca,
                                        timeout=2).status_code == 200, 15, what="the registry answering")
