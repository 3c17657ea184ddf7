"""check_sampler: passes honest Poisson samplers, fails every shortcut with readable reasons."""

import numpy as np
import pytest

from dpverify.samplers import SAMPLER_NAMES, PoissonSampler, make_sampler
from dpverify.testing import (
    SamplerConfig,
    SamplerNotCompliant,
    check_sampler,
    inspect_sampler,
)

SMALL = (SamplerConfig(dataset_size=2000, sampling_rate=0.05, steps=200, seed=0),)


def test_poisson_sampler_is_compliant():
    """Default configurations; an honest sampler fails with probability <= alpha = 1e-3."""
    report = check_sampler(PoissonSampler)
    assert report.compliant and len(report.batteries) == 3
    assert "is Poisson-compliant" in report.explain()


class BernoulliSampler:
    """A user's own sampler: a coin per example, written independently of dpverify."""

    name = "my_bernoulli"
    is_poisson = True
    accounting = "poisson"

    def __init__(self, dataset_size, sampling_rate, seed):
        self.dataset_size, self.sampling_rate, self.seed = dataset_size, sampling_rate, seed

    def params(self):
        return {}

    def sample(self, step):
        rng = np.random.default_rng([self.seed, step])
        return np.flatnonzero(rng.random(self.dataset_size) < self.sampling_rate)


def test_a_users_independent_sampler_is_compliant():
    check_sampler(BernoulliSampler, configs=SMALL)


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n != "poisson"])
def test_shortcuts_fail_with_reasons(name):
    params = {"cap": 100} if name == "truncated_poisson" else {}

    def factory(n, q, seed):
        return make_sampler(name, n, q, seed, **params)

    with pytest.raises(SamplerNotCompliant) as info:
        check_sampler(factory, configs=SMALL)
    message = str(info.value)
    assert f"sampler {name!r} is NOT Poisson-compliant" in message
    assert "declares is_poisson=False" in message


class LyingShuffle(BernoulliSampler):
    """Claims to be Poisson, but serves an epoch-shuffled fixed-size batch."""

    def sample(self, step):
        size = round(self.dataset_size * self.sampling_rate)
        per_epoch = self.dataset_size // size
        epoch, pos = divmod(step, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)
        return np.sort(perm[pos * size : (pos + 1) * size])


def test_a_sampler_claiming_poisson_is_caught_by_the_battery():
    report = inspect_sampler(LyingShuffle, configs=SMALL)
    assert not report.compliant
    assert not report.problems  # protocol and declaration are fine: only statistics fail
    text = report.explain()
    assert "fixed-size batches?" in text and "shuffling" in text


class NotAddressable(BernoulliSampler):
    def __init__(self, *args):
        super().__init__(*args)
        self.rng = np.random.default_rng(self.seed)

    def sample(self, step):
        return np.flatnonzero(self.rng.random(self.dataset_size) < self.sampling_rate)


class Unsorted(BernoulliSampler):
    def sample(self, step):
        return super().sample(step)[::-1]


class LeaksSeed(BernoulliSampler):
    def params(self):
        return {"seed": self.seed}


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        (NotAddressable, "not step-addressable"),
        (Unsorted, "sorted indices without repeats"),
        (LeaksSeed, "params() contains the seed"),
        (lambda n, q, s: object(), "does not follow the Sampler protocol"),
        (lambda n, q: None, "raised TypeError"),
    ],
)
def test_protocol_problems_are_explained(factory, words):
    with pytest.raises(SamplerNotCompliant, match="NOT Poisson-compliant") as info:
        check_sampler(factory, configs=SMALL)
    assert words in str(info.value)
    assert info.value.report.to_dict()["compliant"] is False


def test_progress_bar_goes_to_stderr_only(capsys):
    report = inspect_sampler(BernoulliSampler, configs=SMALL, progress=True)
    assert report.compliant
    out, err = capsys.readouterr()
    assert out == "" and "/200" in err and "step" in err
