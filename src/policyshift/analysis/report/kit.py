"""The report's plotting kit: HTML escaping and number formatting, plotly figure dicts and axes, the panel
frame, "no data yet" notes, token colouring by log π/π_ref, sample columns and the self-contained page.
Public: the report's panels, the side-by-side runs page (multirun) and `policyshift compare` build on it."""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any, Iterable

import numpy as np

from policyshift.analysis.runlog import as_float

TOKEN_SCALE = 2.0  # |log π/π_ref| (nats) at which a token's colour saturates (a 7.4× probability ratio)
MAX_SAMPLE_COLUMNS = 12  # reference + this many − 1 eval steps per prompt; more would be unreadable

# Diverging scale (ColorBrewer RdBu ends, softened so dark text stays readable on them).
_NEGATIVE_RGB = (67, 147, 195)  # blue: the policy makes this token less likely than the reference did
_POSITIVE_RGB = (214, 96, 77)  # red: more likely
STAGE_COLORS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]  # viridis: early → late
BASE_LAYOUT = {
    "margin": {"l": 60, "r": 60, "t": 30, "b": 45},
    "legend": {"orientation": "h", "y": -0.2},
    "hovermode": "x unified",
    "font": {"size": 12},
}


# ------------------------------------------------------------------ HTML + JSON plumbing


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    x = as_float(value)
    return f"{x:.{digits}g}" if math.isfinite(x) else "—"


