"""JWT authentication against the running proxy (real gunicorn, worker and Redis)."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.processes import wait_until

pytestmark = pytest.mark.system

SECRET = "a-test-secret-of-32-bytes-or-more!!"  # noqa: S105 - a test key
AUDIENCE = "weather-api"


def _token(key: str | bytes = SECRET, algorithm: str = "HS256", **claims) -> str:
    body = {"sub": "alice", "aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def _ask(proxy, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(proxy.url + "/WeatherForecast/city", json={"city": "Oslo", "location": "Norway"},
                         headers=headers, timeout=15)


@pytest.fixture
def proxy(stack):
    proxy = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_SECRET=SECRET, AUTH_JWT_AUDIENCE=AUDIENCE,
                        REQUEST_TIMEOUT_SECONDS="10")
    stack.worker("w", PROCESSING_DELAY_MS="0", LOG_LEVEL="DEBUG").wait_ready()
    return proxy.wait_ready()


def test_a_valid_token_is_served_and_its_subject_reaches_the_worker(stack, proxy):
    response = _ask(proxy, _token())

    assert response.status_code == 200
    worker = next(p for p in stack.processes if p.name.startswith("worker"))
    # The worker logs once the entry is acknowledged, just after the reply went out.
    wait_until(lambda: '"subject": "alice"' in worker.log(), 5, what="the subject in the worker's log")


# Tokens are made when the test runs, not when the module is collected: a long suite
# would otherwise reach these tests after the valid ones' five minutes had run out.
@pytest.mark.parametrize(("make_token", "detail"), [
    (lambda: None, "Authorization: Bearer"),
    (lambda: _token(exp=int(time.time()) - 3600), "expired"),
    (lambda: _token(key="another-secret-of-32-bytes-or-more!"), "Signature verification failed"),
    (lambda: _token(aud="someone-else"), "audience"),
    (lambda: _token(exp=None), "exp"),
    (lambda: "not-a-jwt", "refused"),
], ids=["missing", "expired", "signature", "audience", "no-exp", "not-a-jwt"])
def test_bad_or_missing_tokens_get_401_with_a_challenge(proxy, make_token, detail):
    response = _ask(proxy, make_token())

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"
    assert detail.lower() in response.json()["detail"].lower()


def test_probes_and_metrics_stay_open(proxy):
    for path in ("/healthz", "/readyz"):
        assert requests.get(proxy.url + path, timeout=5).status_code == 200
    assert requests.get(proxy.metrics_url + "/metrics", timeout=5).status_code == 200
    assert requests.get(proxy.url + "/WeatherForecast", timeout=5).status_code == 401


def test_rs256_public_key_from_a_file(stack, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "jwt.pub").write_bytes(public_pem)
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    proxy = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_ALGORITHMS="RS256",
                        AUTH_JWT_PUBLIC_KEY_FILE=str(tmp_path / "jwt.pub"), AUTH_JWT_ISSUER="https://issuer.test",
                        REQUEST_TIMEOUT_SECONDS="10")
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    proxy.wait_ready()

    good = _token(private_pem, "RS256", iss="https://issuer.test", aud=None)
    wrong_issuer = _token(private_pem, "RS256", iss="https://elsewhere.test", aud=None)

    assert _ask(proxy, good).status_code == 200
    assert _ask(proxy, wrong_issuer).status_code == 401
