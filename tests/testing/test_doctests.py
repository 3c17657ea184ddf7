"""The runnable examples in the docstrings of the sampler, battery and testing modules."""

import doctest

import pytest

import dpverify.samplers.poisson
import dpverify.stats.battery
import dpverify.testing.check


@pytest.mark.parametrize(
    "module",
    [dpverify.samplers.poisson, dpverify.stats.battery, dpverify.testing.check],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_the_documented_pytest_example_runs(tmp_path):
    """The user example of docs/statistics.md ("Testing your own sampler"), run by pytest."""
    import pathlib
    import re
    import subprocess
    import sys

    docs = pathlib.Path(__file__).parents[2] / "docs" / "statistics.md"
    section = docs.read_text().split("## Testing your own sampler", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "def test_" in code and "check_sampler" in code
    (tmp_path / "test_my_sampler.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "test_my_sampler.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout
