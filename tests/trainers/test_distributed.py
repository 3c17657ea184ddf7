"""trainers.distributed: argument validation and the single-process behaviour of its helpers.

The multi-process behaviour is tested end to end in test_multiprocess.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpverify.errors import InvalidArgument
from trainers import distributed
from trainers.distributed import ProcessGroup, parse_coordinator


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:1234", "127.0.0.1", 1234), ("node-0.cluster:8476", "node-0.cluster", 8476),
     ("[::1]:99", "::1", 99)],
)  # fmt: skip
def test_parse_coordinator(text, host, port):
    assert parse_coordinator(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [("localhost", "must be HOST:PORT"), (":80", "must be HOST:PORT"),
     ("h:0", "port must be in 1..65535"), ("h:70000", "port must be in 1..65535"),
     ("h:x", "must be HOST:PORT"), ("[]:5", "must be HOST:PORT")],
)  # fmt: skip
def test_parse_coordinator_refuses(text, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        parse_coordinator(text)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"num_processes": 0}, "num_processes=0 must be an integer >= 1"),
     ({"process_id": 2}, "process_id=2 must be < num_processes=2"),
     ({"process_id": -1}, "process_id=-1 must be an integer >= 0"),
     ({"coordinator": "nowhere"}, "coordinator='nowhere' must be HOST:PORT")],
)  # fmt: skip
def test_process_group_validates(kw, message):
    args = {"num_processes": 2, "process_id": 1, "coordinator": "127.0.0.1:9"} | kw
    with pytest.raises(InvalidArgument, match=message):
        ProcessGroup(**args)


def test_process_group_roles():
    lead = ProcessGroup(num_processes=3, process_id=0, coordinator="127.0.0.1:9")
    other = ProcessGroup(num_processes=3, process_id=2, coordinator="127.0.0.1:9")
    assert lead.is_leader and not other.is_leader
    assert lead.is_multi_process
    assert lead.describe() == {"processes": 3}  # no address in the public header
    single = ProcessGroup(num_processes=1, process_id=0, coordinator="127.0.0.1:9")
    distributed.initialize(single)  # P = 1: nothing to start
    assert not single.is_multi_process


def test_single_process_helpers_are_identities():
    assert distributed.is_leader()
    assert distributed.broadcast_json({"a": [1, 2]}) == {"a": [1, 2]}
    assert distributed.broadcast_all_json(7) == [7]
    tree = distributed.broadcast_tree({"w": np.arange(3.0)})
    np.testing.assert_array_equal(tree["w"], np.arange(3.0))
    distributed.barrier("nothing-to-wait-for")
    assert distributed.agree(True, "fine") == ["fine"]
    with pytest.raises(InvalidArgument, match="differs"):
        distributed.agree(False, "differs")


def test_put_global_within_one_process_is_device_put():
    import jax
    from jax.sharding import SingleDeviceSharding

    sharding = SingleDeviceSharding(jax.devices()[0])
    out = distributed.put_global({"k": jax.random.key(3), "x": np.ones(2)}, sharding)
    assert out["x"].sharding == sharding
    assert jax.random.key_data(out["k"]).tolist() == jax.random.key_data(jax.random.key(3)).tolist()


def test_rows_within_one_process_returns_host_buffers():
    from trainers.sharding import data_parallel

    placement = data_parallel(1, physical_batch_size=4)
    assert placement is None  # one device: no placement at all
    import jax

    placement = data_parallel(jax.devices()[:1], physical_batch_size=4)
    assert not placement.multi_process
    buf = np.zeros((3, 4), np.int32)
    assert placement.rows(buf, axis=1) is buf


def test_fault_injection_only_fires_for_its_process_and_step(monkeypatch):
    monkeypatch.setenv(distributed.FAULT_ENV, "1:3")  # this is process 0
    distributed.maybe_fail_at(3)
    monkeypatch.setenv(distributed.FAULT_ENV, "0:9")
    distributed.maybe_fail_at(3)
