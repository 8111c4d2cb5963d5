"""Charts as server-rendered SVG: pure functions from series to markup.

The portal ships no chart script (its CSP allows only this site's scripts and none inline,
and every page works without JavaScript), so a chart is an inline ``<svg role="img">`` with
axes, ticks and units, whose points each carry a ``<title>`` that the browser shows on hover;
the same numbers go into a table that ``_chart.html`` puts under a ``<details>``. Times are
UTC. Every text that reaches the markup is escaped here. Nothing here reads the database or
the clock: ``timeseries`` computes the series and passes them in.

The words a chart adds itself (the summary, "no data yet", the time axis, the loss curve's
step and note) go through ``say``, the viewer's gettext where a caller passes one (the job
page does); without one they are English.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

# Okabe-Ito-like colours, each at least 4.5:1 on the chart's background, and a dash pattern
# per series, so that lines differ by more than colour.
PALETTE = ("#0b5cad", "#a14f00", "#1b7f3b", "#8e3ea8", "#b3261e", "#3d4b5c")
DASHES = ("", "7 4", "2 3", "9 3 2 3", "4 2", "12 4")
LIMIT_COLOUR = "#b3261e"

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 60, 18, 16, 46
MAX_MARKERS = 150  # points with a hover title and a table row; the line keeps every point

Say = Callable[[str], str]  # a gettext: an English sentence to the viewer's language


def as_is(text: str) -> str:
    return text


# Steps of a time axis, smallest first: the first that gives at most ``count`` ticks is used.
_HOUR, _DAY = 3600, 86400
_TIME_STEPS = (
    _HOUR,
    2 * _HOUR,
    3 * _HOUR,
    4 * _HOUR,
    6 * _HOUR,
    12 * _HOUR,
    _DAY,
    2 * _DAY,
    7 * _DAY,
)


@dataclass(frozen=True, slots=True)
class Series:
    """One line: (x, y) points in x order; x is epoch seconds on a time axis, else a number."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class LegendEntry:
    name: str
    colour: str
    dash: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What ``_chart.html`` shows: the SVG, its legend, and its numbers as a table."""

    key: str  # unique on the page: the figure's and its table's ids
    title: str
    summary: str  # the SVG's accessible name: what the chart shows, in one sentence
    svg: Markup  # empty when there is nothing to draw
    legend: tuple[LegendEntry, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""

    @property
    def empty(self) -> bool:
        return not self.rows


def number(value: float) -> str:
    """A value for people: at most four significant digits, no exponent for everyday sizes."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3g}"


def utc_label(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round ticks covering [low, high]: steps of 1, 2, 2.5 or 5 x 10^k, about ``count`` of
    them; the first tick is at or below ``low``, the last at or above ``high``. Integer axes
    (GPUs, jobs) never get a step below 1."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if high < low:
        low, high = high, low
    if high - low <= max(abs(low), abs(high), 1e-200) * 1e-9:  # flat (to float precision)
        pad = abs(low) * 0.1 or 1.0
        # Around the value; never below zero for values that are not (idle GPUs: 0 to 1).
        low, high = (low - pad if low < 0 else max(0.0, low - pad)), high + pad
        if integer:
            low, high = math.floor(low), math.ceil(high)
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.floor(low / step + 1e-9)
    ticks = [first * step]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append((first + len(ticks)) * step)
    # 0.30000000000000004 -> 0.3: two digits past the step's own are exact enough.
    digits = max(0, 2 - math.floor(math.log10(step)))
    return [round(t, digits) for t in ticks]


def time_ticks(start: float, end: float, count: int = 6) -> list[Tick]:
    """Ticks on whole UTC hours, days or months inside [start, end], at most about ``count``;
    a label is the time of day (``14:00``), or the date (``12-06``) at midnight, for day
    steps and on the first of a month (spans over eight weeks tick on months)."""
    span = max(end - start, 1.0)
    if span > 8 * 7 * _DAY:
        return _month_ticks(start, end, count)
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    ticks = []
    at = math.ceil(start / step) * step
    while at <= end:
        moment = datetime.fromtimestamp(at, UTC)
        midnight = moment.hour == 0 and moment.minute == 0
        label = moment.strftime("%m-%d") if step >= _DAY or midnight else moment.strftime("%H:%M")
        ticks.append(Tick(float(at), label))
        at += step
    return ticks


def _month_ticks(start: float, end: float, count: int) -> list[Tick]:
    first = datetime.fromtimestamp(start, UTC)
    month = first.year * 12 + first.month - 1  # months since year 0, the first one's
    if first != datetime(first.year, first.month, 1, tzinfo=UTC):
        month += 1
    months = []
    while True:
        moment = datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)
        if moment.timestamp() > end:
            break
        months.append(moment)
        month += 1
    every = max(1, math.ceil(len(months) / count))
    return [Tick(m.timestamp(), m.strftime("%m-%d")) for m in months[::every]]


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def _spread(n: int, most: int) -> list[int]:
    """Indices of at most ``most`` of ``n`` points, evenly spread, the first and last kept."""
    if n <= most:
        return list(range(n))
    stride = (n - 1) / (most - 1)
    return sorted({round(i * stride) for i in range(most)})


