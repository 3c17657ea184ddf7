"""Orbax checkpoints of multi-process runs: round trip, tree digest, tamper detection.

Single process, small trees, no launch: the multi-process save itself is
exercised end to end by tests/trainers/test_multiprocess.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from dpverify.errors import UnusableInput
from trainers.checkpoint import checkpoint_digest, is_intact, load_checkpoint
from trainers.checkpoint_orbax import (
    load_orbax_checkpoint,
    orbax_checkpoint_path,
    save_orbax_checkpoint,
    tree_digest,
)


def _state(seed: int = 0, rows: int = 4):
    rng = np.random.default_rng(seed)
    params = {
        "Dense_0": {
            "kernel": rng.normal(size=(rows, 3)).astype(np.float32),
            "bias": np.zeros(3, np.float32),
        },
        "Dense_1": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
    }
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree_util.tree_map(np.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments and count
    return params, opt_state, opt


def _templates(opt, rows: int = 4):
    p, _, _ = _state(seed=1, rows=rows)
    return {"params_template": p, "opt_state_template": opt.init(p)}


@pytest.fixture
def saved(tmp_path):
    params, opt_state, opt = _state()
    rel, digest = save_orbax_checkpoint(
        tmp_path, 6, params, opt_state, rng={"noise_key_digest": "ab", "sampler": "poisson"}
    )
    return tmp_path, rel, digest, params, opt_state, opt


def test_round_trip_restores_state_and_the_digest_is_the_tree_digest(saved):
    run_dir, rel, digest, params, opt_state, opt = saved
    assert rel == orbax_checkpoint_path(6) == "checkpoints/step-00000006.orbax"
    path = run_dir / rel
    assert path.is_dir()
    assert digest == tree_digest(path) == checkpoint_digest(path)
    assert is_intact(path, digest)
    state = load_checkpoint(path, **_templates(opt), expected_digest=digest)  # dispatches
    assert state.step == 6 and state.digest == digest
    assert state.rng == {"noise_key_digest": "ab", "sampler": "poisson"}
    want = jax.tree_util.tree_leaves((params, opt_state))
    got = jax.tree_util.tree_leaves((state.params, state.opt_state))
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_array_equal(np.asarray(w), g)
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(opt_state)
    # Private like the msgpack files; a second read does not change the digest.
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700  # checkpoints/
    for root, dirs, files in os.walk(path):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o700
    assert tree_digest(path) == digest


def _shard_files(path):
    return sorted(
        p for p in path.rglob("*") if p.is_file() and "/d/" in p.as_posix() and "state" in p.parts
    )


def test_a_tampered_shard_is_detected_by_the_digest(saved):
    run_dir, rel, digest, _, _, opt = saved
    path = run_dir / rel
    shards = _shard_files(path)
    assert shards, sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
    victim = shards[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    assert tree_digest(path) != digest
    assert not is_intact(path, digest)
    with pytest.raises(UnusableInput, match="does not match its ledger digest"):
        load_checkpoint(path, **_templates(opt), expected_digest=digest)


@pytest.mark.parametrize("change", ["add_file", "remove_file", "rename_file", "metadata"])
def test_any_change_to_the_directory_changes_the_digest(saved, change):
    run_dir, rel, digest, _, _, _ = saved
    path = run_dir / rel
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if change == "add_file":
        (path / "state" / "extra").write_bytes(b"")
    elif change == "remove_file":
        files[-1].unlink()
    elif change == "rename_file":
        files[-1].rename(files[-1].with_name(files[-1].name + "x"))
    else:  # the step recorded in the meta item
        meta = path / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"step": 6', '"step": 7'))
    assert tree_digest(path) != digest


def test_links_and_missing_directories_are_refused(saved, tmp_path_factory):
    run_dir, rel, digest, _, _, _ = saved
    path = run_dir / rel
    outside = tmp_path_factory.mktemp("outside") / "blob"
    outside.write_bytes(b"x")
    (path / "state" / "link").symlink_to(outside)
    with pytest.raises(UnusableInput, match="not a regular file"):
        tree_digest(path)
    assert not is_intact(path, digest)
    with pytest.raises(UnusableInput, match="not a checkpoint directory"):
        tree_digest(run_dir / "checkpoints" / "step-00000009.orbax")


def test_a_checkpoint_of_another_model_is_refused(saved):
    run_dir, rel, digest, _, _, opt = saved
    with pytest.raises(UnusableInput, match="does not fit"):
        load_orbax_checkpoint(run_dir / rel, **_templates(opt, rows=5), expected_digest=digest)


def test_a_directory_that_is_no_orbax_checkpoint_is_refused(tmp_path):
    _, _, opt = _state()
    fake = tmp_path / "checkpoints" / "step-00000001.orbax"
    fake.mkdir(parents=True)
    (fake / "state").write_bytes(b"not orbax")
    digest = tree_digest(fake)
    with pytest.raises(UnusableInput, match="not a readable Orbax checkpoint"):
        load_checkpoint(fake, **_templates(opt), expected_digest=digest)


_SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from trainers.checkpoint import load_checkpoint
    from trainers.checkpoint_orbax import save_orbax_checkpoint

    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.arange(3, dtype=np.float32)}
    params = {
        "w": jax.device_put(host["w"], NamedSharding(mesh, P("d"))),  # rows split over devices
        "b": jax.device_put(host["b"], NamedSharding(mesh, P())),
    }
    assert not params["w"].sharding.is_fully_replicated
    opt = optax.sgd(0.1)
    rel, digest = save_orbax_checkpoint(sys.argv[1], 2, params, opt.init(params))
    state = load_checkpoint(
        sys.argv[1] + "/" + rel, params_template=host, opt_state_template=opt.init(host),
        expected_digest=digest,
    )
    np.testing.assert_array_equal(state.params["w"], host["w"])
    np.testing.assert_array_equal(state.params["b"], host["b"])
    print("OK", digest)
    """
)


def test_parameters_sharded_over_devices_are_saved_and_restored_whole(tmp_path):
    """A non-replicated global array (rows split over 2 devices) is saved shard by
    shard by Orbax and read back whole into host memory by the reader that resumes
    and replay use."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK ")
