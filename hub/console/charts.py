"""Charts as inline SVG, drawn by pygal on the server: the browser needs no charting script.

pygal embeds a ``<script>`` with its tooltip configuration in every chart; the console's Content-Security-Policy
would block it anyway, so it is removed and the SVG stays pure markup (the title and the values' text are in
it). Sizes come from the viewBox, so a chart shrinks with the page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pygal
from markupsafe import Markup
from pygal.style import Style

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)

_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1f2328",
    foreground_strong="#1f2328",
    foreground_subtle="#57606a",
    font_family="system-ui, sans-serif",
    title_font_size=18,
    label_font_size=14,
    major_label_font_size=14,
    legend_font_size=14,
    value_font_size=12,
    # Distinct in hue and lightness, so that series stay apart in grey too; the legend names each one.
    colors=("#0969da", "#bc4c00", "#1a7f37", "#8250df", "#57606a", "#cf222e", "#4d2d00", "#0a3069"),
)

Point = tuple[float, float | None]


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _label(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


def time_series(title: str, series: Mapping[str, Sequence[Point]], *, y_title: str = "") -> Markup | None:
    """A line chart of ``{name: [(epoch, value), ...]}`` (points in any order; None values are gaps); None
    without a single value to draw."""
    drawn = {name: sorted(points) for name, points in series.items() if any(v is not None for _, v in points)}
    if not drawn:
        return None
    chart = pygal.DateTimeLine(
        title=title,
        y_title=y_title or None,
        style=_STYLE,
        width=900,
        height=360,
        explicit_size=False,
        disable_xml_declaration=True,
        js=[],
        show_legend=len(drawn) > 1,
        legend_at_bottom=True,
        legend_at_bottom_columns=min(len(drawn), 2),
        x_value_formatter=_label,
        x_label_rotation=20,
        truncate_legend=36,
        allow_interruptions=True,
        dots_size=3,
        print_values=False,
        show_minor_x_labels=False,
        x_labels_major_count=6,
    )
    for name, points in sorted(drawn.items()):
        chart.add(name, [(_moment(at), value) for at, value in points])
    svg = _SCRIPT.sub("", chart.render(is_unicode=True))
    return Markup(svg)  # noqa: S704 - pygal's own SVG output, every text in it escaped by its XML serialiser
