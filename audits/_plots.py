"""Matplotlib figures for the audit report (PNG bytes; Agg canvas, no display).

Figures are ``matplotlib.figure.Figure`` objects of their own: importing or
using this module never touches pyplot or the global backend.

* batch sizes of the logical steps against Binomial(N, q) — fixed-size batches
  show as a spike, truncation as a missing right tail;
* per-example inclusion counts against Binomial(T, q) — epoch-based shuffling
  shows as counts far too even;
* ε against executed steps for each accountant;
* canary scores, included vs excluded (when the run has canaries).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from scipy import stats

from audits.evidence import AuditEvidence

__all__ = [
    "batch_size_figure",
    "canary_score_figure",
    "epsilon_curve",
    "epsilon_figure",
    "inclusion_count_figure",
]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure() -> tuple[Any, Any]:
    """A figure of its own (no pyplot, no global backend switch: Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _bin_width(span: int, total: int) -> int:
    """Integers per bar: about √total bars (5 to 40), so a short run's bars are
    not mostly empty or 1-high next to a smooth expected curve."""
    bars = int(np.clip(round(np.sqrt(max(total, 1))), 5, 40))
    return max(1, -(-span // bars))


@dataclasses.dataclass(frozen=True)
class Binned:
    """Observed and expected counts per bin of equal ``width`` starting at ``starts``."""

    starts: np.ndarray
    width: int
    observed: np.ndarray
    expected: np.ndarray
    spread: np.ndarray  # 2 standard deviations of each bin's count


def binned_against_binomial(observed: np.ndarray, trials: int, p: float, total: int) -> Binned:
    """Group a histogram over integer values into bins, with Binomial expectations.

    ``observed[v]`` is how many of the ``total`` draws had value ``v``.  The bins
    cover the Binomial(trials, p) support up to tail mass 1e-6 on each side and
    every observed value.  A bin's count is Binomial(total, P(bin)) for an
    honest run: ``expected = total·P(bin)``, ``spread = 2·sqrt(total·P(1−P))``.
    """
    seen = np.flatnonzero(observed)
    lo = int(stats.binom.ppf(1e-6, trials, p))
    hi = int(stats.binom.ppf(1 - 1e-6, trials, p))
    if seen.size:
        lo, hi = min(lo, int(seen[0])), max(hi, int(seen[-1]))
    lo = max(lo, 0)
    width = _bin_width(hi - lo + 1, total)
    starts = np.arange(lo, hi + 1, width)
    counts = np.zeros(starts.size)
    values = np.arange(observed.size)
    inside = (values >= lo) & (values <= hi)
    np.add.at(counts, (values[inside] - lo) // width, observed[inside])
    p_bin = stats.binom.cdf(starts + width - 1, trials, p) - stats.binom.cdf(starts - 1, trials, p)
    return Binned(
        starts=starts,
        width=width,
        observed=counts,
        expected=total * p_bin,
        spread=2 * np.sqrt(total * p_bin * (1 - p_bin)),
    )


def _against_binomial(observed: np.ndarray, trials: int, p: float, total: int, ax: Any) -> None:
    """Bars of observed counts per bin; expected count ± 2 s.d. per bin in red
    (the scatter an honest run shows, so a short run does not look like a mismatch)."""
    b = binned_against_binomial(observed, trials, p, total)
    unit = "" if b.width == 1 else f" (bins of {b.width})"
    # A bin holds the integers starts .. starts + width - 1: drawn centred on them.
    ax.bar(b.starts - 0.5, b.observed, width=b.width, align="edge", color="#7fa7d1",
           label=f"observed{unit}")  # fmt: skip
    ax.errorbar(
        b.starts + (b.width - 1) / 2,
        b.expected,
        yerr=b.spread,
        fmt="_",
        ms=max(4.0, 180.0 / b.starts.size),
        color="#c0392b",
        lw=1.2,
        capsize=0,
        label=f"expected ± 2 s.d., Binomial({trials}, {p:.3g})",
    )
    ax.set_xlim(b.starts[0] - 0.5 - b.width / 2, b.starts[-1] + 1.5 * b.width - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize="small")


def batch_size_figure(evidence: AuditEvidence) -> bytes:
    """Histogram of realised batch sizes vs Binomial(N, q), as PNG bytes."""
    fig, ax = _figure()
    sizes = evidence.batch_sizes
    observed = np.bincount(sizes) if sizes.size else np.zeros(1, dtype=np.int64)
    _against_binomial(observed, evidence.dataset_size, evidence.sampling_rate, sizes.size, ax)
    ax.set_xlabel("batch size L")
    ax.set_ylabel("steps")
    ax.set_title(f"Batch sizes of {sizes.size} logical steps")
    return _png(fig)


def inclusion_count_figure(evidence: AuditEvidence) -> bytes:
    """Histogram of per-example inclusion counts vs Binomial(T, q), as PNG bytes."""
    fig, ax = _figure()
    _against_binomial(
        evidence.count_histogram,
        max(evidence.logical_steps, 1),
        evidence.sampling_rate,
        evidence.dataset_size,
        ax,
    )
    ax.set_xlabel("times an example was sampled")
    ax.set_ylabel("examples")
    ax.set_title(f"Inclusion counts of {evidence.dataset_size} examples")
    return _png(fig)


def _prefix(segments: tuple[Any, ...], steps: int) -> list[Any]:
    out, left = [], steps
    for seg in segments:
        if left <= 0:
            break
        take = min(seg.steps, left)
        out.append(dataclasses.replace(seg, steps=take))
        left -= take
    return out


def epsilon_curve(
    evidence: AuditEvidence, *, points: int = 8
) -> dict[str, list[tuple[int, float]]]:
    """ε at ``points`` step counts along the executed steps, per accountant.

    Returns:
        accountant name → list of (executed steps, ε); accountants that could
        not answer at a point are left out there.
    """
    from dpverify import accounting

    total = sum(seg.steps for seg in evidence.segments)
    if total == 0:
        return {}
    grid = sorted({max(1, round(float(x))) for x in np.linspace(total / points, total, points)})
    curve: dict[str, list[tuple[int, float]]] = {"rdp": [], "pld": [], "prv": []}
    for t in grid:
        report = accounting.compute_epsilon(
            _prefix(evidence.segments, t), evidence.delta, **evidence.accounting_kwargs
        )
        for name in curve:
            eps = getattr(report, name).epsilon
            if eps is not None:
                curve[name].append((t, float(eps)))
    return {k: v for k, v in curve.items() if v}


def epsilon_figure(
    curve: dict[str, list[tuple[int, float]]], *, delta: float, claimed: float | None
) -> bytes:
    """ε against executed steps per accountant (and the claim), as PNG bytes."""
    fig, ax = _figure()
    for name, pts in curve.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=name.upper())
    if claimed is not None:
        ax.axhline(claimed, color="k", ls="--", lw=1, label=f"claimed ε = {claimed:g}")
    ax.set_xlabel("executed steps")
    ax.set_ylabel(f"ε at δ = {delta:g}")
    ax.set_title("Privacy loss against steps")
    ax.legend(frameon=False)
    return _png(fig)


def canary_score_figure(histogram: dict[str, list], *, lower_bound: float | None = None) -> bytes:
    """Canary scores, included vs excluded (step histograms), as PNG bytes.

    ``histogram`` is the empirical check's ``details["histogram"]``: shared
    ``edges`` and the ``included``/``excluded`` counts per bin.  Included
    canaries pushed the model along their direction, so when the run leaks
    they sit to the right of the excluded ones.
    """
    fig, ax = _figure()
    edges = np.asarray(histogram["edges"], dtype=float)
    for key, colour in (("excluded", "#7fa7d1"), ("included", "#d1847f")):
        counts = np.asarray(histogram[key], dtype=float)
        ax.stairs(counts, edges, color=colour, lw=1.5, label=f"{key} ({int(counts.sum())})")
    title = "Canary scores from the released parameters"
    if lower_bound is not None:
        title += f" (empirical ε ≥ {lower_bound:.3g})"
    ax.set_title(title)
    ax.set_xlabel("score = −⟨θ_T − θ_0, u_i⟩ / C")
    ax.set_ylabel("canaries")
    ax.legend(frameon=False)
    return _png(fig)