def jsonable(obj: Any) -> Any:
    """Plain JSON types only; NaN/inf become null (plotly draws a gap, JSON stays strict)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def script_json(obj: Any) -> str:
    """JSON safe to place inside <script>: no '<', '>' or '&' can end the script element early."""
    text = json.dumps(jsonable(obj), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files("policyshift.analysis").joinpath(name).read_text(encoding="utf-8")


# plotly.js's "cartesian" partial bundle: npm plotly.js-cartesian-dist-min 4.1.1 (MIT: plotly-cartesian.LICENSE.txt beside it), the
# plotly.js version the plotly 6 Python package inlines, 1.5 MB instead of 4.8 MB. Measured on a 20k-step report:
# the page 5.7 → 2.4 MB, headless Chromium 2.4–3.6 s → 1.6–2.5 s (benchmarks/soak.py's page, a loaded 2-core machine).
CARTESIAN_BUNDLE = "plotly-cartesian.min.js"
CARTESIAN_TRACES = {"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour", "image", "pie", "scatter",
                    "scatterternary", "violin"}  # the trace types that bundle registers


def _plotly_js(figures: dict[str, dict] | None = None) -> str | None:
    """The plotly.js to inline: the cartesian bundle shipped beside this package when every trace of `figures` is a
    type it draws, else the full bundle shipped inside the plotly Python package (read as a file: importing plotly
    itself is slow and not needed); None when neither is there."""
    types = {trace.get("type", "scatter") for fig in (figures or {}).values() for trace in fig.get("data", [])}
    if types <= CARTESIAN_TRACES:
        try:
            return _asset(CARTESIAN_BUNDLE)
        except (FileNotFoundError, OSError):
            pass
    try:
        return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def standalone_page(title: str, body_html: str, figures: dict[str, dict] | None = None) -> str:
    """A complete offline HTML page: the report's CSS, `body_html`, and `figures` ({element id:
    plotly figure dict}) rendered into the elements with those ids by the embedded plotly.js."""
    figures = figures or {}
    plotly_js = _plotly_js(figures) if figures else None
    figure_scripts = "\n".join(
        f'<script type="application/json" class="ps-figure" data-target="{esc(fig_id)}">{script_json(fig)}</script>'
        for fig_id, fig in figures.items()
    )
    if figures and plotly_js is None:
        body_html = '<p class="no-data">plotly is not installed (pip install plotly): figures are not drawn.</p>' + body_html
        figure_scripts = ""
    plotly_tag = f"<script>{plotly_js}</script>" if plotly_js else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_asset('report.css')}</style>"
        f"<script>{_asset('report.js')}</script></head>\n<body>\n{body_html}\n{figure_scripts}\n{plotly_tag}\n"
        "<script>window.policyshiftReport.renderAll();</script>\n</body></html>\n"
    )


def panel_html(number: int, title: str, body: str, caption: str = "") -> str:
    caption_html = f'<p class="caption">{caption}</p>' if caption else ""
    return f'<section class="panel" id="panel-{number}"><h2>{number}. {esc(title)}</h2>{body}{caption_html}</section>'


def no_data(what: str, fill: str = "") -> str:
    """`fill`: what input would fill the panel (a run analyzed from another trainer's checkpoints lacks
    what its trainer never logged; say which flag or file brings it)."""
    hint = f" To fill it: {esc(fill)}." if fill else ""
    return f'<p class="no-data">No data yet: {esc(what)}.{hint}</p>'


def add_figure(figures: dict, fig_id: str, data: list[dict], layout: dict, height: int = 360) -> str:
    """The figure's element; its plotly dict goes into `figures`. A curve longer than MAX_POINTS is thinned for
    display (thin_trace) and the figure says so: a 20k-step run would otherwise put 20k points per curve
    into the page (13 MB, seconds for a browser to draw), more than a screen has pixels."""
    data = [thin_trace(trace) for trace in data]
    thinned = [t.pop(_THINNED) for t in data if _THINNED in t]
    figures[fig_id] = {"data": data, "layout": {**BASE_LAYOUT, "height": height, **layout}}
    note = ""
    if thinned:
        n = max(thinned)
        note = (f'<p class="thinned" title="a line keeps the lowest and highest value of each run of {math.ceil(n / (MAX_POINTS // 2 - 1))} '
                f'consecutive points, markers every {math.ceil(n / (MAX_POINTS - 1))}th point and the last">Thinned for display: at most '
                f"{MAX_POINTS} of {n} points per curve (lines keep each bucket's min and max); the run's files hold every point.</p>")
    return f'<div class="figure" id="{esc(fig_id)}" style="height:{height}px"></div>{note}'


MAX_POINTS = 2000  # per curve drawn: a figure is ~1000 px wide, so more points add bytes and drawing time, not detail
_THINNED = "_thinned_from"  # set on a thinned trace (its original length) until add_figure reads it


def thin_indices(y: np.ndarray, lines: bool, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of the points drawn of a curve of len(y) > max_points. A line keeps the min and the max of
    each bucket of consecutive points, in order (spikes and dips stay visible, unlike every k-th point); a
    bucket with no finite value keeps its first point (a gap stays a gap). Markers keep every k-th point.
    The first and the last point are always kept."""
    n = len(y)
    if not lines:
        k = math.ceil(n / (max_points - 1))
        return np.unique(np.r_[np.arange(0, n, k), n - 1])
    k = math.ceil(n / (max_points // 2 - 1))  # 2 per bucket, and the first and the last point
    buckets = math.ceil(n / k)
    padded = np.full(buckets * k, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, k)
    empty = np.isnan(grid).all(axis=1)
    lo = np.argmin(np.where(np.isnan(grid), np.inf, grid), axis=1)
    hi = np.argmax(np.where(np.isnan(grid), -np.inf, grid), axis=1)
    starts = np.arange(buckets) * k
    picked = np.where(empty, starts, starts + lo), np.where(empty, starts, starts + hi)
    return np.unique(np.r_[picked[0], picked[1], 0, n - 1].clip(0, n - 1))


def thin_trace(trace: dict, max_points: int = MAX_POINTS) -> dict:
    """A scatter trace with more than `max_points` points, thinned (thin_indices): every per-point list of the
    trace and of its marker (x, y, text, marker colours) is cut to the same points."""
    x = trace.get("x")
    if trace.get("type") != "scatter" or not isinstance(x, (list, np.ndarray)) or len(x) <= max_points:
        return trace
    n = len(x)
    y = np.array([as_float(v) for v in trace.get("y", [])], dtype=float)
    keep = thin_indices(y if len(y) == n else np.zeros(n), "lines" in str(trace.get("mode", "lines")), max_points)

    def cut(d: dict) -> dict:
        return {k: ([v[i] for i in keep] if isinstance(v, (list, np.ndarray)) and len(v) == n else v) for k, v in d.items()}

    out = cut(trace)
    if isinstance(trace.get("marker"), dict):
        out["marker"] = cut(trace["marker"])
    out[_THINNED] = n
    return out


def line_trace(x, y, name: str, **extra) -> dict:
    return {"type": "scatter", "mode": "lines", "x": list(np.asarray(x, dtype=float)), "y": list(np.asarray(y, dtype=float)), "name": name, **extra}


def axis(title: str, **extra) -> dict:
    return {"title": {"text": title}, "zeroline": False, **extra}


# ------------------------------------------------------------------ token rendering (reused by compare)


def token_color(log_ratio: float, scale: float = TOKEN_SCALE) -> str:
    """Background colour for a token: white at 0, blue when log π/π_ref < 0, red when > 0."""
    x = as_float(log_ratio)
    if not math.isfinite(x):
        return "#eeeeee"
    strength = min(abs(x) / scale, 1.0)
    target = _POSITIVE_RGB if x > 0 else _NEGATIVE_RGB
    r, g, b = (round(255 + (c - 255) * strength) for c in target)
    return f"#{r:02x}{g:02x}{b:02x}"


def render_tokens(tokens: Iterable[Any], log_ratios: Iterable[Any] | None, scale: float = TOKEN_SCALE) -> str:
    """One <span> per token, coloured by its log π/π_ref, with the value in the title attribute.

    Missing log ratios (a shorter list, None, NaN) render grey with "n/a" rather than failing.
    Newlines show as ↵ followed by the break, so the layout of the response is preserved.
    """
    tokens = [str(tok) for tok in tokens]
    ratios = list(log_ratios or [])
    spans = []
    for i, tok in enumerate(tokens):
        value = as_float(ratios[i]) if i < len(ratios) else math.nan
        label = f"log π/π_ref = {value:+.3f}" if math.isfinite(value) else "log π/π_ref = n/a"
        text = esc(tok).replace("\n", "↵\n")
        spans.append(f'<span class="tok" style="background:{token_color(value, scale)}" title="{esc(label)}">{text}</span>')
    return "".join(spans)


def render_sample_columns(prompt: str, columns: list[dict], scale: float = TOKEN_SCALE) -> str:
    """A prompt above its responses side by side.

    Each column is a dict with: "label" (e.g. "reference (step 0)"), "tokens" (list of decoded
    tokens), "log_ratios" (log π/π_ref per token), "score", "gold_score" (may be None), "seq_kl";
    optionally "response" (plain text shown when "tokens" is empty) and "length".
    """
    cells = []
    for column in columns:
        head = [f'<span class="label">{esc(column.get("label", ""))}</span>', f"<span>score {fmt(column.get('score'))}</span>"]
        if math.isfinite(as_float(column.get("gold_score"))):
            head.append(f"<span>gold {fmt(column.get('gold_score'))}</span>")
        head.append(f"<span>seq KL {fmt(column.get('seq_kl'))} nats</span>")
        if column.get("length") is not None:
            head.append(f"<span>{esc(column['length'])} tokens</span>")
        tokens = column.get("tokens") or []
        body = render_tokens(tokens, column.get("log_ratios"), scale) if tokens else esc(column.get("response", ""))
        cells.append(f'<div class="sample-col"><div class="col-head">{"".join(head)}</div><div class="tokens">{body}</div></div>')
    return (
        f'<div class="sample"><div class="sample-prompt"><pre>{esc(prompt)}</pre></div>'
        f'<div class="sample-columns">{"".join(cells)}</div></div>'
    )


# ------------------------------------------------------------------ panels


def pick_columns(rows: list[dict], limit: int) -> list[dict]:
    """Up to `limit` evenly spaced eval rows, always keeping the first and the latest."""
    if len(rows) <= limit:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks]


def sample_column(row: dict) -> dict:
    is_reference = row.get("model") == "reference"
    return {
        "label": f"reference (step {row.get('step')})" if is_reference else f"policy step {row.get('step')}",
        "tokens": row.get("tokens") or [],
        "log_ratios": row.get("token_log_ratio") or [],
        "score": row.get("score"),
        "gold_score": row.get("gold_score"),
        "seq_kl": row.get("seq_kl"),
        "response": row.get("response", ""),
        "length": row.get("length"),
    }
