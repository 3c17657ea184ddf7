"""The accountants' runner: declared library failures are 'unavailable', our bugs propagate."""

import pytest

from dpverify.accounting import _engines


def _raise(exc):
    def fn(*args):
        raise exc

    return fn


def test_a_library_failure_is_reported_as_unavailable():
    import prv_accountant
    from prv_accountant.discrete_privacy_random_variable import DiscretePrivacyRandomVariable
    from prv_accountant.domain import Domain

    def library_failure(*args):
        # raised inside prv-accountant itself: δ far below what the grid resolves
        pmf = DiscretePrivacyRandomVariable([0.5, 0.5], Domain(-1.0, 1.0, 2))
        pmf.compute_epsilon(1e-30, 1e-31, 0.01)

    assert prv_accountant  # imported for its modules
    res = _engines.timed("prv", library_failure)
    assert res.epsilon is None and res.reason.startswith("PRV unavailable: ")


def test_our_own_bugs_propagate():
    for exc in (TypeError("bug"), KeyError("bug"), AttributeError("bug"), ValueError("ours")):
        with pytest.raises(type(exc)):
            _engines.timed("pld", _raise(exc))


def test_the_prv_grid_limit_is_unavailable_not_a_crash():
    from dpverify.accounting._prv import GridTooLarge

    res = _engines.timed("prv", _raise(GridTooLarge("the PRV grid would need 9e9 points")))
    assert res.epsilon is None and "9e9 points" in res.reason
