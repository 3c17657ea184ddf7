"""The empirical check (audits/empirical.py): canary scores from released checkpoints.

The runs here are built by hand: parameters θ_T = θ₀ − η·Σ_i K_i·S_i·u_i + noise,
with K_i ~ Binomial(T, q) the times canary i was sampled, i.e. what DP-SGD with
plain SGD does to the canary coordinates.  ``noise_scale`` large = an honest
run's noise (no signal), small = far too little noise (the check must refute).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from audits import runner
from audits.empirical import check_empirical, load_scores_file
from dpverify.empirical.canaries import canary_key_digest, design_canaries, flatten_params
from dpverify.errors import UnusableInput
from dpverify.ledger.records import Checkpoint

KEY = bytes(range(1, 33))
M = 400


def _params(rng):
    return {"Dense_0": {"kernel": rng.normal(size=(40, 50)), "bias": rng.normal(size=50)}}


def _write_ckpt(run_dir, step, params):
    from flax import serialization

    state = {"format": "dpverify-checkpoint-v1", "step": step, "params": params, "opt_state": {}}
    data = serialization.msgpack_serialize(state)
    rel = f"checkpoints/step-{step:08d}.msgpack"
    (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / rel).write_bytes(data)
    import hashlib

    return Checkpoint(step=step, digest=hashlib.sha256(data).hexdigest(), path=rel)


def _unflatten(flat, like):
    out, off = {}, 0
    for name in sorted(like):
        out[name] = {}
        for leaf in sorted(like[name]):
            size = like[name][leaf].size
            out[name][leaf] = flat[off : off + size].reshape(like[name][leaf].shape)
            off += size
    return out


def _run(tmp_path, fakes, *, noise_scale, claimed=1.0, key=KEY, digest_key=KEY, seed=0):
    rng = np.random.default_rng(seed)
    p0 = _params(rng)
    flat0 = flatten_params(p0)
    design = design_canaries(key, count=M, num_params=flat0.size, clip_norm=1.0)
    k = rng.binomial(100, 0.03, size=M)
    push = np.zeros_like(flat0)
    for i in np.flatnonzero(design.included):
        push += k[i] * design.clipped_sum([i])
    flat_t = flat0 - 0.1 * push + noise_scale * rng.normal(size=flat0.size)
    c0 = _write_ckpt(tmp_path, 0, p0)
    c1 = _write_ckpt(tmp_path, 5, _unflatten(flat_t, p0))
    (tmp_path / "private.json").write_text(json.dumps({"canaries": {"count": M, "key": key.hex()}}))
    header = fakes.make_header(
        claimed_epsilon=claimed,
        extra={"canaries": M, "canary_key_digest": canary_key_digest(digest_key)},
    )
    led = fakes.make_ledger(5, header=header)
    records = (led.records[0], c0, *led.records[1:-1], c1, led.records[-1])
    return dataclasses.replace(led, records=records), design


def test_too_little_noise_is_refuted_by_the_model_itself(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=0.01)
    res = check_empirical(led, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "fail"
    assert "trained model itself contradicts the claim" in res.reason
    assert res.details["epsilon_lower_bound"] > 1.0
    assert res.details["canaries"] == M
    assert sum(res.details["histogram"]["included"]) == res.details["included"]


def test_honest_noise_passes_and_says_it_cannot_confirm(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=3.0)
    res = check_empirical(led, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "pass", res.reason
    assert "never confirm" in res.reason


def test_the_same_scores_pass_a_claim_above_the_bound(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=0.01, claimed=50.0)
    res = check_empirical(led, tmp_path, claimed_epsilon=50.0, delta=1e-5)
    assert res.status == "pass" and res.details["epsilon_lower_bound"] > 1.0


def test_a_key_not_committed_in_the_header_is_not_trusted(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=0.01, digest_key=bytes(32))
    res = check_empirical(led, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "skip" and "canary_key_digest" in res.reason


def test_a_tampered_checkpoint_is_not_scored(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=0.01)
    path = tmp_path / "checkpoints/step-00000005.msgpack"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    res = check_empirical(led, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "skip" and "does not match its ledger digest" in res.reason


def test_skips_without_canaries_key_or_run_dir(tmp_path, fakes):
    plain = fakes.make_ledger(5)
    res = check_empirical(plain, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "skip" and "no canaries" in res.reason
    led, _ = _run(tmp_path, fakes, noise_scale=0.01)
    assert check_empirical(led, None, claimed_epsilon=1.0, delta=1e-5).status == "skip"
    (tmp_path / "private.json").unlink()
    res = check_empirical(led, tmp_path, claimed_epsilon=1.0, delta=1e-5)
    assert res.status == "skip" and "given to the auditor only" in res.reason


def test_imported_scores_file_refutes_without_checkpoints(tmp_path, fakes):
    rng = np.random.default_rng(3)
    bits = rng.random(M) < 0.5
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"scores": (bits * 5.0).tolist(), "included": bits.tolist()}))
    assert load_scores_file(path)[0].shape == (M,)
    led = fakes.make_ledger(5)  # no canaries in the header, no checkpoints, no key
    res = check_empirical(led, None, claimed_epsilon=1.0, delta=1e-5, scores_path=path)
    assert res.status == "fail" and "imported scores" in res.details["source"]
    path.write_text("{not json")
    with pytest.raises(UnusableInput):
        check_empirical(led, None, claimed_epsilon=1.0, delta=1e-5, scores_path=path)


def test_runner_refutes_with_replay_off_and_writes_the_section(tmp_path, fakes):
    led, _ = _run(tmp_path, fakes, noise_scale=0.01)
    cert = runner.audit_ledger(
        led, verify_report=fakes.verify_for(led), run_dir=tmp_path, replay_steps=None
    )
    assert cert.verdict == "refuted"
    assert "trained model itself contradicts the claim" in cert.verdict_reason
    section = cert.to_json()["empirical"]
    assert section["canaries"] == M and section["method"] == "steinke2023-one-run"
    assert section["confidence"] == 0.95 and section["epsilon_lower_bound"] > 1.0
    assert "included" not in section  # no inclusion bits in the certificate


def test_runner_without_canaries_has_no_section(fakes):
    led = fakes.make_ledger(5)
    cert = runner.audit_ledger(led, verify_report=fakes.verify_for(led), replay_steps=None)
    assert cert.to_json()["empirical"] is None
    assert cert.check("empirical").status == "skip"


def test_report_shows_the_bound_and_the_score_plot(tmp_path, fakes):
    from audits import write_report

    led, _ = _run(tmp_path, fakes, noise_scale=0.01)
    cert = runner.audit_ledger(
        led, verify_report=fakes.verify_for(led), run_dir=tmp_path, replay_steps=None
    )
    md = write_report(cert, tmp_path / "r.md", epsilon_points=0).read_text()
    assert "Empirical lower bound on ε from canaries" in md
    assert (tmp_path / "r_plots" / "canary_scores.png").stat().st_size > 1000
    html = write_report(cert, tmp_path / "r.html", epsilon_points=0).read_text()
    assert html.count("data:image/png") == 3  # batch sizes, inclusion counts, canaries


@pytest.mark.parametrize(
    "flags",
    [
        ["--empirical-confidence", "1.5"],
        ["--empirical-confidence", "0"],
        ["--canary-scores", "missing.json"],
    ],
)
def test_cli_bad_empirical_options_are_exit_2(tmp_path, fakes, capsys, flags):
    from dpverify.cli import main

    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(5))
    assert main(["audit", str(ledger), "--no-replay", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("confidence" in err[0] or "missing.json" in err[0])


def test_cli_scores_file_refutes_an_imported_ledger(tmp_path, fakes, capsys):
    from dpverify.cli import main

    ledger = fakes.write_ledger(tmp_path / "ledger", fakes.make_ledger(5))
    rng = np.random.default_rng(9)
    bits = rng.random(M) < 0.5
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"scores": (bits * 5.0).tolist(), "included": bits.tolist()}))
    code = main(
        ["audit", str(ledger), "--no-replay", "--json", "-", "--canary-scores", str(scores)]
    )
    cert = json.loads(capsys.readouterr().out)
    assert code == 1 and cert["verdict"] == "refuted"
    assert cert["empirical"]["source"].startswith("imported scores file")


def test_cli_train_rejects_negative_canaries(capsys):
    from dpverify.cli import main

    assert main(["train", "--out", "x", "--canaries", "-1"]) == 2
    assert "canaries=-1" in capsys.readouterr().err
