"""The jax_privacy batch recorder: declared samplers, recorded batches, claims, refusals."""

from __future__ import annotations

import numpy as np
import pytest

bs = pytest.importorskip("jax_privacy.batch_selection")

from dpverify.integrations import UnsupportedRun  # noqa: E402
from dpverify.integrations.jax_privacy import declare, record_batches  # noqa: E402
from dpverify.integrations.jax_privacy._recorder import _as_set  # noqa: E402
from dpverify.ledger import read_ledger  # noqa: E402

N = 1000


@pytest.mark.parametrize(
    ("strategy", "sampler", "params", "q"),
    [
        (bs.CyclicPoissonSampling(sampling_prob=0.02, iterations=5), "poisson", {}, 0.02),
        (bs.CyclicPoissonSampling(sampling_prob=0.02, iterations=5, truncated_batch_size=30),
         "truncated_poisson", {"cap": 30}, 0.02),
        (bs.CyclicPoissonSampling(sampling_prob=0.08, iterations=5, cycle_length=4),
         "cyclic_poisson", {"cycle_length": 4}, 0.02),
        (bs.BallsInBinsSampling(iterations=5, cycle_length=50), "balls_in_bins",
         {"num_bins": 50}, 0.02),
        (bs.FixedBatchSampling(batch_size=20, iterations=5), "fixed_size", {"batch_size": 20}, 0.02),
    ],
    ids=["poisson", "truncated", "cyclic", "balls-in-bins", "fixed"],
)  # fmt: skip
def test_each_strategy_is_declared_as_what_it_is(strategy, sampler, params, q, tmp_path):
    decl = declare(strategy, N)
    assert (decl.sampler, decl.sampler_params) == (sampler, params)
    assert decl.sampling_rate == pytest.approx(q)
    with record_batches(tmp_path / "run", strategy, num_examples=N, noise_multiplier=1.0,
                        clip_norm=1.0, delta=1e-5, rng=7) as rec:  # fmt: skip
        yielded = list(rec)
    ledger = read_ledger(tmp_path / "run" / "ledger")
    assert ledger.header.sampler == sampler and ledger.header.extra["framework"] == "jax_privacy"
    expected = list(strategy.batch_iterator(N, 7))  # the same seed gives the same batches
    assert [b.dtype for b in yielded] == [e.dtype for e in expected]  # unchanged (int16 mostly)
    assert [np.sort(e).tolist() for e in expected] == [s.indices.tolist() for s in ledger.steps]
    assert ledger.seal.steps_executed == 5


def test_claim_is_jax_privacys_own_epsilon_for_the_steps_taken(tmp_path):
    from jax_privacy import accounting as acc

    strategy = bs.CyclicPoissonSampling(sampling_prob=0.02, iterations=50)
    with record_batches(tmp_path / "run", strategy, num_examples=N, noise_multiplier=1.0,
                        clip_norm=1.0, delta=1e-5, rng=0) as rec:  # fmt: skip
        for i, _batch in enumerate(rec):
            if i == 29:
                break  # stopped early: the claim covers 30 steps, not 50
    params = acc.DpParams(noise_multipliers=1.0, num_samples=N, delta=1e-5, batch_size=20)
    expected = acc.DpsgdTrainingAccountant(acc.PldAccountantConfig()).compute_epsilon(30, params)
    ledger = read_ledger(tmp_path / "run" / "ledger")
    assert len(ledger.steps) == 30
    assert ledger.seal.claimed_epsilon == pytest.approx(expected)


def test_padding_removed_and_dtypes_widened():
    padded = np.concatenate(bs.split_and_pad_global_batch(np.array([9, 3, 5], np.int16), 4))
    assert padded.tolist() == [9, 3, 5, -1]
    out = _as_set(padded, 10)
    assert out.dtype == np.int64 and out.tolist() == [3, 5, 9]
    assert _as_set(np.array([], np.int8), 10).size == 0
    with pytest.raises(UnsupportedRun, match="twice"):
        _as_set(np.array([1, 1], np.int32), 10)
    with pytest.raises(UnsupportedRun, match="outside"):
        _as_set(np.array([10], np.int32), 10)


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        (bs.FixedBatchSampling(batch_size=5, iterations=2, replace=True), "replace=True"),
        (bs.CyclicPoissonSampling(sampling_prob=0.1, iterations=2, cycle_length=2,
                                  truncated_batch_size=5), "truncated cyclic"),
        (bs.CyclicPoissonSampling(sampling_prob=0.1, iterations=2, cycle_length=2,
                                  partition_type=bs.PartitionType.INDEPENDENT),
         "partition_type=INDEPENDENT"),
        (bs.UserSelectionStrategy(bs.FixedBatchSampling(batch_size=5, iterations=2)), "user-level"),
        # no b_min_sep sampler/null/accountant in dpverify: an honest run would be refuted
        (bs.BMinSepSampling(sampling_prob=0.05, iterations=2, min_sep=10), "b-min-sep"),
    ],
)  # fmt: skip
def test_unsupported_strategies_are_refused_in_one_line(strategy, match, tmp_path):
    with pytest.raises(UnsupportedRun, match=match) as info:
        with record_batches(tmp_path / "run", strategy, num_examples=N, noise_multiplier=1.0,
                            clip_norm=1.0, delta=1e-5):  # fmt: skip
            pass
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "ledger").exists()


def test_poisson_strategy_is_certified_by_the_auditor(tmp_path):
    from audits import run_audit

    strategy = bs.CyclicPoissonSampling(sampling_prob=0.02, iterations=120)
    with record_batches(tmp_path / "run", strategy, num_examples=N, noise_multiplier=1.0,
                        clip_norm=1.0, delta=1e-5, rng=3) as rec:  # fmt: skip
        for _ in rec:
            pass
    cert = run_audit(tmp_path / "run")
    assert cert.verdict == "certified", [c.reason for c in cert.checks]