def line_chart(
    key: str,
    title: str,
    series: Sequence[Series],
    *,
    y_label: str,
    unit: str,
    x_label: str | None = None,
    time_axis: bool = True,
    x_domain: tuple[float, float] | None = None,
    include_zero: bool = True,
    integer: bool = False,
    x_integer: bool = False,
    limit: tuple[float, str] | None = None,
    x_text: Callable[[float], str] | None = None,
    max_markers: int = MAX_MARKERS,
    note: str = "",
    say: Say = as_is,
) -> Chart:
    """A line chart of ``series`` with axes, ticks and units.

    ``unit`` follows every value in the hover titles (``8 GPUs``); ``integer`` and
    ``x_integer`` keep ticks on whole numbers (GPUs, jobs; steps); ``limit`` is a horizontal
    line (a budget) with its label; ``x_domain`` widens the x axis past the data (a budget's
    whole period). Points that are not finite are skipped; a series with no points draws
    nothing; with no points at all the chart is empty ("no data yet"). ``x_label`` is
    "time (UTC)" by default; ``say`` translates the words the chart adds itself.
    """
    if x_label is None:
        x_label = say("time (UTC)")
    kept = [Series(s.name, _finite(s.points)) for s in series]
    kept = [s for s in kept if s.points]
    legend = tuple(
        LegendEntry(s.name, PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)])
        for i, s in enumerate(kept)
    )
    x_fmt = x_text or (utc_label if time_axis else number)
    if not kept:
        empty = say("%(title)s: no data yet") % {"title": title}
        return Chart(key, title, empty, Markup(""), (), (), (), note)
    xs = [x for s in kept for x, _ in s.points]
    ys = [y for s in kept for _, y in s.points]
    x_lo, x_hi = (min(xs), max(xs)) if x_domain is None else x_domain
    if limit is not None and math.isfinite(limit[0]):
        ys.append(limit[0])
    y_lo, y_hi = min(ys), max(ys)
    if include_zero:
        y_lo, y_hi = min(0.0, y_lo), max(0.0, y_hi)
    y_ticks = nice_ticks(y_lo, y_hi, 5, integer)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    if x_hi == x_lo:  # one point: in the middle of an axis around it
        pad = _HOUR if time_axis else 1.0
        x_lo, x_hi = x_lo - pad, x_hi + pad
    if time_axis:
        x_ticks = time_ticks(x_lo, x_hi)
    else:
        x_ticks = [
            Tick(t, number(t))
            for t in nice_ticks(x_lo, x_hi, 6, x_integer)
            if x_lo - 1e-9 <= t <= x_hi + 1e-9
        ]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + (y_hi - y) / (y_hi - y_lo) * plot_h

    summary = _summary(title, kept, unit, x_fmt, say)
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(summary)}" xmlns="http://www.w3.org/2000/svg" '
        f'data-chart="{escape(key)}">',
        f"<title>{escape(summary)}</title>",
        '<g class="grid" stroke="#e3e7ed" stroke-width="1">',
    ]
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
    out.append("</g>")
    bottom = TOP + plot_h
    out.append('<g class="axes" stroke="#5d6675" stroke-width="1">')
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    for tick in x_ticks:
        x = px(tick.at)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
    out.append("</g>")
    out.append('<g class="ticks" fill="#3d4b5c" font-size="12" font-family="sans-serif">')
    for t in y_ticks:
        out.append(
            f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{escape(number(t))}</text>'
        )
    for tick in x_ticks:
        out.append(
            f'<text x="{px(tick.at):.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{escape(tick.label)}</text>"
        )
    out.append("</g>")
    mid_y = TOP + plot_h / 2
    out.append(
        f'<text class="axis-label" x="14" y="{mid_y:.1f}" transform="rotate(-90 14 {mid_y:.1f})" '
        f'text-anchor="middle" font-size="13" fill="#1d2430" font-family="sans-serif">'
        f"{escape(y_label)}</text>"
    )
    out.append(
        f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
        f'text-anchor="middle" font-size="13" fill="#1d2430" font-family="sans-serif">'
        f"{escape(x_label)}</text>"
    )
    if limit is not None and math.isfinite(limit[0]):
        value, label = limit
        y = py(value)
        text = f"{label}: {number(value)} {unit}"
        out.append(
            f'<g class="limit"><title>{escape(text)}</title>'
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{LIMIT_COLOUR}" stroke-width="1.5" stroke-dasharray="5 4"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y - 5:.1f}" text-anchor="end" font-size="11" '
            f'fill="{LIMIT_COLOUR}" font-family="sans-serif">{escape(text)}</text></g>'
        )
    for s, entry in zip(kept, legend, strict=True):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = f' stroke-dasharray="{entry.dash}"' if entry.dash else ""
        out.append(f'<g class="series" data-series="{escape(s.name)}">')
        if len(s.points) > 1:
            out.append(
                f'<polyline fill="none" stroke="{entry.colour}" stroke-width="2"{dash} '
                f'points="{points}"/>'
            )
        marked = _spread(len(s.points), max_markers)
        radius = 3.5 if len(marked) <= 60 else 2.5  # dense markers would hide the line
        for i in marked:
            x, y = s.points[i]
            hover = f"{s.name} · {x_fmt(x)}: {number(y)} {unit}".strip()
            out.append(
                f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" '
                f'fill="{entry.colour}"><title>{escape(hover)}</title></circle>'
            )
        out.append("</g>")
    out.append("</svg>")
    columns, rows = _table(kept, x_label, unit, x_fmt, max_markers)
    return Chart(key, title, summary, Markup("".join(out)), legend, columns, rows, note)


