"""``check_sampler``: is a user's sampler Poisson-compliant?

A sampler is compliant when, for every configuration tried:

1. it follows the :class:`~dpverify.samplers.Sampler` protocol (``name``,
   ``params()`` without the seed, ``is_poisson``, ``accounting``, and
   ``sample(t)`` returning sorted distinct integer indices in ``[0, N)``);
2. it is step-addressable and reproducible: ``sample(t)`` drawn again, out of
   order or from a fresh instance with the same seed, gives the same batch;
3. it declares ``is_poisson = True``; and
4. the Poisson-compliance battery (:func:`dpverify.stats.run_battery`) does not
   reject it.  The battery runs at level ``alpha / len(configs)`` on each
   configuration, so an honest Poisson sampler fails the whole check with
   probability at most ``alpha`` (Bonferroni over configurations).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dpverify._validate import check_int, check_probability
from dpverify.errors import InvalidArgument
from dpverify.samplers import Sampler
from dpverify.stats import BatteryResult, run_battery
from dpverify.testing.strategies import SamplerConfig

__all__ = [
    "DEFAULT_CONFIGS",
    "SamplerCheck",
    "SamplerNotCompliant",
    "check_sampler",
    "inspect_sampler",
]

#: Configurations tried by default: at each the battery detects the usual
#: shortcuts with probability > 0.99 (see tests/testing/test_check.py).
DEFAULT_CONFIGS: tuple[SamplerConfig, ...] = (
    SamplerConfig(dataset_size=10_000, sampling_rate=0.01, steps=500, seed=0),
    SamplerConfig(dataset_size=2_000, sampling_rate=0.05, steps=300, seed=1),
    SamplerConfig(dataset_size=500, sampling_rate=0.2, steps=200, seed=2),
)


class SamplerNotCompliant(AssertionError):
    """Raised by :func:`check_sampler`; the message explains every problem found."""

    def __init__(self, report: SamplerCheck) -> None:
        super().__init__(report.explain())
        self.report = report


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerCheck:
    """Outcome of checking a sampler factory.

    Attributes:
        sampler: the sampler's ``name`` (or the factory's name if none).
        problems: plain-words problems (protocol, reproducibility, declaration).
        batteries: ``(config, BatteryResult)`` per configuration that could run.
        alpha: the overall false-failure rate allowed.
    """

    sampler: str
    problems: tuple[str, ...]
    batteries: tuple[tuple[SamplerConfig, BatteryResult], ...]
    alpha: float

    @property
    def compliant(self) -> bool:
        return not self.problems and all(b.passed for _, b in self.batteries)

    def explain(self) -> str:
        """Readable summary: the verdict, then one line per problem and per failing test."""
        verdict = "is Poisson-compliant" if self.compliant else "is NOT Poisson-compliant"
        lines = [f"sampler {self.sampler!r} {verdict} (alpha={self.alpha:g})"]
        lines += [f"  - {p}" for p in self.problems]
        for cfg, res in self.batteries:
            where = f"N={cfg.dataset_size}, q={cfg.sampling_rate:g}, T={cfg.steps}, seed={cfg.seed}"
            if res.passed:
                lines.append(f"  ok {where}: all {len(res.tests)} tests pass")
            for t in res.failures:
                lines.append(f"  - {where}: {t.name} (p={t.p_value:.3g}): {t.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "compliant": self.compliant,
            "alpha": self.alpha,
            "problems": list(self.problems),
            "configs": [
                {**dataclasses.asdict(cfg), "battery": res.to_dict()} for cfg, res in self.batteries
            ],
        }


def _protocol_problems(sampler: Any, cfg: SamplerConfig) -> list[str]:
    problems = []
    if not isinstance(sampler, Sampler):
        missing = [
            a
            for a in (
                "name",
                "dataset_size",
                "sampling_rate",
                "is_poisson",
                "accounting",
                "params",
                "sample",
            )
            if not hasattr(sampler, a)
        ]
        problems.append(f"it does not follow the Sampler protocol (missing: {', '.join(missing)})")
        return problems
    if sampler.dataset_size != cfg.dataset_size or sampler.sampling_rate != cfg.sampling_rate:
        problems.append(
            f"factory({cfg.dataset_size}, {cfg.sampling_rate}, seed) built a sampler with "
            f"dataset_size={sampler.dataset_size}, sampling_rate={sampler.sampling_rate}"
        )
    try:
        params = dict(sampler.params())
        json.dumps(params)
    except Exception as exc:
        problems.append(
            f"params() must be a JSON-serialisable mapping ({type(exc).__name__}: {exc})"
        )
    else:
        if "seed" in params:
            problems.append(
                "params() contains the seed: it is written to the ledger header, keep it private"
            )
    return problems


def _batch_problem(batch: Any, step: int, n: int) -> str | None:
    if not isinstance(batch, np.ndarray) or batch.ndim != 1:
        return f"sample({step}) must return a 1-D numpy array, got {type(batch).__name__}"
    if batch.size and not np.issubdtype(batch.dtype, np.integer):
        return f"sample({step}) must return integer indices, got dtype {batch.dtype}"
    if batch.size and (batch.min() < 0 or batch.max() >= n):
        return f"sample({step}) returned an index outside [0, {n})"
    if np.any(np.diff(batch) <= 0):
        return f"sample({step}) must return sorted indices without repeats"
    return None


def _check_config(factory: Callable[..., Any], cfg: SamplerConfig, alpha: float, bar: Any = None):
    """Problems and the battery result (or None) for one configuration."""
    try:
        sampler = cfg.build(factory)
    except Exception as exc:
        return (
            [
                f"factory({cfg.dataset_size}, {cfg.sampling_rate}, {cfg.seed}) raised {type(exc).__name__}: {exc}"
            ],
            None,
            None,
        )
    problems = _protocol_problems(sampler, cfg)
    if problems and not hasattr(sampler, "sample"):
        return problems, None, sampler
    first_problem: list[str] = []
    kept: dict[int, np.ndarray] = {}
    probe = sorted({0, cfg.steps // 2, cfg.steps - 1})

    def batches() -> Iterator[np.ndarray]:
        for t in range(cfg.steps):
            batch = sampler.sample(t)
            problem = _batch_problem(batch, t, cfg.dataset_size)
            if problem:
                first_problem.append(problem)
                return
            if t in probe:
                kept[t] = batch.copy()
            if bar is not None:
                bar.update(1)
            yield batch

    try:
        result = run_battery(
            batches(), dataset_size=cfg.dataset_size, sampling_rate=cfg.sampling_rate, alpha=alpha
        )
    except Exception as exc:
        return [*problems, f"sampling failed: {type(exc).__name__}: {exc}"], None, sampler
    if first_problem:
        return [*problems, *first_problem], None, sampler
    try:
        fresh = cfg.build(factory)
        for t in reversed(probe):
            if not np.array_equal(sampler.sample(t), kept[t]):
                problems.append(
                    f"sample({t}) changed when drawn again out of order: not step-addressable"
                )
                break
            if not np.array_equal(fresh.sample(t), kept[t]):
                problems.append(
                    f"sample({t}) differs between two samplers built with the same seed"
                )
                break
    except Exception as exc:
        problems.append(f"re-sampling failed: {type(exc).__name__}: {exc}")
    return problems, result, sampler


def inspect_sampler(
    factory: Callable[..., Any],
    *,
    configs: Sequence[SamplerConfig] | None = None,
    alpha: float = 1e-3,
    progress: bool = False,
) -> SamplerCheck:
    """Check ``factory`` without raising; see :func:`check_sampler`.

    ``progress`` shows a tqdm bar of sampled steps on stderr.
    """
    if not callable(factory):
        raise InvalidArgument(
            f"factory={factory!r} must be callable as factory(dataset_size, sampling_rate, seed)"
        )
    alpha = check_probability("alpha", alpha, allow_one=False)
    configs = tuple(DEFAULT_CONFIGS if configs is None else configs)
    check_int("len(configs)", len(configs), minimum=1)
    per_config = alpha / len(configs)
    problems: list[str] = []
    batteries = []
    name = getattr(factory, "__name__", repr(factory))
    declared: set[tuple[bool, str]] = set()
    for cfg in configs:
        if not isinstance(cfg, SamplerConfig):
            raise InvalidArgument(
                f"configs must hold SamplerConfig values, got {type(cfg).__name__}"
            )
    with _progress_bar(progress, sum(cfg.steps for cfg in configs)) as bar:
        for cfg in configs:
            found, result, sampler = _check_config(factory, cfg, per_config, bar)
            problems += [p for p in found if p not in problems]
            if result is not None:
                batteries.append((cfg, result))
            if sampler is not None:
                name = str(getattr(sampler, "name", name))
                declared.add(
                    (
                        bool(getattr(sampler, "is_poisson", False)),
                        str(getattr(sampler, "accounting", "?")),
                    )
                )
    for is_poisson, accounting in sorted(declared):
        if not is_poisson:
            problems.append(
                f"it declares is_poisson=False (accounting={accounting!r}): not a Poisson sampler"
            )
    return SamplerCheck(
        sampler=name, problems=tuple(problems), batteries=tuple(batteries), alpha=alpha
    )


@contextlib.contextmanager
def _progress_bar(show: bool, total: int) -> Iterator[Any]:
    if not show:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="step", desc="sampling", file=sys.stderr, leave=False) as bar:
        yield bar


def check_sampler(
    factory: Callable[..., Any],
    *,
    configs: Sequence[SamplerConfig] | None = None,
    alpha: float = 1e-3,
) -> SamplerCheck:
    """Assert that samplers built by ``factory`` are Poisson-compliant.

    Args:
        factory: ``factory(dataset_size, sampling_rate, seed) -> Sampler``
            (a sampler class with that constructor works).
        configs: configurations to try (default :data:`DEFAULT_CONFIGS`;
            Hypothesis can generate them with
            :func:`dpverify.testing.sampler_configs`).
        alpha: probability that an honest Poisson sampler fails the check.

    Returns:
        The :class:`SamplerCheck` report when compliant.

    Raises:
        SamplerNotCompliant: (an ``AssertionError``, so pytest shows the
            message) listing every problem and failing test in plain words.
        InvalidArgument: bad arguments.

    Example:
        >>> from dpverify.samplers import PoissonSampler
        >>> check_sampler(PoissonSampler).compliant
        True
    """
    report = inspect_sampler(factory, configs=configs, alpha=alpha)
    if not report.compliant:
        raise SamplerNotCompliant(report)
    return report
