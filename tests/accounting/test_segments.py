"""segments_from_ledger: every executed step, repeats after resumes included."""

from types import SimpleNamespace

import pytest

from dpverify.accounting import Segment, merge_segments, segments_from_ledger
from dpverify.accounting.segments import segments_from_steps
from dpverify.errors import InvalidArgument, UnusableInput


def _step(t, **kw):
    return SimpleNamespace(step=t, sampling_rate=kw.get("q"), noise_multiplier=kw.get("sigma"))


def test_homogeneous_run_is_one_segment(make_run):
    segs = segments_from_ledger(make_run(steps=25))
    assert segs == [Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=25)]


def test_repeated_steps_after_resume_count(make_run):
    # steps 0..14 executed, restart from 10: steps 10..19 executed -> 25 in all
    run = make_run(steps=20, resume_at=10, repeat_to=15)
    segs = segments_from_ledger(run)
    assert sum(s.steps for s in segs) == 25
    # cut at the resume, so each segment is a run of consecutive step numbers
    assert segs == [
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=15),
        Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=10),
    ]
    # run dir, ledger dir and a read Ledger all work
    from dpverify.ledger import read_ledger

    assert segments_from_ledger(run / "ledger") == segs
    assert segments_from_ledger(read_ledger(run)) == segs


def test_per_step_overrides_split_segments(make_run):
    overrides = {t: {"noise_multiplier": 2.0} for t in range(5, 8)}
    overrides[9] = {"sampling_rate": 0.02}
    segs = segments_from_ledger(make_run(steps=12, overrides=overrides))
    assert [(s.sampling_rate, s.noise_multiplier, s.steps) for s in segs] == [
        (0.01, 1.0, 5),
        (0.01, 2.0, 3),
        (0.01, 1.0, 1),
        (0.02, 1.0, 1),
        (0.01, 1.0, 2),
    ]


def test_duck_typed_ledger_and_header_fallback():
    header = SimpleNamespace(sampling_rate=0.1, noise_multiplier=0.5)
    ledger = SimpleNamespace(header=header, steps=[_step(0), _step(1, sigma=0.5), _step(2, q=0.2)])
    assert segments_from_ledger(ledger) == [
        Segment(sampling_rate=0.1, noise_multiplier=0.5, steps=2),
        Segment(sampling_rate=0.2, noise_multiplier=0.5, steps=1),
    ]
    assert segments_from_steps([], sampling_rate=0.1, noise_multiplier=1.0) == []


def test_merge_segments_merges_only_consecutive():
    a = Segment(sampling_rate=0.1, noise_multiplier=1.0, steps=2)
    b = Segment(sampling_rate=0.2, noise_multiplier=1.0, steps=3)
    assert merge_segments([a, a, b, a]) == [
        Segment(sampling_rate=0.1, noise_multiplier=1.0, steps=4),
        b,
        a,
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sampling_rate": 0.0, "noise_multiplier": 1.0, "steps": 1}, "sampling_rate"),
        ({"sampling_rate": 1.5, "noise_multiplier": 1.0, "steps": 1}, "sampling_rate"),
        ({"sampling_rate": 0.1, "noise_multiplier": -1.0, "steps": 1}, "noise_multiplier"),
        ({"sampling_rate": 0.1, "noise_multiplier": 1.0, "steps": 0}, "steps"),
        ({"sampling_rate": 0.1, "noise_multiplier": 1.0, "steps": 1.5}, "steps"),
    ],
)
def test_segment_validation(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        Segment(**kwargs)


def test_missing_path_is_unusable(tmp_path):
    with pytest.raises(UnusableInput):
        segments_from_ledger(tmp_path / "nope")
