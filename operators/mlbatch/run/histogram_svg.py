"""A run's prediction histogram as a small SVG file for MLflow (its artifact view shows SVG images).

Written as text, not drawn with matplotlib: importing and rendering with matplotlib cost ~0.5 s of
each `record` step (bench/results.md, whole run), for 40 bars.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 700, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50  # margins around the plot area, in px


def histogram_svg(counts: list[int], edges: list[float], title: str, x_label: str) -> str:
    """Bars over [edges[i], edges[i+1]) with heights counts[i]; axes labelled with the range and the
    largest count (one `<rect class="bar">` per bin, a `<title>` on each for the exact figures)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"a histogram needs one more edge than counts; got {len(counts)} counts, {len(edges)} edges")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    low, high, peak = edges[0], edges[-1], max(max(counts), 1)
    span = (high - low) or 1.0

    def x(value: float) -> float:
        return LEFT + (value - low) / span * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
             f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#333"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#333"/>']
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        height = count / peak * plot_h
        parts.append(f'<rect class="bar" x="{x(a):.2f}" y="{TOP + plot_h - height:.2f}" '
                     f'width="{max(x(b) - x(a) - 1, 0.5):.2f}" height="{height:.2f}" fill="#1f77b4">'
                     f'<title>[{a:.4g}, {b:.4g}): {count:,} rows</title></rect>')
    bottom = TOP + plot_h + 18
    parts += [f'<text x="{LEFT}" y="{bottom}" text-anchor="middle">{low:.4g}</text>',
              f'<text x="{LEFT + plot_w}" y="{bottom}" text-anchor="middle">{high:.4g}</text>',
              f'<text x="{LEFT + plot_w / 2}" y="{bottom + 18}" text-anchor="middle">{escape(x_label)}</text>',
              f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{peak:,}</text>',
              f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
              f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle" '
              f'transform="rotate(-90 16 {TOP + plot_h / 2})">rows</text>',
              "</svg>"]
    return "\n".join(parts) + "\n"
