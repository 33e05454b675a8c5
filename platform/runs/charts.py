"""Line charts as inline SVG, drawn on the server: no JavaScript library, nothing from a network.

Every label is escaped; the markup is safe to embed in a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from runs.models import Round

WIDTH = 560
HEIGHT = 240
MARGIN_LEFT = 48
MARGIN_RIGHT = 130
MARGIN_TOP = 16
MARGIN_BOTTOM = 36
# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
METRICS = (("roc_auc", "AUC"), ("accuracy", "Accuracy"), ("loss", "Loss"))


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]


def line_chart(*, title: str, series: Sequence[Series], x_label: str, y_label: str) -> str:
    """An SVG line chart of `series` (x ascending), or a short note when there is no data."""
    points = [point for s in series for point in s.points]
    if not points:
        return f'<p class="chart-empty">{escape(title)}: no data yet.</p>'
    x_min, x_max = _span(p[0] for p in points)
    y_min, y_max = _span(p[1] for p in points)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x_min) / (x_max - x_min) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y_min) / (y_max - y_min) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#bbb"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = y_min + fraction * (y_max - y_min)
        y = sy(value)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#eee"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{_tick(value)}</text>"
        )
    for x in sorted({p[0] for p in points}):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{MARGIN_TOP + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{_tick(x)}</text>'
        )
    parts.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
        f'<text x="12" y="{MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    for index, s in enumerate(series):
        if not s.points:
            continue
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        parts.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
            f"<title>{escape(s.label)}, {escape(x_label.lower())} {_tick(x)}: {y:.4g}</title>"
            "</circle>"
            for x, y in s.points
        )
        legend_y = MARGIN_TOP + 12 + index * 16
        parts.append(
            f'<rect x="{WIDTH - MARGIN_RIGHT + 12}" y="{legend_y - 9}" width="10" height="10" '
            f'fill="{colour}"/><text x="{WIDTH - MARGIN_RIGHT + 26}" y="{legend_y}" '
            f'font-size="12">{escape(s.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _span(values: Iterable[float]) -> tuple[float, float]:
    """The data's range, widened when it is a single value so that it can be scaled."""
    collected = list(values)
    low, high = min(collected), max(collected)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def _tick(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def metrics_chart(rounds: Sequence[Round]) -> str:
    """The weighted evaluation metrics of each round."""
    return line_chart(
        title="Metrics by round",
        series=[
            Series(label, _points((r.number, r.metrics.get(key)) for r in rounds))
            for key, label in METRICS
        ],
        x_label="Round",
        y_label="Value",
    )


def epsilon_chart(rounds: Sequence[Round]) -> str:
    """Each hospital's cumulative ε after each round it took part in."""
    by_hospital: dict[str, list[tuple[float, float]]] = {}
    for round_ in rounds:
        for hospital in round_.hospitals.all():
            by_hospital.setdefault(hospital.hospital, []).append(
                (float(round_.number), hospital.epsilon)
            )
    return line_chart(
        title="Privacy spent (ε) per hospital by round",
        series=[Series(name, points) for name, points in sorted(by_hospital.items())],
        x_label="Round",
        y_label="ε",
    )


def _points(pairs: Iterable[tuple[int, object]]) -> list[tuple[float, float]]:
    return [
        (float(x), float(y))
        for x, y in pairs
        if isinstance(y, int | float) and not isinstance(y, bool)
    ]
