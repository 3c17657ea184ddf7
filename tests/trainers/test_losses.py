"""Tests for trainers.losses."""

import numpy as np
import pytest
from scipy.special import log_softmax

from dpverify.errors import InvalidArgument
from trainers.losses import get_loss, softmax_cross_entropy


def test_softmax_cross_entropy_is_per_example_negative_log_likelihood():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32) * 10
    labels = rng.integers(0, 4, 6)
    got = np.asarray(softmax_cross_entropy(logits, labels))
    want = -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(6), labels]
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_get_loss():
    assert get_loss("softmax_cross_entropy") is softmax_cross_entropy
    with pytest.raises(InvalidArgument, match="loss='mse'"):
        get_loss("mse")
