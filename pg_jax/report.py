"""A self-contained HTML report of a VQA evaluation: the questions the model gets wrong first.

One file, no external assets (images are embedded base64 PNGs), readable offline:
  - a header with the metrics;
  - summary plots: the distribution of per-question ANLS and the mean ANLS per question type;
  - one row per question, worst first: the page as the model saw it, the question, the
    prediction, the accepted answers and the score, coloured from red (0) to green (1).

    report.write_html("docvqa_val.html", records, thumbnails, metrics=..., title="docvqa/val")

``records`` are the evaluator's prediction records (``pg_jax.evaluators.vqa``); records without
an ``anls`` key (a split without answers) are listed in question order, unscored.
"""

from __future__ import annotations

import base64
import collections
import colorsys
import datetime
import html
import io
from collections.abc import Mapping, Sequence

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { margin-bottom: 4px; } .sub { color: #777; margin-top: 0; }
.metrics { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.metric { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 16px; }
.metric b { display: block; font-size: 22px; } .metric span { color: #777; font-size: 12px; }
.plots img { max-width: 48%; border: 1px solid #ddd; background: #fff; margin-right: 1%; }
table { border-collapse: collapse; width: 100%; background: #fff; margin-top: 16px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 8px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.thumb img { width: 128px; transition: transform .15s; transform-origin: left top; }
td.thumb img:hover { transform: scale(2.5); position: relative; z-index: 2;
  box-shadow: 0 4px 16px #0005; }
td.score { font-weight: bold; text-align: right; width: 56px; }
.pred { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.gt { font-family: ui-monospace, monospace; color: #2a6; } .gt + .gt::before { content: " | "; }
.types { color: #888; font-size: 12px; } .empty { color: #bbb; font-style: italic; }
"""


def _score_rgb(score: float) -> tuple[float, float, float]:
    """Red (0) -> amber (0.5) -> green (1), light enough to read text on."""
    hue = max(0.0, min(1.0, score)) / 3  # 0 is red, 1/3 is green in HLS.
    return colorsys.hls_to_rgb(hue, 0.82, 0.7)


def _score_color(score: float) -> str:
    """CSS hex colour of ``_score_rgb``."""
    return "#" + "".join(f"{round(c * 255):02x}" for c in _score_rgb(score))


def _png_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def summary_plots(records: Sequence[Mapping]) -> list[bytes]:
    """PNG plots: a histogram of per-question ANLS, and mean ANLS per question type.

    Args:
      records: scored prediction records (with "anls" and "question_types").

    Returns:
      PNG bytes of each plot (none for unscored records).
    """
    # The object-oriented API, not pyplot: no global figure state, no GUI backend needed.
    from matplotlib.figure import Figure

    scores = [r["anls"] for r in records if "anls" in r]
    if not scores:
        return []
    pngs = []
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.hist(scores, bins=[i / 10 for i in range(11)], color="#4a7fb5", edgecolor="white")
    ax.set(
        xlabel="ANLS of a question",
        ylabel="questions",
        xlim=(0, 1),
        title=f"Per-question ANLS ({len(scores)} questions, mean {sum(scores) / len(scores):.3f})",
    )
    pngs.append(_figure_png(fig))

    by_type = collections.defaultdict(list)
    for r in records:
        if "anls" in r:
            for t in r.get("question_types") or ["(no type)"]:
                by_type[t].append(r["anls"])
    names = sorted(by_type, key=lambda t: sum(by_type[t]) / len(by_type[t]))
    fig = Figure(figsize=(6, 0.5 + 0.4 * max(len(names), 2)))
    ax = fig.add_subplot()
    means = [sum(by_type[t]) / len(by_type[t]) for t in names]
    bars = ax.barh(names, means, color=[_score_rgb(m) for m in means], edgecolor="#666")
    for bar, t in zip(bars, names):
        ax.text(
            bar.get_width() + 0.01,
            bar.get_y() + bar.get_height() / 2,
            f"{bar.get_width():.2f} (n={len(by_type[t])})",
            va="center",
            fontsize=8,
        )
    ax.set(xlim=(0, 1.15), xlabel="mean ANLS", title="ANLS per question type")
    pngs.append(_figure_png(fig))
    return pngs


def _row(rank: int, rec: Mapping, thumbnails: Mapping[int, bytes]) -> str:
    qid = rec["questionId"]
    thumb = thumbnails.get(qid)
    thumb_html = _png_tag(thumb, f"page of question {qid}") if thumb else ""
    pred = rec.get("answer", "")
    pred_html = (
        f'<span class="pred">{html.escape(pred)}</span>'
        if pred
        else '<span class="empty">(empty)</span>'
    )
    if rec.get("skipped"):  # the reader could not use this question (e.g. a corrupt page)
        pred_html = f'<span class="empty">(skipped: {html.escape(rec["skipped"])})</span>'
    thumb_html = thumb_html or ('<span class="empty">(no page)</span>' if rec.get("skipped") else "")
    gts = "".join(f'<span class="gt">{html.escape(a)}</span>' for a in rec.get("answers") or [])
    types = ", ".join(rec.get("question_types") or [])
    if "anls" in rec:
        score = rec["anls"]
        score_td = f'<td class="score" style="background:{_score_color(score)}">{score:.2f}</td>'
    else:
        score_td = '<td class="score">&ndash;</td>'
    return (
        f'<tr><td>{rank}</td><td class="thumb">{thumb_html}</td>'
        f'<td>{html.escape(rec.get("question", ""))}<div class="types">#{qid} {html.escape(types)}'
        f"</div></td><td>{pred_html}</td><td>{gts or '<span class=empty>none</span>'}</td>"
        f"{score_td}</tr>"
    )


def render_html(
    records: Sequence[Mapping],
    thumbnails: Mapping[int, bytes] | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    title: str = "VQA evaluation",
    max_rows: int = 500,
) -> str:
    """The report as an HTML string.

    Args:
      records: prediction records ({"questionId", "question", "answer", "answers",
        "question_types", optional "anls"}).
      thumbnails: questionId -> PNG bytes of the page (missing ones are left blank).
      metrics: name -> value shown in the header (e.g. {"anls": 0.71, "num": 500}).
      title: page title.
      max_rows: questions listed (the worst ones); the plots always use all of them.

    Returns:
      A complete HTML document.
    """
    thumbnails = thumbnails or {}
    scored = any("anls" in r for r in records)
    # Worst first; ties in question order so the report is deterministic.
    ordered = sorted(records, key=lambda r: (r.get("anls", 0.0), r["questionId"]))
    shown = ordered[:max_rows]
    cards = "".join(
        f'<div class="metric"><b>{v:.4g}</b><span>{html.escape(k)}</span></div>'
        if isinstance(v, float)
        else f'<div class="metric"><b>{v}</b><span>{html.escape(k)}</span></div>'
        for k, v in (metrics or {}).items()
    )
    plots = "".join(_png_tag(p, "summary plot") for p in summary_plots(records))
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    order_note = "worst first" if scored else "no answers in this split: unscored"
    more = (
        f"<p class=sub>Showing {len(shown)} of {len(records)} questions.</p>"
        if len(shown) < len(records)
        else ""
    )
    rows = "".join(_row(i + 1, r, thumbnails) for i, r in enumerate(shown))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="sub">{len(records)} questions, {order_note}; generated {now} by pg_jax.report.</p>
<div class="metrics">{cards}</div>
<div class="plots">{plots}</div>{more}
<table><thead><tr><th>#</th><th>page</th><th>question</th><th>prediction</th>
<th>accepted answers</th><th>ANLS</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""


def write_html(
    path: str,
    records: Sequence[Mapping],
    thumbnails: Mapping[int, bytes] | None = None,
    **kw,
) -> str:
    """Writes ``render_html(records, thumbnails, **kw)`` to ``path`` and returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(records, thumbnails, **kw))
    return path
