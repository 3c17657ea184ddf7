"""Integrity check on hand-made ledgers: chain, contiguity, resumes, seal."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits.integrity import check_integrity, structural_problems
from dpverify.ledger.records import Checkpoint, Resume, Seal, Step


def _with_records(fakes, records):
    ledger = fakes.make_ledger(0, sealed=False)
    return fakes.FakeLedger(header=ledger.header, records=(ledger.header, *records))


def _steps(fakes, header, numbers):
    rng = np.random.default_rng(1)
    return [fakes.honest_step(header, t, rng) for t in numbers]


def test_honest_sealed_ledger_passes(fakes):
    ledger = fakes.make_ledger(10)
    r = check_integrity(fakes.verify_for(ledger), ledger)
    assert r.status == "pass", r.reason
    assert r.details["logical_steps"] == 10 and not r.details["corrupt"]


def test_unsealed_ledger_warns_and_is_audited_to_its_last_step(fakes):
    ledger = fakes.make_ledger(7, sealed=False)
    r = check_integrity(fakes.verify_for(ledger), ledger)
    assert r.status == "warn"
    assert "not sealed" in r.reason and "last complete step (6)" in r.reason


def test_torn_tail_warns(fakes):
    ledger = fakes.make_ledger(5)
    r = check_integrity(fakes.verify_for(ledger, torn_tail_bytes=13), ledger)
    assert r.status == "warn" and "13 bytes" in r.reason


def test_corrupt_ledger_fails_naming_the_record(fakes):
    ledger = fakes.make_ledger(5)
    verify = fakes.verify_for(ledger, ok=False, first_bad_record=3, reason="hash mismatch")
    r = check_integrity(verify, None)
    assert r.status == "fail" and r.details["corrupt"]
    assert "record 3" in r.reason and "hash mismatch" in r.reason


def test_gap_and_repeat_without_resume_fail(fakes):
    header = fakes.make_header()
    gap = _with_records(fakes, _steps(fakes, header, [0, 1, 3]))
    assert "skips ahead" in structural_problems(gap)[0]
    repeat = _with_records(fakes, _steps(fakes, header, [0, 1, 1]))
    assert "repeats" in structural_problems(repeat)[0]
    r = check_integrity(fakes.verify_for(gap), gap)
    assert r.status == "fail" and r.details["corrupt"]


def test_consistent_resume_passes(fakes):
    header = fakes.make_header()
    s = _steps(fakes, header, [0, 1, 2, 1, 2, 3])
    records = [
        *s[:2],
        Checkpoint(step=1, digest="d1"),
        s[2],
        Resume(step=1, checkpoint_digest="d1"),
    ]
    records += [*s[3:], Seal(steps_executed=6, final_step=4)]
    ledger = _with_records(fakes, records)
    assert structural_problems(ledger) == []
    r = check_integrity(fakes.verify_for(ledger), ledger)
    assert r.status == "pass" and "1 resume" in r.reason


def test_inconsistent_resumes_fail(fakes):
    header = fakes.make_header()
    s = _steps(fakes, header, [0, 1, 5])
    beyond = _with_records(fakes, [*s[:2], Resume(step=5), s[2]])
    assert "only steps 0..1" in structural_problems(beyond)[0]
    unknown = _with_records(fakes, [*s[:2], Resume(step=1, checkpoint_digest="zz"), s[1]])
    assert "never recorded" in structural_problems(unknown)[0]
    early = _with_records(fakes, [s[0], Checkpoint(step=4, digest="d")])
    assert "write-ahead" in structural_problems(early)[0]


def test_seal_mismatch_and_records_after_seal(fakes):
    header = fakes.make_header()
    s = _steps(fakes, header, [0, 1, 2])
    short = _with_records(fakes, [*s, Seal(steps_executed=2, final_step=3)])
    assert "seal says 2 steps" in structural_problems(short)[0]
    after = _with_records(fakes, [*s[:2], Seal(steps_executed=2, final_step=2), s[2]])
    assert "follows the seal" in structural_problems(after)[0]


def test_index_outside_dataset_and_empty_ledger_fail(fakes):
    header = fakes.make_header(dataset_size=10, sampling_rate=0.5)
    bad = _with_records(fakes, [Step(step=0, indices=[2, 10])])
    bad = fakes.FakeLedger(header=header, records=(header, *bad.records[1:]))
    problems = structural_problems(bad)
    assert "outside [0, N=10)" in problems[0]
    assert "10]" not in problems[0].replace("N=10)", "")  # the index itself is not printed
    empty = _with_records(fakes, [])
    assert structural_problems(empty) == ["the ledger records no steps"]


# --- properties ------------------------------------------------------------------------


@st.composite
def _histories(draw):
    """Executed step numbers of a run with random restarts, as (records, n_steps)."""
    events: list = []
    last = -1
    for _ in range(draw(st.integers(1, 6))):
        if last >= 0 and draw(st.booleans()):
            k = draw(st.integers(0, last + 1))
            events.append(("resume", k))
            start = k
        else:
            start = last + 1
        length = draw(st.integers(1, 5))
        events += [("step", t) for t in range(start, start + length)]
        last = start + length - 1
    return events


def _build(fakes, events):
    header = fakes.make_header(dataset_size=50, sampling_rate=0.1)
    rng = np.random.default_rng(0)
    records = [header]
    for kind, k in events:
        records.append(fakes.honest_step(header, k, rng) if kind == "step" else Resume(step=k))
    steps = [k for kind, k in events if kind == "step"]
    records.append(Seal(steps_executed=len(steps), final_step=events[-1][1] + 1))
    return records


# ``fakes`` is a stateless namespace of helpers: sharing it across examples is safe.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=_histories(), data=st.data())
def test_valid_histories_pass_and_any_removed_step_is_caught(fakes, events, data):
    records = _build(fakes, events)
    header = records[0]
    assert structural_problems(fakes.FakeLedger(header=header, records=tuple(records))) == []
    step_positions = [i for i, r in enumerate(records) if isinstance(r, Step)]
    drop = data.draw(st.sampled_from(step_positions))
    edited = tuple(r for i, r in enumerate(records) if i != drop)
    assert structural_problems(fakes.FakeLedger(header=header, records=edited))
