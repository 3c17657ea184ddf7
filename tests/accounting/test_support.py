"""The documented support table agrees with the libraries' own ``supports``."""

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from dpverify.accounting import Segment, build_event, compute_epsilon, unsupported_reason
from dpverify.accounting.support import SUPPORTED

RELATIONS = {
    "add_remove": dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": dpa.NeighboringRelation.REPLACE_ONE,
}
PARAMS = {"cycle_length": 4, "dataset_size": 1000, "cap": 20}


@pytest.mark.parametrize(("kind", "relation"), sorted(SUPPORTED))
def test_table_matches_library_supports(kind, relation):
    event = build_event(
        [Segment(sampling_rate=0.01, noise_multiplier=1.0, steps=3)],
        sampler=kind,
        sampler_params=PARAMS,
    )
    rel = RELATIONS[relation]
    assert rdp.RdpAccountant(neighboring_relation=rel).supports(event) == (
        "rdp" in SUPPORTED[(kind, relation)]
    )
    assert pld.PLDAccountant(neighboring_relation=rel).supports(event) == (
        "pld" in SUPPORTED[(kind, relation)]
    )


def test_every_unsupported_pair_says_why():
    for (kind, relation), accountants in SUPPORTED.items():
        for name in ("rdp", "pld", "prv"):
            reason = unsupported_reason(name, kind, relation)
            assert (reason is None) == (name in accountants)
            if reason:
                assert kind in reason


def test_report_honours_the_table():
    seg = Segment(sampling_rate=0.01, noise_multiplier=2.0, steps=5)
    for (kind, relation), accountants in SUPPORTED.items():
        r = compute_epsilon(
            seg,
            1e-5,
            sampler=kind,
            sampler_params=PARAMS,
            neighbouring=relation,
            pld_discretization=1e-3,
        )
        for res in r.results():
            assert (res.epsilon is not None) == (res.name in accountants), (kind, relation, res)
