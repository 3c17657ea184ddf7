"""Checkpoint files: atomic msgpack round trip, digests, modes, refusal of bad files."""

from __future__ import annotations

import hashlib
import os
import stat

import jax
import numpy as np
import optax
import pytest

from dpverify.errors import UnusableInput
from trainers.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_path,
    file_digest,
    load_checkpoint,
    save_checkpoint,
)


def _state(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "Dense_0": {
            "kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": np.zeros(3, np.float32),
        },
        "Dense_1": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
    }
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree_util.tree_map(np.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments and count
    return params, opt_state, opt


def test_round_trip_restores_params_opt_state_and_step(tmp_path):
    params, opt_state, opt = _state()
    rel, digest = save_checkpoint(tmp_path, 7, params, opt_state, rng={"noise_key_digest": "ab"})
    assert rel == checkpoint_path(7) == f"{CHECKPOINT_DIR}/step-00000007.msgpack"
    path = tmp_path / rel
    assert digest == file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    template_p, _, _ = _state(seed=1)
    template_o = opt.init(template_p)
    state = load_checkpoint(
        path, params_template=template_p, opt_state_template=template_o, expected_digest=digest
    )
    assert state.step == 7 and state.digest == digest
    assert state.rng == {"noise_key_digest": "ab"}
    for a, b in zip(
        jax.tree_util.tree_leaves((params, opt_state)),
        jax.tree_util.tree_leaves((state.params, state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(opt_state)


def test_file_is_private_and_no_temp_files_remain(tmp_path):
    params, opt_state, _ = _state()
    rel, _ = save_checkpoint(tmp_path, 0, params, opt_state)
    assert stat.S_IMODE(os.stat(tmp_path / rel).st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == [
        "step-00000000.msgpack"
    ]


def test_same_state_gives_same_digest(tmp_path):
    params, opt_state, _ = _state()
    _, d1 = save_checkpoint(tmp_path / "a", 3, params, opt_state)
    _, d2 = save_checkpoint(tmp_path / "b", 3, params, opt_state)
    _, d3 = save_checkpoint(tmp_path / "c", 4, params, opt_state)
    assert d1 == d2 != d3


def test_digest_mismatch_missing_and_foreign_files_are_refused(tmp_path):
    params, opt_state, _ = _state()
    rel, digest = save_checkpoint(tmp_path, 1, params, opt_state)
    path = tmp_path / rel
    kw = dict(params_template=params, opt_state_template=opt_state)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UnusableInput, match="does not match its ledger digest"):
        load_checkpoint(path, expected_digest=digest, **kw)
    with pytest.raises(UnusableInput, match="cannot be read"):
        load_checkpoint(tmp_path / "nope.msgpack", **kw)
    foreign = tmp_path / "foreign.msgpack"
    foreign.write_bytes(b"\x81\xa1a\x01")  # msgpack {"a": 1}
    with pytest.raises(UnusableInput, match="not a dpverify-checkpoint"):
        load_checkpoint(foreign, **kw)


def test_template_of_another_model_is_refused(tmp_path):
    params, opt_state, opt = _state()
    rel, _ = save_checkpoint(tmp_path, 1, params, opt_state)
    other = {"Dense_0": {"kernel": np.zeros((4, 3), np.float32)}}
    with pytest.raises(UnusableInput, match="does not fit"):
        load_checkpoint(tmp_path / rel, params_template=other, opt_state_template=opt.init(other))
