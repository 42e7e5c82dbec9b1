"""Both services over TLS (rediss://) to a redis-server started with a test CA."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.processes import Managed, base_env, free_port, wait_until

pytestmark = pytest.mark.system


def _write_ca_and_server_cert(directory) -> dict[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis-stream-demo test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")]))
              .issuer_name(ca_name).public_key(client_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.crt", "cert": directory / "redis.crt", "key": directory / "redis.key",
             "client_cert": directory / "client.crt", "client_key": directory / "client.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, certificate, private in (("", cert, key), ("client_", client, client_key)):
        paths[f"{name}cert"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}key"].write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(params=["server-auth", "mutual"])
def tls_redis(tmp_path, request):
    files = _write_ca_and_server_cert(tmp_path)
    mutual = request.param == "mutual"
    port = free_port()
    server = Managed("redis-tls", [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path), "--tls-cert-file", files["cert"],
        "--tls-key-file", files["key"], "--tls-ca-cert-file", files["ca"],
        "--tls-auth-clients", "yes" if mutual else "no",
    ], base_env(), tmp_path / "redis-tls.log")
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis.Redis.from_url(url, ssl_ca_certs=files["ca"], ssl_certfile=files["client_cert"],
                                                ssl_keyfile=files["client_key"], socket_timeout=2).ping(), 10,
                   what="TLS redis-server")
    except TimeoutError:
        server.stop()
        if "tls" in server.log().lower() and "not supported" in server.log().lower():
            pytest.fail("this redis-server was built without TLS")
        raise
    client_env = {"REDIS_TLS_CERT_FILE": files["client_cert"], "REDIS_TLS_KEY_FILE": files["client_key"]}
    yield url, files["ca"], client_env if mutual else {}
    server.stop()


def test_services_talk_to_redis_over_tls(stack, tls_redis):
    url, ca, client_env = tls_redis
    proxy = stack.proxy(REDIS_URL=url, REDIS_TLS_CA_FILE=ca, REQUEST_TIMEOUT_SECONDS="10", **client_env)
    worker = stack.worker("tls", REDIS_URL=url, REDIS_TLS_CA_FILE=ca, PROCESSING_DELAY_MS="0", **client_env)
    proxy.wait_ready()
    worker.wait_ready()

    assert proxy.ask("Oslo", "Norway").status_code == 200


def test_without_the_ca_the_certificate_is_refused(tls_redis):
    url, _, _ = tls_redis
    result = subprocess.run(
        [sys.executable, "-c", f"import redis; redis.Redis.from_url({url!r}, socket_timeout=2).ping()"],
        capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr or "certificate verify failed" in result.stderr
