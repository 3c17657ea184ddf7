"""The human report: Markdown or HTML, verdict first, then each check, then plots.

``write_report(cert, "report.html")`` writes one self-contained HTML file with
the plots embedded (base64 PNG); ``write_report(cert, "report.md")`` writes
Markdown and saves the plots beside it in ``report_plots/``.  Neither contains
sampled indices, seeds or keys: only the certificate's public content and
aggregate plots (batch-size and inclusion-count histograms, ε against steps,
canary-score histograms — counts per bin, never which canary was included).

Every value that comes from the run (header fields such as ``task`` or
``run_id``, check reasons that quote them) is escaped: in Markdown, line
breaks become spaces and Markdown and HTML syntax characters are
backslash-escaped or written as entities (:func:`md_escape`); in HTML,
``html.escape``.  A header field holding newlines, a Markdown heading or an
HTML tag therefore cannot start a line of its own or forge a verdict line.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audits import _plots
from audits.certificate import Certificate
from dpverify._validate import check_int
from dpverify.errors import InvalidArgument, UnusableInput

__all__ = ["md_escape", "render_markdown", "write_report"]

# Line and paragraph breaks of every kind, and other control characters.
_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# Characters with a meaning in Markdown (CommonMark's ASCII punctuation that can start
# or end syntax); backslash-escaped.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md_escape(text: Any) -> str:
    """``text`` as one Markdown line that renders literally.

    Control characters and line breaks (``\\n``, ``\\r``, U+2028, …) become a
    space; ``&``, ``<``, ``>`` become entities (no raw HTML); Markdown
    punctuation is backslash-escaped.
    """
    out = _BREAKS.sub(" ", str(text))
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", out)



class _Status(str):
    """A check status cell: a text badge (no emoji: readable without an emoji font)."""


class _Code(str):
    """Literal text (a hash, a command): Markdown backticks, HTML ``<code>``."""


#: Paragraph = pieces of plain text and literal text.
_Paragraph = list[str]

_BADGE_COLOUR = {"pass": "#1e8449", "fail": "#c0392b", "warn": "#b9770e", "skip": "#7f8c8d"}


def _num(x: Any, fmt: str = ".4g") -> str:
    return "—" if x is None else format(x, fmt)


def _canary_plot(cert: Certificate) -> list[tuple[str, str, bytes]]:
    """The canary-score plot when the empirical check computed scores."""
    try:
        check = cert.check("empirical")
    except InvalidArgument:
        return []
    hist = (check.details or {}).get("histogram")
    if not hist:
        return []
    lb = (check.details or {}).get("epsilon_lower_bound")
    return [
        (
            "canary_scores",
            "Canary scores from the released parameters, included vs excluded canaries",
            _plots.canary_score_figure(hist, lower_bound=lb),
        )
    ]


def _plots_for(cert: Certificate, *, epsilon_points: int) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, PNG) for each plot the evidence allows."""
    ev = cert.evidence
    if ev is None:
        return _canary_plot(cert)
    out = [
        (
            "batch_sizes",
            "Batch sizes of the logical steps against Binomial(N, q)",
            _plots.batch_size_figure(ev),
        ),
        (
            "inclusion_counts",
            "Per-example inclusion counts against Binomial(T, q)",
            _plots.inclusion_count_figure(ev),
        ),
    ]
    try:
        curve = _plots.epsilon_curve(ev, points=epsilon_points) if epsilon_points else {}
    except Exception:  # a plot that cannot be drawn is left out
        curve = {}
    if curve:
        out.append(
            (
                "epsilon",
                "ε against executed steps, per accountant",
                _plots.epsilon_figure(curve, delta=ev.delta, claimed=cert.claimed_epsilon),
            )
        )
    return out + _canary_plot(cert)


def _sections(cert: Certificate) -> list[tuple[str, list[list[str]] | _Paragraph]]:
    """The report's content as (heading, table rows or a paragraph's pieces)."""
    eps = cert.epsilon or {}
    checks = [["check", "status", "p-value", "reason"]] + [
        [c.name, _Status(c.status), _num(c.p_value, ".3g"), c.reason] for c in cert.checks
    ]
    claim = [
        ["claimed ε", "δ", "executed steps", "logical steps", "sealed"],
        [
            _num(cert.claimed_epsilon),
            _num(cert.delta, "g"),
            str(cert.steps),
            str(cert.logical_steps),
            str(cert.sealed),
        ],
    ]
    acc = [["accountant", "ε", "note"]]
    for name in ("rdp", "pld", "prv"):
        entry = eps.get(name)
        reason = (eps.get("reasons") or {}).get(name) or ""
        if entry is None:
            acc.append([name.upper(), "unavailable", reason])
        elif name == "prv":
            acc.append(
                [
                    name.upper(),
                    _num(entry.get("upper")),
                    f"lower {_num(entry.get('lower'))}, estimate {_num(entry.get('estimate'))}",
                ]
            )
        else:
            acc.append([name.upper(), _num(entry.get("epsilon")), reason])
    emp = cert.empirical
    empirical: list[list[str]] | _Paragraph = [
        "The run has no canaries, or their secret design was not given to the auditor."
    ]
    if emp:
        empirical = [
            ["ε lower bound", "confidence", "canaries", "correct / guesses", "method", "source"],
            [
                _num(emp.get("epsilon_lower_bound")),
                _num(emp.get("confidence"), ".0%"),
                str(emp.get("canaries")),
                f"{emp.get('correct')} / {emp.get('guesses')}",
                str(emp.get("method")),
                str(emp.get("source")),
            ],
        ]
    run = [["field", "value"]] + [
        [k, str(v)] for k, v in cert.run.items() if v not in (None, {}, "")
    ]
    return [
        ("Claim", claim),
        ("Checks", checks),
        ("ε recomputed from the executed steps", acc if eps else ["ε was not computed."]),
        ("Empirical lower bound on ε from canaries (one run)", empirical),
        ("Run configuration (public header fields)", run),
        (
            "Ledger commitment",
            [
                "Hash-chain head: ",
                _Code(cert.ledger_head),
                ". Anyone holding the ledger can recompute it with ",
                _Code("dpverify ledger verify"),
                " and confirm this is the ledger that was audited.",
            ],
        ),
    ]


