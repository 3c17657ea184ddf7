"""docs/ledger-format.md stays true: its Python example runs, its constants match."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from dpverify.ledger._framing import FRAME_OVERHEAD, MAGIC

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger-format.md"


def test_python_example_runs(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})
    assert (tmp_path / "runs" / "demo" / "ledger" / "records.log").exists()


def test_documented_constants():
    text = DOC.read_text()
    assert MAGIC == b"DPVLEDG\x01" and '"DPVLEDG" 0x01' in text
    assert f"Frame overhead: {FRAME_OVERHEAD} bytes" in text
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_module_doctests():
    import doctest

    import dpverify.ledger.writer as writer

    result = doctest.testmod(writer)
    assert result.attempted > 0 and result.failed == 0
