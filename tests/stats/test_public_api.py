"""The public names of dpverify.samplers, dpverify.stats and dpverify.testing (accidental removals fail)."""

import dataclasses

import dpverify.samplers
import dpverify.stats
import dpverify.testing

PUBLIC = {
    dpverify.samplers: {
        "Sampler",
        "PoissonSampler",
        "step_rng",
        "SAMPLER_NAMES",
        "make_sampler",
        "ShuffleSampler",
        "FixedSizeSampler",
        "TruncatedPoissonSampler",
        "BallsInBinsSampler",
        "ShuffleBinomialSampler",
        "CyclicPoissonSampler",
    },
    dpverify.stats: {
        "BatteryResult",
        "TestResult",
        "run_battery",
        "battery_from_ledger",
        "sampling_from_ledger",
        "run_battery_on",
        "DeclaredNull",
        "NULL_SAMPLERS",
        "LedgerSampling",
        "SegmentResult",
        "SamplingStream",
        "declared_null",
        "step_addressable",
        "holm",
        "TEST_NAMES",
        "DEFAULT_MAX_LAG",
    },
    dpverify.testing: {
        "check_sampler",
        "inspect_sampler",
        "SamplerCheck",
        "SamplerNotCompliant",
        "SamplerConfig",
        "DEFAULT_CONFIGS",
        "sampler_configs",
        "sampling_rates",
        "dataset_sizes",
        "seeds",
    },
}


def test_public_names_are_exported():
    for module, names in PUBLIC.items():
        exported = {n for n in vars(module) if not n.startswith("_")}
        assert names <= exported, (module.__name__, names - exported)


def test_result_fields_follow_the_contract():
    fields = {f.name for f in dataclasses.fields(dpverify.stats.TestResult)}
    assert {
        "name",
        "statistic",
        "p_value",
        "sensitive_to",
        "meaningful",
        "rejected",
        "reason",
    } <= fields
    result = {f.name for f in dataclasses.fields(dpverify.stats.BatteryResult)}
    assert {"tests", "alpha", "correction", "min_detectable_relative_bias"} <= result
    assert {"passed", "failures"} <= set(dir(dpverify.stats.BatteryResult))
