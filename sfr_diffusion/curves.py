"""FA and RA against iteration as a small PNG, drawn with Pillow (a core dependency; no plotting library needed)."""

from __future__ import annotations

from PIL import Image, ImageDraw

# metric → colour; FA (red) should fall to 0 and stay there, RA (blue) should stay at the base model's level.
CURVE_COLOURS = {"FA": (214, 39, 40), "FA_paraphrases": (255, 127, 14), "RA": (31, 119, 180)}


def draw_curve(history: list[dict], *, width: int = 480, height: int = 300) -> Image.Image:
    """A line per metric of `history` (``[{"step": ..., "FA": ..., "RA": ...}, ...]``), on a 0–1 scale."""
    left, right, top, bottom = 44, 16, 30, 40  # the legend sits in the top margin, above the 1.0 line
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    steps = [record["step"] for record in history]
    first, last = min(steps), max(steps)
    span = max(last - first, 1)

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (step - first) / span * (width - left - right)
        y = top + (1 - value) * (height - top - bottom)
        return x, y

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = point(first, tick)[1]
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((6, y - 6), f"{tick:.2f}", fill="black")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    draw.text((left, height - bottom + 6), str(first), fill="black")
    draw.text((width - right - 6 * len(str(last)), height - bottom + 6), str(last), fill="black")
    draw.text((width // 2 - 24, height - 16), "iteration", fill="black")
    legend_x = left + 8
    for metric, colour in CURVE_COLOURS.items():
        points = [point(r["step"], r[metric]) for r in history if r.get(metric) is not None]
        if not points:
            continue
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([(x - 2, y - 2), (x + 2, y + 2)], fill=colour)
        draw.text((legend_x, 8), metric, fill=colour)
        legend_x += 8 * len(metric) + 16
    return image
