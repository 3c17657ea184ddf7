"""The public surface of dpverify.accounting is pinned: removals must be deliberate."""

import dpverify.accounting as acc

PUBLIC = {
    "ACCOUNTANTS",
    "AccountantResult",
    "ClaimResult",
    "DEFAULT_PLD_DISCRETIZATION",
    "DEFAULT_PRV_EPS_ERROR",
    "DeltaReport",
    "EpsilonReport",
    "NO_UPPER_BOUND_SAMPLERS",
    "Segment",
    "TF_PRIVACY_ORDERS",
    "accounting_kwargs",
    "build_event",
    "calibrate_noise_multiplier",
    "check_claim",
    "compute_delta",
    "compute_epsilon",
    "epsilon_from_ledger",
    "epsilon_poisson",
    "merge_segments",
    "segments_from_ledger",
    "shuffle_lower_bound",
    "unsupported_reason",
}


def test_public_names():
    names = {n for n in dir(acc) if not n.startswith("_")}
    modules = {
        "accountants",
        "calibration",
        "claims",
        "events",
        "grouping",
        "from_ledger",
        "report",
        "segments",
        "shuffle",
        "support",
    }
    assert PUBLIC <= names
    assert names - PUBLIC - modules == set()


def test_epsilon_from_ledger_defaults(make_run):
    run = make_run(steps=10)
    report = acc.epsilon_from_ledger(run, accountants="rdp")
    assert report.delta == 1e-5 and report.steps == 10 and report.sampler == "poisson"
    assert report.rdp.epsilon == acc.epsilon_poisson(0.01, 1.0, 10, 1e-5, "rdp")
