"""The mutation suite: honest runs are certified, each known bug or shortcut is refuted.

Trained runs are tiny digits-MLP runs (a few steps, a checkpoint after every
step so every step can be replayed), trained once per module.  Sampler
shortcuts need a realistic size for the battery to have power (N = 10⁴,
q = 0.01, T = 500, as in docs/statistics.md), so their ledgers are written
directly with ``LedgerWriter`` from the shortcut samplers, without training.

False-positive rates: every ledger uses a fixed seed, so each test is
deterministic.  For the honest ledgers the battery's family-wise
false-positive rate is α = 10⁻³ per audit (the seed was not chosen to pass);
the shortcut ledgers are rejected with probability ≥ 0.99 at this size
(issue 3's power requirement).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from audits import run_audit
from dpverify.ledger.records import Resume, RunHeader, Seal, Step

# One worker runs this module, so its module fixtures are built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("audits.test_mutations")]

# --- trained runs --------------------------------------------------------------------

TRAIN_STEPS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(mutation)`` → run directory of a tiny digits run (cached per module)."""
    from trainers.loop import TrainConfig, train

    cache: dict[str | None, object] = {}

    def make(mutation: str | None = None):
        if mutation not in cache:
            out = tmp_path_factory.mktemp(f"run-{mutation or 'honest'}") / "run"
            config = TrainConfig(
                task="digits-mlp",
                expected_batch_size=40,
                noise_multiplier=1.0,
                clip_norm=0.5,  # C ≠ 1 exposes σ vs σ·C; small enough that examples get clipped
                steps=TRAIN_STEPS,
                physical_batch_size=16,  # L is rarely a multiple of p: padding exists
                seed=11,
                checkpoint_every=1,  # every step replayable
                mutation=mutation,
            )
            # A fixed noise key (normally drawn from the OS) keeps each run, and so the
            # replay diagnosis's variance estimate, deterministic.
            import types

            import dpverify.private_files

            fixed = types.SimpleNamespace(token_bytes=lambda n: bytes(range(7, 7 + n)))
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(dpverify.private_files, "secrets", fixed)
                train(config, out, progress=False)
            cache[mutation] = out
        return cache[mutation]

    return make


@pytest.fixture(scope="module")
def honest_certificate(trained):
    return run_audit(trained(None), replay_steps=TRAIN_STEPS, replay_seed=0)


def test_honest_masked_run_is_certified_with_replay(trained, honest_certificate):
    cert = honest_certificate
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.check("replay").status == "pass", cert.check("replay").reason
    assert cert.check("mechanics").status == "pass"
    assert cert.exit_code == 0
    # the certificate's ε is exactly what `dpverify epsilon RUN --json` prints
    from dpverify.accounting import epsilon_from_ledger

    assert cert.epsilon == epsilon_from_ledger(trained(None)).to_json()


@pytest.mark.parametrize(
    ("mutation", "words"),
    [
        ("unmasked_padding", "padding rows not masked out?"),
        ("noise_per_physical_batch", "noise added per physical batch instead of once per step?"),
        ("noise_std_sigma", "noise not scaled by the clip norm?"),
        ("clip_after_sum", "clipping after summation?"),
        ("wrong_denominator", "wrong denominator?"),
        ("noise_reused_across_steps", "noise reused across steps"),
        ("noise_not_applied", "noise not applied to the update?"),
        ("larger_clip_norm", "clipping at a larger norm than recorded?"),
    ],
)
def test_buggy_trainer_is_refuted_by_its_released_parameters(trained, mutation, words):
    cert = run_audit(trained(mutation), replay_steps=TRAIN_STEPS, replay_seed=0)
    assert cert.verdict == "refuted", cert.summary_text()
    replay = cert.check("replay")
    assert replay.status == "fail", replay.reason
    assert "released parameters do not match the reference" in replay.reason
    assert words in replay.reason, replay.reason  # replay itself names the bug
    assert "steps " in replay.reason and not cert.verified("replay")
    # No other check blames a different bug.
    wrong = {
        "clipping after summation?",
        "noise per physical batch?",
        "noise added per physical batch instead of once per step?",
    } - {words}
    reasons = " ".join(c.reason for c in cert.failures)
    assert not any(w in reasons for w in wrong), reasons


def test_scope_of_a_replayed_honest_run(honest_certificate):
    cert = honest_certificate
    assert cert.verified("replay") and cert.verified("mechanics") and cert.verified("accounting")
    # (6 steps are too few for the sampling battery: it warns, and the scope says so.)
    cov = cert.scope["replay"]["coverage"]
    assert cov["steps_replayed"] == TRAIN_STEPS and cov["includes_final_parameters"] is True
    assert "clipping and noise verified by replay of 6 of 6 steps" in cert.scope_text
    assert cert.to_json()["scope"]["replay"]["verified"] is True


