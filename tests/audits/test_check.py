"""CheckResult: validation, one-line reasons, JSON-ready details."""

import json
import math

import numpy as np
import pytest

from audits.check import CheckResult, jsonable
from dpverify.errors import InvalidArgument


def test_fields_and_to_dict_are_json_ready():
    r = CheckResult(
        name="x",
        status="pass",
        p_value=np.float64(0.5),
        reason="all\n good",
        details={"n": np.int64(3), "v": [np.float32(1.5), float("nan")], "ok": np.bool_(True)},
    )
    d = r.to_dict()
    assert d == {
        "name": "x",
        "status": "pass",
        "p_value": 0.5,
        "reason": "all good",
        "details": {"n": 3, "v": [1.5, None], "ok": True},
    }
    json.dumps(d, allow_nan=False)


def test_nan_p_value_becomes_none():
    assert CheckResult(name="x", status="skip", reason="r", p_value=math.nan).p_value is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="", status="pass", reason="r"),
        dict(name="x", status="ok", reason="r"),
        dict(name="x", status="pass", reason="  "),
        dict(name="x", status="pass", reason="r", p_value=1.5),
    ],
)
def test_invalid_results_are_refused(kwargs):
    with pytest.raises(InvalidArgument):
        CheckResult(**kwargs)


def test_large_arrays_are_refused_in_details():
    # guards against putting e.g. sampled indices into a public certificate
    with pytest.raises(InvalidArgument):
        jsonable(np.arange(1000))
