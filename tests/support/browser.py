"""What a person sees in a page: Debian's Chromium, headless, runs its scripts and hands back the DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
SWAGGER_ERRORS = ("Unable to render this definition", "Failed to load API definition", "Errors")


@dataclass(frozen=True)
class SwaggerPage:
    operations: set[tuple[str, str]]  # (method, path) of every operation the UI lists
    errors: list[str]  # Swagger UI's error messages on the page


def rendered_dom(url: str, budget_ms: int = 15_000) -> str:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not on PATH: make setup installs Debian's chromium"
    # A profile of its own per call: parallel or leftover Chromiums must not share one.
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def swagger_page(url: str) -> SwaggerPage:
    dom = rendered_dom(url)
    # Swagger UI renders each operation as <div class="opblock opblock-METHOD" ...> holding
    # <span class="opblock-summary-path" data-path="PATH">.
    blocks = re.findall(r'class="opblock opblock-(\w+)[^"]*".*?class="opblock-summary-path" data-path="([^"]+)"',
                        dom, flags=re.S)
    errors = [text for text in SWAGGER_ERRORS if re.search(rf">\s*{re.escape(text)}", dom)]
    return SwaggerPage({(method.lower(), path) for method, path in blocks}, errors)


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    """(method, path) of every operation an OpenAPI document describes."""
    return {(method, path) for path, item in spec["paths"].items() for method in item if method in METHODS}


def check_docs(base_url: str, label: str) -> SwaggerPage:
    """/docs of a running proxy in Chromium: every operation of its openapi.json listed, no error shown."""
    import requests

    spec = requests.get(base_url + "/openapi.json", timeout=5).json()
    page = swagger_page(base_url + "/docs")
    print(f"/docs of {label} in Chromium lists {len(page.operations)} operations: {sorted(page.operations)}")

    assert page.errors == []
    assert page.operations == spec_operations(spec)
    return page