def test_imported_jsonl_run_gets_every_check_but_replay(trained, tmp_path, honest_certificate):
    from dpverify.ledger import export_jsonl, import_jsonl

    src = tmp_path / "run.jsonl"
    export_jsonl(trained(None) / "ledger", src)
    import_jsonl(src, tmp_path / "imported")
    cert = run_audit(tmp_path / "imported")
    replay = cert.check("replay")
    assert replay.status == "skip" and replay.reason, replay
    assert cert.verdict == "certified", cert.summary_text()
    # The verdict line says what was not checked.
    assert not cert.verified("replay")
    assert "clipping and noise NOT verified (no replay)" in cert.summary_text()
    for name in ("integrity", "configuration", "sampling", "mechanics", "privacy"):
        assert cert.check(name).status in ("pass", "warn"), cert.check(name)


def _frames(data: bytes) -> list[tuple[int, int]]:
    out, pos = [], 8
    while pos < len(data):
        end = pos + 9 + int.from_bytes(data[pos : pos + 4], "little") + 36
        out.append((pos, end))
        pos = end
    return out


def _copy_run(trained, tmp_path):
    dst = tmp_path / "edited"
    shutil.copytree(trained(None), dst)
    return dst, dst / "ledger" / "records.log"


def _first_step_record(run) -> int:
    from dpverify.ledger import read_ledger

    records = read_ledger(run / "ledger").records
    return next(k for k, r in enumerate(records) if isinstance(r, Step) and r.batch_size > 1)


