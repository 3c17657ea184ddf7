"""Audit runner: verdict rules, with each check replaced by a stub of given status."""

import numpy as np
import pytest

from audits import runner
from audits.check import CheckResult


def _stub(monkeypatch, **statuses):
    """Replace the checks after integrity by stubs returning the given statuses."""

    def make(name):
        status = statuses.get(name, "pass")
        return CheckResult(name=name, status=status, reason=f"{name} {status}")

    monkeypatch.setattr(runner, "check_configuration", lambda h, **k: make("configuration"))
    monkeypatch.setattr(runner, "check_sampling", lambda ledger, **k: make("sampling"))
    monkeypatch.setattr(runner, "check_mechanics", lambda h, s: make("mechanics"))
    monkeypatch.setattr(runner, "check_privacy", lambda ledger, **k: (make("privacy"), None))
    monkeypatch.setattr(runner, "check_replay", lambda d, **k: make("replay"))
    monkeypatch.setattr(runner, "check_empirical", lambda led, d, **k: make("empirical"))


def _audit(fakes, ledger=None, **verify):
    ledger = ledger or fakes.make_ledger(5)
    return runner.audit_ledger(ledger, verify_report=fakes.verify_for(ledger, **verify))


def test_all_pass_is_certified(monkeypatch, fakes):
    _stub(monkeypatch)
    cert = _audit(fakes)
    assert cert.verdict == "certified" and cert.exit_code == 0
    assert [c.name for c in cert.checks] == [
        "integrity",
        "configuration",
        "sampling",
        "mechanics",
        "privacy",
        "replay",
        "empirical",
    ]
    assert cert.steps == 5 and cert.claimed_epsilon == 3.0 and cert.ledger_head == "ab" * 32
    assert cert.evidence.batch_sizes.size == 5


def test_warn_and_skip_do_not_refute(monkeypatch, fakes):
    _stub(monkeypatch, sampling="warn", replay="skip")
    cert = _audit(fakes)
    assert cert.verdict == "certified", cert.verdict_reason
    assert cert.verdict_reason.startswith("every check that ran passed")
    assert "warning: sampling; not run: replay" in cert.verdict_reason


@pytest.mark.parametrize(
    "failing", ["configuration", "sampling", "mechanics", "privacy", "replay", "empirical"]
)
def test_any_failed_check_refutes(monkeypatch, fakes, failing):
    _stub(monkeypatch, **{failing: "fail"})
    cert = _audit(fakes)
    assert cert.verdict == "refuted" and cert.exit_code == 1
    assert cert.verdict_reason.startswith(f"{failing}: {failing} fail")


def test_corrupt_ledger_is_unverifiable_and_skips_the_rest(monkeypatch, fakes):
    _stub(monkeypatch)
    ledger = fakes.make_ledger(5)
    verify = fakes.verify_for(ledger, ok=False, first_bad_record=2, reason="bad crc")
    cert = runner.audit_ledger(None, verify_report=verify)
    assert cert.verdict == "unverifiable" and cert.exit_code == 1
    assert "record 2" in cert.verdict_reason
    assert [c.status for c in cert.checks[1:]] == ["skip"] * 6
    assert cert.to_json()["checks"][0]["status"] == "fail"


def test_an_inconsistent_but_readable_ledger_still_states_its_claim(monkeypatch, fakes):
    """Regression: the certificate said 'claimed ε = none' though the header was intact."""
    _stub(monkeypatch)
    ledger = fakes.make_ledger(5, header=fakes.make_header(claimed_epsilon=3.0))
    verify = fakes.verify_for(ledger, ok=False, first_bad_record=2, reason="gap")
    cert = runner.audit_ledger(ledger, verify_report=verify)
    assert cert.verdict == "unverifiable"
    assert cert.claimed_epsilon == 3.0 and cert.delta == ledger.header.delta


