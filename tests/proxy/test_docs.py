"""/docs as a person sees it: a real browser renders every operation of openapi.json, no error."""

from __future__ import annotations

import pytest
import requests

from tests.support.browser import check_docs

pytestmark = pytest.mark.system


@pytest.fixture
def proxy(stack):
    return stack.proxy().wait_ready()


def test_a_browser_shows_every_operation_of_the_spec_and_no_error(proxy):
    check_docs(proxy.url, "the proxy")


def test_docs_with_a_slash_redirects_to_docs(proxy):
    answer = requests.get(proxy.url + "/docs/", timeout=5, allow_redirects=False)

    assert answer.status_code in (301, 308)
    assert answer.headers["Location"].endswith("/docs")


def test_docs_off_serves_neither_the_ui_nor_the_spec(stack):
    proxy = stack.proxy(DOCS_ENABLED="false").wait_ready()

    for path in ("/docs", "/docs/", "/openapi.json"):
        assert requests.get(proxy.url + path, timeout=5, allow_redirects=False).status_code == 404
    assert requests.get(proxy.url + "/healthz", timeout=5).status_code == 200
