"""The README keeps its promises: its contents match its headings, its links land, the make
targets and load-tool examples it shows exist and parse."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.support.processes import ROOT
from tools.loadtest import parse_arguments

README = (ROOT / "README.md").read_text()


def outside_code(text: str) -> list[str]:
    lines, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            lines.append(line)
    return lines


def code_lines(text: str) -> list[str]:
    lines, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif fence:
            lines.append(line)
    return lines


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def headings(text: str, deepest: int = 6) -> list[tuple[int, str]]:
    found = []
    for line in outside_code(text):
        match = re.match(r"^(#{1,6}) (.*)$", line)
        if match and len(match.group(1)) <= deepest:
            found.append((len(match.group(1)), match.group(2)))
    return found


def test_the_contents_list_every_section_in_order():
    body = README.split("## Contents", 1)[1]
    sections = [(level, title) for level, title in headings(body, deepest=3) if level >= 2]
    listed = re.findall(r"^( *)- \[([^\]]+)\]\(#([^)]+)\)$", body.split("\n## ", 1)[0], flags=re.M)

    assert [(2 + len(indent) // 2, anchor) for indent, _, anchor in listed] == [
        (level, slug(title)) for level, title in sections]


def test_the_users_path_comes_before_the_internals():
    order = [title for level, title in headings(README) if level == 2]

    assert order[:6] == ["Contents", "The two commands", "Deploying with Helm", "Configuration", "API", "Operations"]
    assert order.index("Architecture") > order.index("Operations")


def test_every_link_to_a_section_lands_on_one():
    anchors = {slug(title) for _, title in headings(README)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    history = (ROOT / "docs" / "performance-history.md").read_text()
    from_docs = re.findall(r"\]\(\.\./README\.md#([^)]+)\)", history)

    assert links and from_docs
    assert sorted(set(links + from_docs) - anchors) == []


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z0-9-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def test_every_make_target_the_readme_names_exists():
    named = set(re.findall(r"`make ([a-z0-9-]+)", README))
    named |= {m for line in code_lines(README) for m in re.findall(r"(?:^|\s)make ([a-z0-9-]+)", line)}

    assert {"run", "test", "load", "bench"} <= named
    assert sorted(named - make_targets()) == []


def loadtest_examples() -> list[list[str]]:
    examples = []
    for line in code_lines(README):
        command = line.split("#", 1)[0].strip()
        if "-m tools.loadtest" in command:
            examples.append(shlex.split(command.split("-m tools.loadtest", 1)[1]))
        elif command.startswith("make load"):
            variables = dict(item.split("=", 1) for item in shlex.split(command)[2:])
            examples.append(["--rate", variables.get("LOAD_RATE", "10"),
                             "--duration", variables.get("LOAD_DURATION", "30"),
                             *shlex.split(variables.get("LOAD_ARGS", ""))])
    return examples


@pytest.mark.parametrize("arguments", loadtest_examples(), ids=" ".join)
def test_every_load_tool_example_parses(arguments):
    parse_arguments(arguments)  # exits 2 on anything the tool refuses


def test_make_load_takes_the_variables_the_readme_names():
    dry_run = subprocess.run(["make", "-n", "load", "LOAD_RATE=15", "LOAD_DURATION=60", "LOAD_ARGS=--report x.html"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "--rate 15 --duration 60 --report x.html" in dry_run
