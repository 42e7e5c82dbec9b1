from __future__ import annotations

import pytest

from app.worker.settings import DelayRange


@pytest.mark.parametrize(("text", "expected"), [
    ("0", DelayRange(0, 0)),
    ("150", DelayRange(150, 150)),
    ("100-500", DelayRange(100, 500)),
    (" 5-5 ", DelayRange(5, 5)),
])
def test_delay_ranges(text, expected):
    assert DelayRange.parse(text) == expected


@pytest.mark.parametrize("text", ["", "-5", "5-", "a-b", "500-100", "1-600001"])
def test_bad_delay_ranges(text):
    with pytest.raises(ValueError):
        DelayRange.parse(text)