def test_indices_edited_after_the_fact_is_unverifiable(trained, tmp_path):
    run, log = _copy_run(trained, tmp_path)
    k = _first_step_record(run)
    data = bytearray(log.read_bytes())
    start, end = _frames(bytes(data))[k]
    data[(start + end) // 2] ^= 0x10  # inside the step's payload (its coded indices)
    log.write_bytes(bytes(data))
    cert = run_audit(run, replay_steps=None)
    assert cert.verdict == "unverifiable" and cert.exit_code == 1
    assert f"record {k}" in cert.check("integrity").reason


def test_step_removed_after_the_fact_is_unverifiable(trained, tmp_path):
    run, log = _copy_run(trained, tmp_path)
    data = log.read_bytes()
    start, end = _frames(data)[_first_step_record(run)]
    log.write_bytes(data[:start] + data[end:])
    cert = run_audit(run, replay_steps=None)
    assert cert.verdict == "unverifiable"
    assert "corrupt" in cert.check("integrity").reason


def test_rebuilt_chain_changes_the_public_commitment(trained, tmp_path, honest_certificate):
    """A forger who rewrites the whole chain cannot keep the certified head hash."""
    import dataclasses

    from dpverify.ledger import read_ledger

    ledger = read_ledger(trained(None) / "ledger")
    forged = list(ledger.records)
    i = next(k for k, r in enumerate(forged) if isinstance(r, Step) and r.batch_size > 1)
    forged[i] = dataclasses.replace(forged[i], indices=forged[i].indices[1:])
    _write(tmp_path / "forged", forged)
    cert = run_audit(tmp_path / "forged", replay_steps=None)
    assert cert.ledger_head != honest_certificate.ledger_head


# --- sampler shortcuts and accounting, written directly -------------------------------

N, Q, T, SIGMA, C, DELTA = 10_000, 0.01, 500, 1.0, 1.0, 1e-5


def _write(path, records):
    from dpverify.ledger import LedgerWriter

    records = list(records)
    writer = LedgerWriter.create(path, records[0], group_commit=1024)
    for record in records[1:]:
        if isinstance(record, Resume):
            writer.close()
            writer = LedgerWriter.resume(path, step=record.step)
        elif isinstance(record, Seal):
            writer.close(seal=record)
            return path
        else:
            writer.append(record)
    writer.close()
    return path


def _step(t: int, indices: np.ndarray) -> Step:
    return Step(
        step=t,
        indices=indices,
        noise_std=SIGMA * C,
        noise_draws=1,
        num_clipped=0,
        max_grad_norm=0.9 * C,
        max_clipped_norm=0.9 * C,
        denominator=Q * N,
        physical_batches=1,
    )


def _poisson_claim(steps: int) -> float:
    from dpverify.accounting import epsilon_poisson

    return epsilon_poisson(Q, SIGMA, steps, DELTA, accountant="pld")


def _shortcut_ledger(
    path, true_sampler, *, declared="poisson", params=None, declared_params=None, claim=None
):
    from dpverify.samplers import make_sampler

    sampler = make_sampler(true_sampler, N, Q, 5, **(params or {}))
    header = RunHeader(
        dataset_size=N,
        sampler=declared,
        sampler_params=declared_params or {},
        sampling_rate=Q,
        noise_multiplier=SIGMA,
        clip_norm=C,
        delta=DELTA,
        claimed_epsilon=claim if claim is not None else 1.05 * _poisson_claim(T),
        physical_batch_size=128,
    )
    records = [header] + [_step(t, sampler.sample(t)) for t in range(T)]
    records.append(Seal(steps_executed=T, final_step=T))
    return _write(path, records)


def test_honest_poisson_ledger_is_certified(tmp_path):
    cert = run_audit(_shortcut_ledger(tmp_path / "ledger", "poisson"), replay_steps=None)
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.check("sampling").status == "pass"


CAP = int(N * Q + 2 * np.sqrt(N * Q * (1 - Q)))  # mean + 2 sd


@pytest.mark.parametrize(
    ("sampler", "params", "words"),
    [
        ("shuffle", {}, "not Poisson sampling"),
        ("fixed_size", {}, "not Poisson sampling"),
        ("truncated_poisson", {"cap": CAP}, "not Poisson sampling"),
    ],
)
def test_shortcut_sampler_claiming_poisson_is_refuted(tmp_path, sampler, params, words):
    path = _shortcut_ledger(tmp_path / "ledger", sampler, params=params)
    cert = run_audit(path, replay_steps=None)
    assert cert.verdict == "refuted", cert.summary_text()
    sampling = cert.check("sampling")
    assert sampling.status == "fail" and words in sampling.reason, sampling.reason
    assert sampling.p_value is not None and sampling.p_value < 1e-3


def test_declared_truncated_poisson_is_tested_against_its_cap(tmp_path):
    path = _shortcut_ledger(
        tmp_path / "ledger",
        "truncated_poisson",
        declared="truncated_poisson",
        params={"cap": CAP},
        declared_params={"cap": CAP},
        claim=10.0,
    )
    cert = run_audit(path, replay_steps=None)
    assert cert.check("sampling").status == "pass", cert.check("sampling").reason
    assert cert.verdict == "certified", cert.summary_text()  # PLD accounts the truncation
    assert cert.epsilon["pld"] is not None and cert.epsilon["rdp"] is None


def test_honestly_declared_shuffle_claiming_the_poisson_epsilon_is_refuted_by_the_lower_bound(
    tmp_path,
):
    """No accountant gives an upper bound for shuffling, but the claimed (Poisson) ε is below
    the shuffle lower bound: that claim is false (a claim above it would be unverifiable)."""
    path = _shortcut_ledger(tmp_path / "ledger", "shuffle", declared="shuffle")
    cert = run_audit(path, replay_steps=None)
    privacy = cert.check("privacy")
    assert cert.verdict == "refuted" and not privacy.details.get("unverifiable")
    assert "no accountant gives an upper bound for sampler 'shuffle'" in privacy.reason
    assert "below the lower bound" in privacy.reason and "ε ≥" in privacy.reason
    assert privacy.details["shuffle_lower_bound"] > privacy.details["poisson_epsilon"] > 0
    print(cert.summary_text())


def _restarted_ledger(path, claim: float):
    from dpverify.samplers import PoissonSampler

    sampler = PoissonSampler(N, Q, seed=9)
    header = RunHeader(
        dataset_size=N,
        sampler="poisson",
        sampling_rate=Q,
        noise_multiplier=SIGMA,
        clip_norm=C,
        delta=DELTA,
        claimed_epsilon=claim,
    )
    first, again = range(0, 300), range(100, 300)
    records = [header] + [_step(t, sampler.sample(t)) for t in first]
    records += [Resume(step=100)] + [_step(t, sampler.sample(t)) for t in again]
    records.append(Seal(steps_executed=500, final_step=300))
    return _write(path, records)


def test_restart_not_counted_in_the_claim_is_refuted(tmp_path):
    cert = run_audit(_restarted_ledger(tmp_path / "ledger", _poisson_claim(300)), replay_steps=None)
    privacy = cert.check("privacy")
    assert cert.verdict == "refuted" and privacy.status == "fail", cert.summary_text()
    assert "500 executed steps (200 repeated after resumes)" in privacy.reason
    assert "200 steps repeated after resumes were not counted in it" in privacy.reason
    assert cert.check("integrity").status == "pass" and cert.check("sampling").status == "pass"


def test_restart_counted_in_the_claim_is_certified(tmp_path):
    claim = 1.02 * _poisson_claim(500)
    cert = run_audit(_restarted_ledger(tmp_path / "ledger", claim), replay_steps=None)
    assert cert.verdict == "certified", cert.summary_text()
    assert cert.steps == 500 and cert.logical_steps == 300


def test_cli_exit_codes_on_trained_runs(trained, tmp_path, capsys):
    import json

    from dpverify.cli import main

    out = tmp_path / "cert.json"
    assert main(["audit", str(trained(None)), "--no-replay", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["verdict"] == "certified"
    assert main(["audit", str(trained("clip_after_sum")), "--no-replay", "--quiet"]) == 1
