"""Keys from an identity provider's JWKS document, served by a real local HTTP server:
rotation, unknown keys, the provider down, and a flood of made-up kids."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.proxy.auth import JwtAuthenticator
from app.proxy.errors import ApiError
from app.proxy.jwks import JwksKeys

ISSUER = "https://idp.test/realms/acme"
AUDIENCE = "weather-api"


class Provider:
    """A JWKS endpoint on a free loopback port: its keys can rotate and it can go down."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}
        self.requests = 0
        self.down = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                if provider.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [provider.jwk(kid) for kid in provider.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str, curve: bool = False) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1()) if curve else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self, kid: str) -> dict:
        private = self.keys[kid]
        algorithm = jwt.algorithms.ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) \
            else jwt.algorithms.RSAAlgorithm
        return {**json.loads(algorithm.to_jwk(private.public_key())), "kid": kid, "use": "sig"}

    def token(self, kid: str, private: object | None = None, **claims: object) -> str:
        body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}
        key = private if private is not None else self.keys[kid]
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider():
    served = Provider()
    served.add_key("k1")
    yield served
    served.stop()


def authenticator(provider: Provider, min_refresh: float = 30, algorithms: tuple[str, ...] = ("RS256",)):
    keys = JwksKeys(provider.url, min_refresh_seconds=min_refresh)
    return JwtAuthenticator(keys.key_for, list(algorithms), audience=AUDIENCE, issuer=ISSUER,
                            leeway_seconds=0), keys


def refusal(auth: JwtAuthenticator, token: str) -> str:
    with pytest.raises(ApiError) as refused:
        auth.subject(f"Bearer {token}")
    assert refused.value.status == 401
    return str(refused.value.detail)


def test_a_token_signed_by_a_published_key_passes_and_a_rotated_key_passes_on_first_use(provider):
    auth, keys = authenticator(provider, min_refresh=0.2)
    assert auth.subject(f"Bearer {provider.token('k1')}") == "alice"

    provider.add_key("k2")  # the provider rotates: k2 is published, tokens are signed with it
    time.sleep(0.25)

    assert auth.subject(f"Bearer {provider.token('k2')}") == "alice"
    assert keys.fetches == 2


def test_an_unknown_key_is_401_and_the_algorithm_comes_from_the_settings(provider):
    auth, _ = authenticator(provider)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    assert "not one the identity provider publishes" in refusal(auth, provider.token("nobody", stranger))
    # A published key's kid on a token signed by another key: the signature fails.
    assert "Signature verification failed" in refusal(auth, provider.token("k1", stranger))
    provider.add_key("ec", curve=True)
    auth_rs_only, _ = authenticator(provider, min_refresh=0)
    assert "alg value is not allowed" in refusal(auth_rs_only, provider.token("ec"))


def test_the_cached_keys_serve_while_the_provider_is_down(provider):
    auth, keys = authenticator(provider, min_refresh=0)
    assert auth.subject(f"Bearer {provider.token('k1')}") == "alice"
    provider.down = True

    keys._fetched_at = time.monotonic() - 7200  # the set is past its age: a refresh is tried and fails
    assert auth.subject(f"Bearer {provider.token('k1')}") == "alice"
    assert provider.requests == 2


def test_the_provider_down_from_the_start_is_401_with_a_clear_detail_and_a_log_line(provider, caplog):
    provider.down = True
    auth, _ = authenticator(provider)

    with caplog.at_level("WARNING", logger="app.proxy.auth"):
        detail = refusal(auth, provider.token("k1"))

    assert "signing keys are not available" in detail
    assert "could not be fetched" in caplog.text


def test_a_flood_of_made_up_kids_fetches_at_most_once_per_min_refresh(provider):
    auth, keys = authenticator(provider, min_refresh=30)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = [provider.token(f"kid-{random.getrandbits(64):x}", stranger) for _ in range(1000)]

    refused = sum(1 for token in tokens if "publishes" in refusal(auth, token))

    assert refused == 1000
    assert provider.requests == 1 and keys.fetches == 1


@pytest.mark.system
def test_the_proxy_checks_tokens_with_the_providers_keys(stack, provider):
    proxy = stack.proxy(AUTH_JWT_ENABLED="true", AUTH_JWT_ALGORITHMS="RS256,ES256", AUTH_JWT_JWKS_URL=provider.url,
                        AUTH_JWT_ISSUER=ISSUER, AUTH_JWT_AUDIENCE=AUDIENCE, AUTH_JWT_JWKS_MIN_REFRESH_SECONDS="1",
                        REQUEST_TIMEOUT_SECONDS="10")
    stack.worker("w", PROCESSING_DELAY_MS="0").wait_ready()
    proxy.wait_ready()

    def ask(token: str) -> requests.Response:
        return requests.post(proxy.url + "/WeatherForecast/city", json={"city": "Oslo", "location": "Norway"},
                             headers={"Authorization": f"Bearer {token}"}, timeout=15)

    assert ask(provider.token("k1")).status_code == 200
    provider.add_key("es", curve=True)
    time.sleep(1.1)  # AUTH_JWT_JWKS_MIN_REFRESH_SECONDS since the first fetch
    assert ask(provider.token("es")).status_code == 200
    refused = ask(provider.token("k1", iss="https://another.test"))
    assert refused.status_code == 401 and refused.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize(("url", "accepted"), [
    ("https://idp.example/certs", True), ("http://127.0.0.1:8080/certs", True), ("http://localhost/certs", True),
    ("http://[::1]:9/certs", True), ("http://idp.example/certs", False), ("file:///etc/passwd", False),
])
def test_the_jwks_url_must_be_https_or_loopback(monkeypatch, url, accepted):
    from pydantic import ValidationError

    from app.proxy.settings import ProxySettings

    env = {"AUTH_JWT_ENABLED": "true", "AUTH_JWT_ALGORITHMS": "RS256", "AUTH_JWT_JWKS_URL": url,
           "AUTH_JWT_ISSUER": ISSUER, "AUTH_JWT_AUDIENCE": AUDIENCE}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if accepted:
        assert ProxySettings().auth_jwt_jwks_url == url
    else:
        with pytest.raises(ValidationError, match="auth_jwt_jwks_url"):
            ProxySettings()
