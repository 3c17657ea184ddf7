"""Human report: verdict first, every check, plots, and no indices."""

import re

import numpy as np
import pytest

from audits import runner
from audits.check import CheckResult
from audits.evidence import collect_evidence
from audits.report import write_report
from audits.sampling import last_executions
from dpverify.errors import InvalidArgument


@pytest.fixture
def cert(monkeypatch, fakes):
    def make(name):
        return CheckResult(name=name, status="pass", reason=f"{name} fine | ok")

    monkeypatch.setattr(runner, "check_configuration", lambda h, **k: make("configuration"))
    monkeypatch.setattr(runner, "check_sampling", lambda ledger, **k: make("sampling"))
    monkeypatch.setattr(runner, "check_privacy", lambda ledger, **k: (make("privacy"), None))
    monkeypatch.setattr(runner, "check_replay", lambda d, **k: make("replay"))
    ledger = fakes.make_ledger(30)
    return runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger))


def test_evidence_is_aggregate(fakes):
    ledger = fakes.make_ledger(30)
    ev = collect_evidence(ledger, steps=last_executions(ledger.steps), delta=1e-5)
    assert ev.batch_sizes.tolist() == [s.batch_size for s in ledger.steps]
    assert ev.count_histogram.sum() == 1000
    assert (np.arange(ev.count_histogram.size) * ev.count_histogram).sum() == ev.batch_sizes.sum()


def test_markdown_report_has_verdict_first_checks_and_plots(cert, tmp_path):
    path = write_report(cert, tmp_path / "report.md", epsilon_points=2)
    text = path.read_text()
    assert text.splitlines()[2].startswith("**Verdict: CERTIFIED**")
    for name in ("integrity", "configuration", "sampling", "mechanics", "privacy", "replay"):
        assert f"| {name} |" in text
    assert "fine \\| ok" in text
    plots = sorted(p.name for p in (tmp_path / "report_plots").iterdir())
    assert plots == ["batch_sizes.png", "epsilon.png", "inclusion_counts.png"]
    assert (tmp_path / "report_plots" / "batch_sizes.png").read_bytes()[:4] == b"\x89PNG"
    assert "secret_note" not in text


def test_html_report_is_self_contained(cert, tmp_path):
    text = write_report(cert, tmp_path / "r.html", epsilon_points=1).read_text()
    assert text.startswith("<!DOCTYPE html>") and "Verdict: CERTIFIED" in text
    assert text.count("data:image/png;base64,") == 3
    assert not (tmp_path / "r_plots").exists()


def test_report_and_json_never_contain_indices(monkeypatch, fakes, tmp_path):
    import json

    header = fakes.make_header(dataset_size=10**6, sampling_rate=1e-4)
    ledger = fakes.make_ledger(5, header=header)
    big = {str(int(i)) for s in ledger.steps for i in s.indices if i >= 100_000}
    assert len(big) > 200
    monkeypatch.setattr(
        runner, "check_replay", lambda d, **k: CheckResult(name="replay", status="skip", reason="r")
    )
    monkeypatch.setattr(
        runner,
        "check_sampling",
        lambda ledger, **k: CheckResult(name="sampling", status="skip", reason="r"),
    )
    monkeypatch.setattr(
        runner,
        "check_privacy",
        lambda ledger: (CheckResult(name="privacy", status="skip", reason="r"), None),
    )
    cert = runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger))
    texts = [
        write_report(cert, tmp_path / "r.md", epsilon_points=0).read_text(),
        json.dumps(cert.to_json()),
        cert.summary_text(),
    ]
    for text in texts:
        numbers = set(re.findall(r"\d{6}", text))
        assert not numbers & big


def test_bad_suffix_is_refused(cert, tmp_path):
    with pytest.raises(InvalidArgument):
        write_report(cert, tmp_path / "r.pdf")


def _integers(text: str) -> set[str]:
    """Whole decimal integers (integer parts of numbers), not digit runs inside hex hashes."""
    return set(re.findall(r"(?<![0-9a-fA-F.])\d+(?![0-9a-fA-F])", text))


