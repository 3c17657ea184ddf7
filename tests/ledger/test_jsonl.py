"""JSON Lines interchange: round trips and one clear error per bad line."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from dpverify.errors import InvalidArgument, UnusableInput
from dpverify.ledger import export_jsonl, import_jsonl, read_ledger

RUN = {
    "type": "run", "dataset_size": 10000, "sampler": "poisson", "sampling_rate": 0.01,
    "noise_multiplier": 1.1, "clip_norm": 1.0, "delta": 1e-5, "claimed_epsilon": 2.0,
    "neighbouring": "add_remove",
}  # fmt: skip


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_import_the_issue_example(tmp_path):
    src = _write(
        tmp_path / "run.jsonl",
        [
            RUN,
            {"type": "step", "step": 0, "indices": [3, 17, 254]},
            {"type": "step", "step": 1, "indices": [9, 2], "noise_multiplier": 1.2,
             "clip_norm": 0.5, "noise_std": 0.6, "num_clipped": 1, "max_grad_norm": "NaN"},
            {"type": "resume", "step": 1},
            {"type": "step", "step": 1, "indices": []},
        ],
    )  # fmt: skip
    target = import_jsonl(src, tmp_path / "run")
    assert target == tmp_path / "run" / "ledger"
    ledger = read_ledger(tmp_path / "run")
    assert ledger.header.claimed_epsilon == 2.0
    assert [s.step for s in ledger.steps] == [0, 1, 1]
    np.testing.assert_array_equal(ledger.steps[1].indices, [2, 9])  # sorted on import
    assert ledger.steps[0].clip_norm is None  # missing: the run's value
    assert ledger.steps[1].noise_multiplier == 1.2 and np.isnan(ledger.steps[1].max_grad_norm)
    # no seal line: the file may have been cut short, so the ledger stays open (issue 15.14)
    assert ledger.seal is None
    import_jsonl(src, tmp_path / "sealed", seal=True)
    sealed = read_ledger(tmp_path / "sealed")
    assert sealed.seal is not None and sealed.seal.steps_executed == 3


def test_round_trip_ledger_jsonl_ledger(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "a" / "ledger")
    n = export_jsonl(path, tmp_path / "a.jsonl")
    assert n == 12
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o600
    import_jsonl(tmp_path / "a.jsonl", tmp_path / "b")
    a, b = read_ledger(path), read_ledger(tmp_path / "b")
    assert a.records == b.records and a.head == b.head
    export_jsonl(tmp_path / "b", tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_export_refuses_to_overwrite(tmp_path, helpers):
    path = helpers.small_ledger(tmp_path / "l")
    export_jsonl(path, tmp_path / "x.jsonl")
    with pytest.raises(InvalidArgument, match="already exists"):
        export_jsonl(path, tmp_path / "x.jsonl")
    export_jsonl(path, tmp_path / "x.jsonl", overwrite=True)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([], "empty file"),
        ([{"type": "step", "step": 0, "indices": [1]}], ":1: the first line must be the run"),
        ([{**RUN, "sampling_rate": 1.5}], r":1: sampling_rate=1.5 must be in \(0, 1\]"),
        ([{**RUN, "colour": "blue"}], ":1: unknown field"),
        ([{k: v for k, v in RUN.items() if k != "delta"}], ":1: .*missing required"),
        ([RUN, {"type": "step", "step": 1, "indices": [1]}], ":2: step=1 skips steps 0..0"),
        (
            [
                RUN,
                {"type": "step", "step": 0, "indices": [1]},
                {"type": "step", "step": 2, "indices": [1]},
            ],
            ":3: step=2 skips steps 1..1 .*steps with no examples missing",
        ),
        ([RUN, {"type": "step", "step": 0, "indices": [7, 7]}], ":2: indices repeat 1 example"),
        ([RUN, {"type": "step", "step": 0, "indices": [10000]}], ":2: .*out of range"),
        (
            [RUN, {"type": "step", "step": 0, "indices": [4, -1]}],
            ":2: indices must be non-negative: drop padding entries",
        ),
        ([RUN, {"type": "step", "step": 0, "indices": [3.0]}], ":2: .*write 3, not 3.0"),
        ([{**RUN, "dataset_size": 10000.0}], ":1: dataset_size=10000.0 .*: write 10000"),
        ([RUN, {"type": "step", "step": 0.0, "indices": [1]}], ":2: step=0.0 .*: write 0"),
        (
            [{**RUN, "sample_rate": 0.01}],
            ":1: unknown field.*'sample_rate' \\(did you mean 'sampling_rate'\\?\\)",
        ),
        (
            [{**RUN, "max_grad_norm": 1.0}],
            ":1: .*'max_grad_norm' \\(did you mean 'clip_norm'\\?\\).*under \"extra\"",
        ),
        (
            [{**RUN, "neighboring": "replace_one"}],
            ":1: 'neighboring' and 'neighbouring' disagree",
        ),
        ([RUN, {"type": "step", "step": 0}], ":2: a step line needs 'indices'"),
        ([RUN, {"type": "bogus"}], ":2: type='bogus'"),
        ([RUN, {"type": "resume", "step": 3}], ":2: resume step=3 skips"),
        ([RUN, RUN], ":2: a second run line"),
        ([RUN, {"type": "seal", "steps_executed": 1, "final_step": 0}], ":2: seal steps_exec"),
    ],
)
def test_bad_lines_are_named(tmp_path, lines, match):
    src = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InvalidArgument, match=match):
        import_jsonl(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing left: not even the run dir it made
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InvalidArgument, match=match):
        import_jsonl(src, existing)
    assert existing.is_dir() and list(existing.iterdir()) == []  # a user's dir is kept


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps(RUN) + "\n{oops\n")
    with pytest.raises(InvalidArgument, match=":2: not valid JSON"):
        import_jsonl(tmp_path / "x.jsonl", tmp_path / "out")
    with pytest.raises(UnusableInput):
        import_jsonl(tmp_path / "missing.jsonl", tmp_path / "out")


def test_import_into_a_file_is_unusable_input(tmp_path):
    """``--out`` naming an existing file was an internal error (FileExistsError)."""
    src = _write(tmp_path / "run.jsonl", [RUN])
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("keep me")
    with pytest.raises(UnusableInput, match="is a file, not a run directory"):
        import_jsonl(src, a_file)
    assert a_file.read_text() == "keep me"


def test_missing_required_fields_are_listed_plainly(tmp_path):
    """Issue 15.6: 'missing required field(s) s: 'sampler'' was garbled."""
    run = {k: v for k, v in RUN.items() if k not in ("sampler", "delta", "clip_norm")}
    src = _write(tmp_path / "bad.jsonl", [run])
    with pytest.raises(InvalidArgument) as info:
        import_jsonl(src, tmp_path / "out")
    assert str(info.value).endswith(
        "run line is missing required field(s): 'sampler', 'clip_norm', 'delta'"
    ), str(info.value)


def test_the_ecosystems_spellings_are_accepted(tmp_path):
    """dp-accounting/Opacus/jax_privacy spell 'neighboring'; sampler names in any case."""
    run = {k: v for k, v in RUN.items() if k != "neighbouring"}
    run.update(neighboring="replace_one", sampler="Poisson")
    src = _write(tmp_path / "run.jsonl", [run, {"type": "step", "step": 0, "indices": [1]}])
    import_jsonl(src, tmp_path / "run")
    header = read_ledger(tmp_path / "run").header
    assert header.neighbouring == "replace_one" and header.sampler == "poisson"
    both = {**RUN, "neighboring": "add_remove"}  # both spellings, agreeing
    import_jsonl(_write(tmp_path / "both.jsonl", [both]), tmp_path / "both")
    assert read_ledger(tmp_path / "both").header.neighbouring == "add_remove"


def test_free_form_fields_under_extra_are_kept(tmp_path):
    src = _write(tmp_path / "run.jsonl", [{**RUN, "extra": {"framework_note": "opacus"}}])
    import_jsonl(src, tmp_path / "run")
    assert read_ledger(tmp_path / "run").header.extra == {"framework_note": "opacus"}