def test_no_claim_is_unverifiable(monkeypatch, fakes):
    _stub(monkeypatch)
    ledger = fakes.make_ledger(5, header=fakes.make_header(claimed_epsilon=None))
    cert = _audit(fakes, ledger)
    assert cert.verdict == "unverifiable" and "claims no ε" in cert.verdict_reason


def test_a_crashing_check_is_reported_not_raised(monkeypatch, fakes):
    _stub(monkeypatch)

    def boom(ledger, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(runner, "check_sampling", boom)
    cert = _audit(fakes)
    sampling = cert.check("sampling")
    assert sampling.status == "fail" and "RuntimeError: kaboom" in sampling.reason
    assert cert.verdict == "unverifiable"


def test_seal_claim_overrides_the_header(monkeypatch, fakes):
    from dpverify.ledger.records import Seal

    _stub(monkeypatch)
    ledger = fakes.make_ledger(3, sealed=False)
    sealed = fakes.FakeLedger(
        header=ledger.header,
        records=(
            *ledger.records,
            Seal(steps_executed=3, final_step=3, claimed_epsilon=4.5, delta=1e-6),
        ),
    )
    cert = _audit(fakes, sealed)
    assert (cert.claimed_epsilon, cert.delta) == (4.5, 1e-6)


# --- real on-disk ledgers -------------------------------------------------------------


def test_run_audit_on_missing_or_non_ledger_path_is_unusable(tmp_path):
    from dpverify.errors import UnusableInput

    with pytest.raises(UnusableInput):
        runner.run_audit(tmp_path / "nope")
    with pytest.raises(UnusableInput):
        runner.run_audit(tmp_path)


def test_run_audit_arguments_are_validated(tmp_path, fakes):
    from dpverify.errors import InvalidArgument, UnusableInput

    path = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(3))
    with pytest.raises(InvalidArgument):
        runner.run_audit(path, alpha=1.5)
    with pytest.raises(InvalidArgument):
        runner.run_audit(path, replay_steps=0)
    with pytest.raises(UnusableInput):
        runner.run_audit(path, noise_key_path=tmp_path / "no.key")


def test_flipped_byte_in_a_step_is_unverifiable(tmp_path, fakes):
    path = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(6))
    log = path / "records.log"
    data = bytearray(log.read_bytes())
    start, _end = fakes.frames(bytes(data))[3]  # header, step 0, step 1, step 2 ...
    data[start + 9 + 2] ^= 0x40  # inside step 2's payload (its indices)
    log.write_bytes(bytes(data))
    cert = runner.run_audit(path, replay_steps=None)
    assert cert.verdict == "unverifiable" and cert.exit_code == 1
    assert "record 3" in cert.check("integrity").reason


def test_removed_step_is_unverifiable(tmp_path, fakes):
    path = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(6))
    log = path / "records.log"
    data = log.read_bytes()
    start, end = fakes.frames(data)[4]
    log.write_bytes(data[:start] + data[end:])
    cert = runner.run_audit(tmp_path / "ledger", replay_steps=None)
    assert cert.verdict == "unverifiable"
    assert "record 4" in cert.verdict_reason