@pytest.mark.parametrize("sampler", ["poisson", "fixed_size"])
def test_real_audit_of_a_written_ledger_never_shows_indices(tmp_path, sampler):
    """End to end with every real check (no stubs), passing and failing sampling alike.

    Deterministic (fixed seed); the grep looks for every index >= 100 000 of the ledger
    as a whole number in the JSON, the summary and the Markdown report.
    """
    import json

    from audits import run_audit
    from dpverify.ledger import LedgerWriter
    from dpverify.ledger.records import RunHeader, Seal, Step
    from dpverify.samplers import make_sampler

    n, q, steps = 400_000, 5e-4, 30
    header = RunHeader(
        dataset_size=n,
        sampler="poisson",
        sampling_rate=q,
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=1e-7,
        claimed_epsilon=50.0,
    )
    draw = make_sampler(sampler, n, q, 3)
    big: set[str] = set()
    with LedgerWriter.create(tmp_path / "ledger", header) as writer:
        for t in range(steps):
            idx = draw.sample(t)
            big |= {str(int(i)) for i in idx if i >= 100_000}
            writer.append(
                Step(
                    step=t,
                    indices=idx,
                    noise_std=1.0,
                    noise_draws=1,
                    num_clipped=0,
                    max_grad_norm=0.5,
                    max_clipped_norm=0.5,
                    denominator=q * n,
                    physical_batches=2,
                )
            )
        writer.close(seal=Seal(steps_executed=steps, final_step=steps))
    assert len(big) > 4000
    cert = run_audit(tmp_path / "ledger", replay_steps=None)
    assert cert.check("sampling").status == ("pass" if sampler == "poisson" else "fail")
    texts = [
        json.dumps(cert.to_json()),
        cert.summary_text(),
        write_report(cert, tmp_path / "r.md", epsilon_points=1).read_text(),
    ]
    for text in texts:
        assert not _integers(text) & big
    assert str(steps) in _integers(texts[0])  # the matcher does find whole numbers


_EMOJI = re.compile("[\u2600-\u27bf\U0001f300-\U0001faff\ufe0f]")


def test_html_report_shows_literals_as_code_and_statuses_as_text_badges(cert, tmp_path):
    text = write_report(cert, tmp_path / "r.html", epsilon_points=0).read_text()
    head = cert.ledger_head
    assert f"<code>{head}</code>" in text and "<code>dpverify ledger verify</code>" in text
    assert "`" not in text  # no Markdown syntax leaks into the HTML
    assert '<span class="badge pass">PASS</span>' in text
    assert not _EMOJI.search(text)  # readable without an emoji font
    md = write_report(cert, tmp_path / "r.md", epsilon_points=0).read_text()
    assert f"`{head}`" in md and "| PASS |" in md and not _EMOJI.search(md)


def test_histograms_are_binned_for_short_runs_with_expected_counts_per_bin():
    from scipy import stats

    from audits._plots import binned_against_binomial

    rng = np.random.default_rng(0)
    sizes = rng.binomial(1437, 0.07, size=40)  # a 40-step honest run
    b = binned_against_binomial(np.bincount(sizes), 1437, 0.07, sizes.size)
    assert b.width > 1 and 5 <= b.starts.size <= 8  # ~√40 bars, not one per integer
    assert b.observed.sum() == 40
    assert b.expected.sum() == pytest.approx(40, rel=1e-4)
    # Each bin's expected count is Binomial(total, P(bin)) mass: check one bin directly.
    i = int(np.argmax(b.expected))
    lo, hi = b.starts[i], b.starts[i] + b.width - 1
    p_bin = stats.binom.cdf(hi, 1437, 0.07) - stats.binom.cdf(lo - 1, 1437, 0.07)
    assert b.expected[i] == pytest.approx(40 * p_bin)
    # A long run keeps one bar per integer where the support is narrow.
    counts = np.bincount(rng.binomial(40, 0.07, size=1437))
    assert binned_against_binomial(counts, 40, 0.07, 1437).width == 1
    # Values outside the Binomial's support are still binned (a fixed-size spike far off).
    spike = np.bincount(np.full(40, 300))
    far = binned_against_binomial(spike, 1437, 0.07, 40)
    assert far.observed.sum() == 40 and far.starts[-1] + far.width > 300


def test_plots_never_switch_the_global_matplotlib_backend():
    import subprocess
    import sys

    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import numpy as np\n"
        "from audits import _plots\n"
        "from types import SimpleNamespace as NS\n"
        "png = _plots.epsilon_figure({'rdp': [(1, 0.5), (2, 0.7)]}, delta=1e-5, claimed=1.0)\n"
        "assert png[:4] == b'\\x89PNG'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


FORGED = "x\n\n**Verdict: CERTIFIED** — forged\r\n# Verdict\u2028<b>bold</b> | `code` [l](u)"


def test_header_fields_cannot_forge_a_verdict_line(monkeypatch, fakes, tmp_path):
    def make(name):
        return CheckResult(name=name, status="fail", reason=f"quoting {FORGED}")

    monkeypatch.setattr(runner, "check_configuration", lambda h, **k: make("configuration"))
    header = fakes.make_header(task=FORGED, run_id=FORGED, sampler="poisson")
    ledger = fakes.make_ledger(20, header=header)
    cert = runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger), replay_steps=None)
    md = write_report(cert, tmp_path / "r.md", epsilon_points=1).read_text()
    lines = md.splitlines()
    assert sum(line.startswith("**Verdict") for line in lines) == 1
    assert all(not line.startswith("#") or line.startswith(("# dpverify", "## ")) for line in lines)
    assert "<b>" not in md and "\u2028" not in md and "forged" in md
    assert "\\*\\*Verdict: CERTIFIED\\*\\*" in md  # shown literally, not as bold
    page = write_report(cert, tmp_path / "r.html", epsilon_points=1).read_text()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count('class="verdict"') == 1