def _md_cell(s: str) -> str:
    if isinstance(s, _Status):
        return f"**{s.upper()}**" if s == "fail" else s.upper()
    return md_escape(s)


def _md_paragraph(pieces: _Paragraph) -> str:
    return "".join(f"`{p}`" if isinstance(p, _Code) else p for p in pieces)


def _md_table(rows: list[list[str]]) -> str:
    cell = _md_cell

    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(cert: Certificate, *, plot_links: Sequence[tuple[str, str]] = ()) -> str:
    """The report as Markdown; ``plot_links`` are (caption, relative path) pairs."""
    parts = [
        "# dpverify audit report",
        f"**Verdict: {cert.verdict.upper()}** — {md_escape(cert.verdict_reason)}",
        f"**Scope:** {md_escape(cert.scope_text)}",
        f"_Audited {md_escape(cert.created)} by dpverify {md_escape(cert.dpverify_version)}; "
        f"certificate schema {cert.to_json()['schema_version']}._",
    ]
    for heading, body in _sections(cert):
        parts.append(f"## {heading}")
        is_table = bool(body) and isinstance(body[0], list)
        parts.append(_md_table(body) if is_table else _md_paragraph(body))  # type: ignore[arg-type]
    if plot_links:
        parts.append("## Plots")
        parts += [f"![{cap}]({rel})\n\n_{cap}_" for cap, rel in plot_links]
    return "\n\n".join(parts) + "\n"


def _html_cell(x: str) -> str:
    if isinstance(x, _Status):
        return f'<span class="badge {html.escape(x)}">{html.escape(x.upper())}</span>'
    return html.escape(x)


def _html_paragraph(pieces: _Paragraph) -> str:
    return "".join(
        f"<code>{html.escape(p)}</code>" if isinstance(p, _Code) else html.escape(p)
        for p in pieces
    )


def _html_table(rows: list[list[str]]) -> str:
    head, *body = rows
    th = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    trs = "".join("<tr>" + "".join(f"<td>{_html_cell(x)}</td>" for x in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _render_html(cert: Certificate, plots: list[tuple[str, str, bytes]]) -> str:
    colour = {"certified": "#1e8449", "refuted": "#c0392b", "unverifiable": "#b9770e"}[cert.verdict]
    body = [
        "<h1>dpverify audit report</h1>",
        f'<p class="verdict" style="color:{colour}"><b>Verdict: {cert.verdict.upper()}</b> — '
        f"{html.escape(cert.verdict_reason)}</p>",
        f"<p><b>Scope:</b> {html.escape(cert.scope_text)}</p>",
        f"<p><i>Audited {html.escape(cert.created)} by dpverify "
        f"{html.escape(cert.dpverify_version)}.</i></p>",
    ]
    for heading, content in _sections(cert):
        body.append(f"<h2>{html.escape(heading)}</h2>")
        is_table = bool(content) and isinstance(content[0], list)
        body.append(
            _html_table(content)  # type: ignore[arg-type]
            if is_table
            else f"<p>{_html_paragraph(content)}</p>"  # type: ignore[arg-type]
        )
    if plots:
        body.append("<h2>Plots</h2>")
        for _, cap, png in plots:
            data = base64.b64encode(png).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left;vertical-align:top}.verdict{font-size:1.4em}"
        "code{font-family:monospace;background:#f4f4f4;padding:0 .2em;word-break:break-all}"
        ".badge{display:inline-block;padding:.05em .5em;border-radius:.3em;color:#fff;"
        "font-weight:bold;font-size:.85em;letter-spacing:.03em}"
        + "".join(f".badge.{k}{{background:{v}}}" for k, v in _BADGE_COLOUR.items())
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>dpverify audit report'
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(
    cert: Certificate, path: str | os.PathLike[str], *, epsilon_points: int = 6
) -> Path:
    """Write the human report to ``path`` (``.html``/``.htm`` or ``.md``).

    Args:
        cert: the certificate (its ``evidence`` feeds the plots).
        path: where to write; Markdown plots go to ``<stem>_plots/`` beside it.
        epsilon_points: step counts at which the ε curve is recomputed with
            every accountant (each costs one accounting call; 0 leaves the ε
            plot out).

    Returns:
        The path written.

    Raises:
        InvalidArgument: for another suffix.
        UnusableInput: if the parent directory does not exist.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".md"):
        raise InvalidArgument(f"report={str(path)!r} must end in .html or .md")
    if not path.parent.is_dir():
        raise UnusableInput(f"cannot write {path}: directory {path.parent} does not exist")
    check_int("epsilon_points", epsilon_points, minimum=0)
    plots = _plots_for(cert, epsilon_points=epsilon_points)
    if suffix == ".md":
        links = []
        if plots:
            plot_dir = path.with_name(path.stem + "_plots")
            plot_dir.mkdir(exist_ok=True)
            for stem, cap, png in plots:
                (plot_dir / f"{stem}.png").write_bytes(png)
                links.append((cap, f"{plot_dir.name}/{stem}.png"))
        path.write_text(render_markdown(cert, plot_links=links), encoding="utf-8")
    else:
        path.write_text(_render_html(cert, plots), encoding="utf-8")
    return path
