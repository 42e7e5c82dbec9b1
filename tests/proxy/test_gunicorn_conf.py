"""The proxy starts under gunicorn without a word of warning."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.system


def test_the_proxy_starts_and_answers_without_warnings(stack):
    proxy = stack.proxy().wait_ready()
    requests.get(proxy.url + "/WeatherForecast", timeout=5).raise_for_status()
    proxy.stop()

    log = proxy.log()
    assert "Booting worker" in log, log[-2000:]
    # gevent's MonkeyPatchWarning (ssl imported before the workers patch it) was printed twice per start.
    assert "Warning" not in log, log[-3000:]
