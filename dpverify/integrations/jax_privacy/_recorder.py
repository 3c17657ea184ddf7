"""``record_batches``: every global batch a jax_privacy strategy yields, into the ledger."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_positive, check_probability
from dpverify.errors import InvalidArgument
from dpverify.integrations._errors import UnsupportedRun
from dpverify.integrations.jax_privacy._claim import jax_privacy_epsilon
from dpverify.integrations.jax_privacy._declare import declare
from dpverify.ledger import LedgerWriter, RunHeader, Seal, Step

__all__ = ["BatchRecording", "record_batches"]


@dataclasses.dataclass
class BatchRecording:
    """What a recording produced.

    Attributes:
        run_dir: the run directory (``dpverify audit RUN_DIR``).
        sampler: the dpverify sampler the strategy was declared as.
        steps: batches recorded so far.
        epsilon: jax_privacy's ε for the recorded steps (after exit; ``None``
            where jax_privacy has no accountant for the strategy).
        sealed: whether the ledger was sealed.
    """

    run_dir: Path
    sampler: str
    steps: int = 0
    epsilon: float | None = None
    sealed: bool = False
    batches: Iterator[np.ndarray] = dataclasses.field(default=iter(()), repr=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches


@contextlib.contextmanager
def record_batches(
    run_dir: str | Path,
    strategy: Any,
    *,
    num_examples: int,
    noise_multiplier: float,
    clip_norm: float,
    delta: float,
    rng: Any = None,
    accountant: str = "pld",
    claimed_epsilon: float | None = None,
    task: str | None = None,
) -> Iterator[BatchRecording]:
    """Record the batches of ``strategy.batch_iterator(num_examples, rng)``.

    Iterate the yielded :class:`BatchRecording` instead of the strategy's own
    iterator: it yields jax_privacy's batches unchanged (same arrays, same
    dtype) and writes each to the ledger as a sorted set of indices (padding
    −1 dropped, any integer dtype widened to int64).

    Example::

        strategy = batch_selection.CyclicPoissonSampling(sampling_prob=0.01, iterations=500)
        with record_batches("runs/jp", strategy, num_examples=60_000, noise_multiplier=1.1,
                            clip_norm=1.0, delta=1e-5, rng=seed) as batches:
            for batch in batches:
                ...  # split_and_pad_global_batch(batch, ...), the jitted DP step
        # sealed with jax_privacy's own ε for the steps taken

    Args:
        run_dir: directory to create (``RUN_DIR/ledger``).
        strategy: a jax_privacy ``BatchSelectionStrategy``.
        num_examples: N, passed to ``batch_iterator``.
        noise_multiplier: σ of the run's noise (not observable here: declared).
        clip_norm: C of the run's clipping (declared).
        delta: δ of the claim.
        rng: the seed or ``numpy.random.Generator`` for ``batch_iterator``
            (private: it determines every batch; never recorded).
        accountant: ``"pld"`` or ``"rdp"``: jax_privacy's accountant for the claim.
        claimed_epsilon: a claim to seal with instead of jax_privacy's (needed
            for strategies jax_privacy has no accountant for).
        task: free-form task name.

    Raises:
        UnsupportedRun: a strategy the recorder cannot declare.
        InvalidArgument: bad numbers.
    """
    n = check_int("num_examples", num_examples, minimum=1)
    sigma = check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    clip = check_positive("clip_norm", clip_norm)
    delta = check_probability("delta", delta, allow_one=False)
    if accountant not in ("pld", "rdp"):
        raise InvalidArgument(f"accountant={accountant!r} must be 'pld' or 'rdp'")
    decl = declare(strategy, n)
    software = {"python": platform.python_version()}
    for mod in ("dpverify", "jax_privacy", "jax", "numpy"):
        with contextlib.suppress(Exception):
            software[mod] = str(__import__(mod).__version__)
    header = RunHeader(
        dataset_size=n, sampler=decl.sampler, sampler_params=decl.sampler_params,
        sampling_rate=decl.sampling_rate, noise_multiplier=sigma, clip_norm=clip, delta=delta,
        neighbouring=decl.neighbouring, accountant=f"jax_privacy-{accountant}",
        expected_batch_size=decl.expected_batch_size, task=task, software=software,
        extra={"framework": "jax_privacy", "strategy": decl.strategy},
    )  # fmt: skip
    run_dir = Path(run_dir)
    writer = LedgerWriter.create(run_dir / "ledger", header)
    rec = BatchRecording(run_dir=run_dir, sampler=decl.sampler)

    def batches() -> Iterator[np.ndarray]:
        for batch in strategy.batch_iterator(n, rng):
            writer.append(Step(step=rec.steps, indices=_as_set(batch, n)))
            rec.steps += 1
            yield batch

    rec.batches = batches()
    try:
        yield rec
    except BaseException:
        writer.close()
        raise
    if claimed_epsilon is None:
        eps, _why = jax_privacy_epsilon(strategy, num_examples=n, steps=rec.steps,
                                        noise_multiplier=sigma, delta=delta,
                                        accountant=accountant)  # fmt: skip
    else:
        eps = check_positive("claimed_epsilon", claimed_epsilon, allow_zero=True)
    writer.close(seal=Seal(steps_executed=rec.steps, final_step=rec.steps,
                           claimed_epsilon=eps, delta=delta))  # fmt: skip
    rec.epsilon, rec.sealed = eps, True


def _as_set(batch: Any, n: int) -> np.ndarray:
    """Sorted distinct int64 indices of one global batch; padding −1 dropped."""
    arr = np.asarray(batch)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UnsupportedRun(f"a batch of shape {arr.shape} and dtype {arr.dtype} is not 1-D integers")
    arr = arr.astype(np.int64)
    arr = arr[arr != -1]
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise UnsupportedRun(f"a batch holds index {int(arr.min() if arr.min() < 0 else arr.max())} "
                             f"outside [0, {n})")  # fmt: skip
    out = np.sort(arr)
    if out.size > 1 and np.any(out[1:] == out[:-1]):
        raise UnsupportedRun("a batch holds the same example twice; the ledger records sets")
    return out