def _summary(
    title: str, series: Sequence[Series], unit: str, x_fmt: Callable[[float], str], say: Say
) -> str:
    first = min(x for s in series for x, _ in s.points)
    last = max(x for s in series for x, _ in s.points)
    parts = []
    for s in series[:6]:
        top = max(y for _, y in s.points)
        latest, peak = number(s.points[-1][1]), number(top)
        line = say("%(name)s latest %(latest)s, peak %(peak)s")
        parts.append(line % {"name": s.name, "latest": latest, "peak": peak})
    said = "; ".join(parts)
    if len(series) > 6:
        said += " " + say("and %(n)s more") % {"n": len(series) - 6}
    head = say("%(title)s, in %(unit)s") % {"title": title, "unit": unit} if unit else title
    span = {"head": head, "first": x_fmt(first), "last": x_fmt(last), "parts": said}
    return say("%(head)s, from %(first)s to %(last)s: %(parts)s") % span


def _table(
    series: Sequence[Series],
    x_label: str,
    unit: str,
    x_fmt: Callable[[float], str],
    max_rows: int,
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """One row per x (at most ``max_rows``, spread evenly), one column per series."""
    by_x: dict[float, dict[int, float]] = {}
    for i, s in enumerate(series):
        for x, y in s.points:
            by_x.setdefault(x, {})[i] = y
    xs = sorted(by_x)
    rows = []
    for j in _spread(len(xs), max_rows):
        x = xs[j]
        values = by_x[x]
        rows.append(
            (x_fmt(x), *(number(values[i]) if i in values else "-" for i in range(len(series))))
        )
    columns = (x_label, *(f"{s.name} ({unit})" if unit else s.name for s in series))
    return columns, tuple(rows)


def loss_curve(
    samples: Sequence[tuple[int, Mapping[str, object]]], metric: str = "loss", say: Say = as_is
) -> Chart | None:
    """A job's training curve from its (step, values) samples in step order; None when the
    metric was never reported. Values that are not finite or are negative (a worker's NaN,
    a sentinel) are skipped: they are not a loss and would flatten the rest of the curve."""
    points: list[tuple[float, float]] = []
    for step, values in samples:
        value = values.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and value >= 0:
            points.append((float(step), float(value)))
    if not points:
        return None
    ys = [y for _, y in points]
    note = say("%(n)s samples · first %(first)s · last %(last)s · min %(min)s · max %(max)s") % {
        "n": len(points),
        "first": number(ys[0]),
        "last": number(ys[-1]),
        "min": number(min(ys)),
        "max": number(max(ys)),
    }
    return line_chart(
        "curve",
        say("Loss") if metric == "loss" else metric.capitalize(),
        [Series(metric, points)],
        y_label=metric,
        unit="",
        x_label=say("step"),
        time_axis=False,
        include_zero=False,
        x_integer=True,
        x_text=lambda x: say("step %(n)s") % {"n": f"{x:.0f}"},
        note=note,
        say=say,
    )