def test_crashed_run_on_disk_is_audited_up_to_its_last_complete_step(tmp_path, fakes):
    """No seal and a half-written record at the end, as a run killed mid-write leaves it."""
    path = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(8, sealed=False))
    log = path / "records.log"
    data = log.read_bytes()
    start, end = fakes.frames(data)[-1]
    log.write_bytes(data + data[start : (start + end) // 2])  # torn tail
    cert = runner.run_audit(path, replay_steps=None)
    integrity = cert.check("integrity")
    assert integrity.status == "warn", integrity.reason
    assert "not sealed" in integrity.reason and "torn tail" in integrity.reason
    assert "last complete step (7)" in integrity.reason
    assert cert.steps == 8 and cert.sealed is False
    assert cert.verdict in ("certified", "refuted") and cert.check("privacy").status == "pass"


def test_a_check_that_can_neither_confirm_nor_refute_makes_the_run_unverifiable(
    monkeypatch, fakes
):
    """δ ≥ 1/N, a sampler without an upper bound, a claim inside the accountants' interval."""
    _stub(monkeypatch)
    unverifiable = CheckResult(
        name="privacy", status="fail", reason="no upper bound", details={"unverifiable": True}
    )
    monkeypatch.setattr(runner, "check_privacy", lambda ledger, **k: (unverifiable, None))
    cert = _audit(fakes)
    assert cert.verdict == "unverifiable" and cert.verdict_reason == "privacy: no upper bound"
    # a genuine failure elsewhere still refutes
    monkeypatch.setattr(
        runner,
        "check_mechanics",
        lambda h, s: CheckResult(name="mechanics", status="fail", reason="bad"),
    )
    assert _audit(fakes).verdict == "refuted"


def test_privacy_gets_the_sampling_checks_verdict_on_the_rates(monkeypatch, fakes):
    seen = {}
    _stub(monkeypatch)

    def privacy(ledger, **k):
        seen.update(k)
        return CheckResult(name="privacy", status="pass", reason="ok"), None

    monkeypatch.setattr(runner, "check_privacy", privacy)
    _audit(fakes)
    # the stub's sampling result has no such detail; max_groups is the audit's default
    assert seen == {"rates_verified": False, "max_groups": None}
    monkeypatch.setattr(
        runner,
        "check_sampling",
        lambda ledger, **k: CheckResult(
            name="sampling", status="pass", reason="ok", details={"rates_verified": True}
        ),
    )
    _audit(fakes)
    assert seen == {"rates_verified": True, "max_groups": None}


def _in_memory_certificate(path):
    """The audit as it was before streaming: the whole ledger read, then audited."""
    from dpverify.ledger import read_ledger

    ledger = read_ledger(path)
    report = runner._ScanReport(
        ok=True, records=len(ledger.records), steps=len(ledger.steps), head=ledger.head,
        sealed=ledger.seal is not None, torn_tail_bytes=ledger.torn_tail_bytes,
    )  # fmt: skip
    return runner.audit_ledger(ledger, verify_report=report, replay_steps=None)


def _resumed_ledger(fakes, *, redraw: bool):
    """40 steps, a resume at step 30 re-executing 30..39 (same batches, or step 33 redrawn),
    and a rate change for the last 10 steps."""
    from dpverify.ledger import Resume, Seal

    header = fakes.make_header(sampling_rate=0.05)
    rng = np.random.default_rng(5)
    first = [fakes.honest_step(header, t, rng) for t in range(40)]
    again = list(first[30:])
    if redraw:
        again[3] = fakes.honest_step(header, 33, np.random.default_rng(99))
    late = [fakes.honest_step(header, t, rng, sampling_rate=0.04) for t in range(40, 50)]
    records = [header, *first, Resume(step=30), *again, *late, Seal(steps_executed=60, final_step=50)]
    return fakes.FakeLedger(header=header, records=tuple(records))


@pytest.mark.parametrize("redraw", [False, True])
def test_streamed_audit_equals_the_in_memory_audit(tmp_path, fakes, redraw):
    """One streaming pass (battery, counts, outline) gives the certificate of the whole-ledger audit,
    resumes, a redrawn re-execution and a rate change included."""
    path = fakes.write_ledger(tmp_path / "ledger", _resumed_ledger(fakes, redraw=redraw))
    streamed = runner.run_audit(path, replay_steps=None)
    whole = _in_memory_certificate(path)
    assert streamed.verdict == whole.verdict
    for a, b in zip(streamed.checks, whole.checks, strict=True):
        assert (a.name, a.status, a.reason) == (b.name, b.status, b.reason)
        assert a.details == b.details, a.name
    ev, ew = streamed.evidence, whole.evidence
    assert np.array_equal(ev.count_histogram, ew.count_histogram)
    assert np.array_equal(ev.batch_sizes, ew.batch_sizes)
    assert ev.count_histogram[1:].sum() > 0
    if redraw:
        assert streamed.check("sampling").details["redrawn_executions"] == 1


def test_streamed_audit_reports_a_battery_error_as_the_sampling_check(tmp_path, fakes, monkeypatch):
    from dpverify import stats

    def broken(self, record):
        raise ValueError("boom in the battery")

    monkeypatch.setattr(stats.SamplingStream, "add", broken)
    path = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(6))
    cert = runner.run_audit(path, replay_steps=None)
    sampling = cert.check("sampling")
    assert sampling.failed and "boom in the battery" in sampling.reason
    assert sampling.details.get("error") is True
    # the report's counts, which the battery would have shared, are counted on a second read
    whole = _in_memory_certificate(path)
    assert np.array_equal(cert.evidence.count_histogram, whole.evidence.count_histogram)
    assert cert.evidence.count_histogram[1:].sum() > 0


@pytest.mark.parametrize("redraw", [False, True])
def test_two_process_pass_equals_the_one_process_pass(tmp_path, fakes, monkeypatch, redraw):
    """A helper process taking part of the battery's examples (forced on with a tiny chunk) gives the
    certificate of the one-process pass and of the whole-ledger audit: resumes, a redrawn
    re-execution and a rate change included."""
    from dpverify.stats import _ledger

    path = fakes.write_ledger(tmp_path / "ledger", _resumed_ledger(fakes, redraw=redraw))
    monkeypatch.setattr(_ledger, "STREAM_CHUNK", 40)
    started = []
    original = _ledger.BatchStream._masked_chunk

    def spy(self, *a):
        original(self, *a)
        started.append(self._split < self._n)

    monkeypatch.setattr(_ledger.BatchStream, "_masked_chunk", spy)
    two = runner.run_audit(path, replay_steps=None, processes=2)
    assert any(started)  # the helper took part
    one = runner.run_audit(path, replay_steps=None, processes=1)
    whole = _in_memory_certificate(path)
    for cert in (one, whole):
        assert two.verdict == cert.verdict
        for a, b in zip(two.checks, cert.checks, strict=True):
            assert (a.name, a.status, a.reason, a.details) == (b.name, b.status, b.reason, b.details)
        assert np.array_equal(two.evidence.count_histogram, cert.evidence.count_histogram)


@pytest.mark.parametrize(
    ("resumed", "kill", "used_early"), [(False, False, True), (False, True, False), (True, False, None)]
)
def test_early_privacy_process_gives_the_same_certificate(
    tmp_path, fakes, monkeypatch, resumed, kill, used_early
):
    """The privacy accounting started early in a second process (forced on for a small ledger) is used
    when its inputs are the check's, and the certificate is the one-process one; a killed early process
    only means the check computes ε itself.  (The resumed ledger's lower late rate is trusted only if
    the sampling check verifies it: the early result, computed from the recorded rates, is used only
    when the check's segments are those.)"""
    from audits import _early_privacy

    ledger = _resumed_ledger(fakes, redraw=False) if resumed else fakes.make_ledger(30)
    path = fakes.write_ledger(tmp_path / "ledger", ledger)
    monkeypatch.setattr(_early_privacy, "worth_starting", lambda p: True)
    used = []
    original = _early_privacy.EarlyPrivacy.compute

    def spy(self, *a, **k):
        if kill and self._proc is not None:
            self._proc.kill()
        out = original(self, *a, **k)
        used.append(self.used)
        return out

    monkeypatch.setattr(_early_privacy.EarlyPrivacy, "compute", spy)
    early = runner.run_audit(path, replay_steps=None)
    assert len(used) == 1 and (used_early is None or used[0] == used_early)
    one = runner.run_audit(path, replay_steps=None, processes=1)
    assert len(used) == 1  # one process: no early accounting
    assert early.verdict == one.verdict
    for a, b in zip(early.checks, one.checks, strict=True):
        assert (a.name, a.status, a.reason, a.details) == (b.name, b.status, b.reason, b.details)
    assert early.epsilon["pld"] == one.epsilon["pld"]
