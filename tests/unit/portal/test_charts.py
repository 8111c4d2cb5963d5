"""The portal's charts (``controlplane.portal.charts``) and the bucket arithmetic of its series
(``controlplane.portal.timeseries``), pure: ticks, scaling, escaping, hover titles, empty and
one-point series, loss values that are not a loss, averages and peaks per bucket."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from controlplane.portal.charts import (
    BOTTOM,
    HEIGHT,
    LEFT,
    MAX_MARKERS,
    RIGHT,
    TOP,
    WIDTH,
    Series,
    line_chart,
    loss_curve,
    nice_ticks,
    time_ticks,
)
from controlplane.portal.timeseries import (
    WINDOWS,
    Interval,
    average_per_bucket,
    peak_per_bucket,
    top_series,
)

H = 3600.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def circles(svg: str) -> list[tuple[float, float, str]]:
    """(cx, cy, hover title) of every point."""
    found = re.findall(
        r'<circle class="point" cx="([\d.]+)" cy="([\d.]+)"[^>]*><title>([^<]*)<', svg
    )
    return [(float(x), float(y), title) for x, y, title in found]


# -- ticks -----------------------------------------------------------------------------------


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 8) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 7.3) == [0, 2, 4, 6, 8]
    assert nice_ticks(1.2, 2.5) == [1.0, 1.5, 2.0, 2.5]
    assert nice_ticks(0.3, 0.75) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]


def test_integer_axes_never_step_below_one() -> None:
    assert nice_ticks(0, 1, integer=True) == [0, 1]
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]


def test_a_flat_series_gets_an_axis_around_its_value() -> None:
    ticks = nice_ticks(5, 5)
    assert ticks[0] < 5 < ticks[-1]
    assert nice_ticks(0, 0, integer=True) == [0, 1]  # idle all along: no negative GPUs
    assert nice_ticks(-2, -2)[0] < -2 < nice_ticks(-2, -2)[-1]


@given(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.integers(2, 8),
)
def test_nice_ticks_properties(low: float, span: float, count: int) -> None:
    ticks = nice_ticks(low, low + span, count)
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(s > 0 for s in steps)
    assert max(steps) - min(steps) <= 1e-6 * max(steps)  # evenly spaced
    # The ticks cover the range (to a millionth of a step: float rounding).
    assert ticks[0] <= low + 1e-6 * steps[0] and ticks[-1] >= low + span - 1e-6 * steps[0]
    assert len(ticks) <= 2 * count + 2


def test_time_ticks_fall_on_whole_utc_hours_with_the_date_at_midnight() -> None:
    ticks = time_ticks(at("2026-12-05T19:00:00"), at("2026-12-06T18:00:00"))
    assert 3 <= len(ticks) <= 7
    assert all(t.at % H == 0 for t in ticks)
    labels = [t.label for t in ticks]
    assert "12-06" in labels  # midnight shows the date
    assert all(re.fullmatch(r"\d\d:00|\d\d-\d\d", label) for label in labels)


def test_time_ticks_of_a_quarter_are_months() -> None:
    ticks = time_ticks(at("2026-10-01T00:00:00"), at("2027-01-01T00:00:00"))
    assert [t.label for t in ticks] == ["10-01", "11-01", "12-01", "01-01"]  # months
    assert ticks[1].at == at("2026-11-01T00:00:00")
    half = time_ticks(at("2026-09-15T12:00:00"), at("2027-09-15T00:00:00"))
    assert half[0].label == "10-01" and len(half) <= 6


# -- line charts -----------------------------------------------------------------------------


def test_no_points_is_no_data_yet() -> None:
    chart = line_chart("g", "GPUs in use", [Series("kr", [])], y_label="GPUs", unit="GPUs")
    assert chart.empty and str(chart.svg) == "" and "no data yet" in chart.summary
    assert line_chart("g", "GPUs", [], y_label="GPUs", unit="GPUs").empty


def test_points_scale_to_the_plot_area_with_zero_at_the_bottom() -> None:
    series = [
        Series("kr-seoul", [(at("2026-12-06T00:00:00"), 0.0), (at("2026-12-06T10:00:00"), 8.0)])
    ]
    chart = line_chart("g", "GPUs in use", series, y_label="GPUs (average per hour)", unit="GPUs")
    svg = str(chart.svg)
    (x0, y0, _), (x1, y1, title) = circles(svg)
    assert (x0, x1) == (LEFT, WIDTH - RIGHT)  # first and last point at the axis ends
    assert y0 == HEIGHT - BOTTOM and y1 == TOP  # 0 on the x axis, 8 (the top tick) at the top
    assert title == "kr-seoul · 2026-12-06 10:00 UTC: 8 GPUs"
    assert 'role="img"' in svg and 'aria-label="GPUs in use, in GPUs' in svg
    assert ">GPUs (average per hour)</text>" in svg and ">time (UTC)</text>" in svg
    assert ">00:00<" not in svg and ">12-06<" in svg  # the midnight tick is the date
    assert re.findall(r">[0-9]<", svg)[:5] == [">0<", ">2<", ">4<", ">6<", ">8<"]
    assert chart.columns == ("time (UTC)", "kr-seoul (GPUs)")
    assert chart.rows == (("2026-12-06 00:00 UTC", "0"), ("2026-12-06 10:00 UTC", "8"))


def test_one_point_is_a_dot_in_the_middle() -> None:
    chart = line_chart(
        "g",
        "Queue",
        [Series("waiting", [(at("2026-12-06T10:00:00"), 3.0)])],
        y_label="jobs",
        unit="jobs",
        integer=True,
    )
    svg = str(chart.svg)
    assert "<polyline" not in svg
    [(x, _, title)] = circles(svg)
    assert abs(x - (LEFT + (WIDTH - LEFT - RIGHT) / 2)) < 0.1
    assert title.endswith(": 3 jobs")


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    chart = line_chart(
        evil,
        evil,
        [Series(evil, [(1.0, 1.0), (2.0, 2.0)])],
        y_label=evil,
        unit="&u",
        x_label=evil,
        time_axis=False,
    )
    svg = str(chart.svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&amp;u" in svg


def test_a_limit_line_widens_the_axis_and_is_labelled() -> None:
    used = Series("used", [(0.0, 10.0), (5.0, 40.0)])
    chart = line_chart(
        "b",
        "Burn",
        [used],
        y_label="GPU-hours",
        unit="GPU-h",
        time_axis=False,
        x_domain=(0.0, 10.0),
        limit=(100.0, "budget"),
    )
    svg = str(chart.svg)
    assert "budget: 100 GPU-h" in svg and ">100<" in svg
    xs = [x for x, _, _ in circles(svg)]
    assert xs[-1] == LEFT + (WIDTH - LEFT - RIGHT) / 2  # x 5 of a 0..10 domain


def test_non_finite_points_are_skipped() -> None:
    chart = line_chart(
        "g",
        "G",
        [Series("a", [(1.0, math.nan), (2.0, 1.0), (3.0, math.inf)])],
        y_label="y",
        unit="u",
        time_axis=False,
    )
    assert len(circles(str(chart.svg))) == 1


# -- the loss curve --------------------------------------------------------------------------


def test_loss_curve_has_steps_loss_and_hover_values() -> None:
    samples = [(1, {"loss": 2.5}), (2, {"loss": 2.1}), (3, {"loss": 1.7}), (4, {"loss": 1.2})]
    chart = loss_curve(samples)
    assert chart is not None
    svg = str(chart.svg)
    assert ">step</text>" in svg and ">loss</text>" in svg
    assert re.findall(r">[0-9.]+<", svg)[:4] == [">1<", ">1.5<", ">2<", ">2.5<"]  # loss
    assert re.findall(r">[0-9.]+<", svg)[4:8] == [">1<", ">2<", ">3<", ">4<"]  # whole steps
    titles = [t for _, _, t in circles(svg)]
    assert titles[2] == "loss · step 3: 1.7"
    ys = [y for _, y, _ in circles(svg)]
    assert ys == sorted(ys)  # a falling loss goes down the chart
    assert "first 2.5" in chart.note and "last 1.2" in chart.note


def test_loss_values_that_are_not_a_loss_are_skipped() -> None:
    samples: list[tuple[int, dict[str, object]]] = [
        (1, {"loss": float("nan")}),
        (2, {"loss": -1.0}),
        (3, {"loss": float("inf")}),
        (4, {"loss": True}),
        (5, {"loss": "2.0"}),
        (6, {"loss": 1.5}),
        (7, {"accuracy": 0.9}),
    ]
    chart = loss_curve(samples)
    assert chart is not None and [t for _, _, t in circles(str(chart.svg))] == [
        "loss · step 6: 1.5"
    ]
    assert loss_curve([(1, {"loss": float("nan")}), (2, {"acc": 1.0})]) is None


def test_a_long_run_keeps_every_point_on_the_line_but_caps_the_markers() -> None:
    chart = loss_curve([(i, {"loss": 3.0 / i}) for i in range(1, 2001)])
    assert chart is not None
    svg = str(chart.svg)
    line = re.search(r'<polyline[^>]* points="([^"]+)"', svg)
    assert line is not None and len(line.group(1).split()) == 2000
    titles = [t for _, _, t in circles(svg)]
    assert len(titles) == MAX_MARKERS and titles[0].startswith("loss · step 1:")
    assert titles[-1].startswith("loss · step 2000:") and len(chart.rows) == MAX_MARKERS


# -- buckets ---------------------------------------------------------------------------------


def test_window_bounds_are_whole_buckets_ending_after_now() -> None:
    now = datetime(2026, 12, 6, 18, 40, tzinfo=UTC)
    start, end = WINDOWS["day"].bounds(now)
    assert end == at("2026-12-06T19:00:00") and start == at("2026-12-05T19:00:00")
    start, end = WINDOWS["quarter"].bounds(now)
    assert end == at("2026-12-07T00:00:00") and end - start == 91 * 86400


def test_average_per_bucket_weighs_time_and_stops_at_now() -> None:
    start, now = 0.0, 2.5 * H
    held = [Interval(0.5 * H, 1.5 * H, 8), Interval(1.0 * H, now, 4)]  # the second still runs
    assert average_per_bucket(held, start, int(H), 4, now) == [4.0, 8.0, 4.0]


def test_average_clips_intervals_to_the_window() -> None:
    held = [Interval(-10 * H, 10 * H, 2)]
    assert average_per_bucket(held, 0.0, int(H), 3, 3 * H) == [2.0, 2.0, 2.0]


def test_peak_per_bucket_counts_overlaps_not_hand_overs() -> None:
    waiting = [
        Interval(0.2 * H, 0.6 * H),
        Interval(0.5 * H, 0.7 * H),
        Interval(1.2 * H, 1.4 * H),
        Interval(1.4 * H, 1.8 * H),
    ]  # the last two hand over at 1.4 h: never both
    assert peak_per_bucket(waiting, 0.0, int(H), 3, 2.5 * H) == [2.0, 1.0, 0.0]
    assert peak_per_bucket([Interval(-H, 5 * H)], 0.0, int(H), 2, 2 * H) == [1.0, 1.0]


def test_many_members_become_the_largest_and_others() -> None:
    members = [Series(f"m{i:02d}", [(0.0, float(i)), (1.0, float(i))]) for i in range(10)]
    lines = top_series(members, most=4)
    assert [s.name for s in lines] == ["m07", "m08", "m09", "7 others"]
    assert lines[-1].points == [(0.0, 21.0), (1.0, 21.0)]  # 0 + 1 + ... + 6
    assert top_series(members[:4], most=4) == members[:4]
