"""Shipped documentation stands alone and its examples are what the code prints.

* No shipped file cites the design notes that live outside the repository.
* Every ``console`` example in README.md and docs/*.md whose command needs no
  placeholder (no ``RUN_DIR``, no ``…``) is run through the CLI and its output
  compared line by line with the documented one.
* ``.gitignore`` covers every folder ``dpverify demo`` may create.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHIPPED = [
    *DOCS,
    *sorted((ROOT / "notebooks").glob("*.ipynb")),
    *(p for pkg in ("dpverify", "trainers", "audits") for p in sorted((ROOT / pkg).rglob("*.py"))),
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_files_cite_nothing_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    for pattern in (r"ARCHITECTURE(\.md)?\s*§", r"ARCHITECTURE\.md", r"shared/design", r"\.\./shared"):
        assert not re.search(pattern, text), f"{path.name} cites {pattern!r}"


def _console_examples():
    """(doc, command, expected output lines) for runnable console examples."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```console\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            command, expected = None, []
            for line in [*block.splitlines(), "$"]:
                if line.startswith("$"):
                    if command is not None and expected and _runnable(command):
                        out.append((doc.name, command, expected))
                    command, expected = line[1:].strip(), []
                elif command is not None:
                    expected.append(line)
    return out


def _runnable(command: str) -> bool:
    words = shlex.split(command, comments=True)
    return (
        words[:1] == ["dpverify"]
        and "…" not in command
        and not any(w.isupper() and len(w) > 1 for w in words)  # RUN_DIR, FILE, ...
    )


EXAMPLES = _console_examples()


def test_the_docs_have_runnable_examples():
    assert any("noise" in cmd for _, cmd, _ in EXAMPLES)  # docs/accounting.md's


@pytest.mark.parametrize(("doc", "command", "expected"), EXAMPLES, ids=[c for _, c, _ in EXAMPLES])
def test_console_examples_print_what_the_docs_show(doc, command, expected, capsys):
    from dpverify.cli import main

    code = main(shlex.split(command, comments=True)[1:])
    assert code == 0
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert printed == expected, f"{doc}: `{command}` prints {printed!r}"


def test_gitignore_covers_every_demo_folder():
    from dpverify.cli._train import DEMO_DIR

    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in (DEMO_DIR, f"{DEMO_DIR}-2", f"{DEMO_DIR}-9999"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
