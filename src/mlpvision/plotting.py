"""What every plot of the project shares: one colour per family, and point labels placed so that none overlap.

The colours are fixed per family (not drawn from matplotlib's cycle in plotting order), so a family has the same
colour in ``bench.png``, the accuracy / MACs figure of docs/models.md and the throughput / input-size figure of
docs/benchmarks.md, whatever else a plot shows. matplotlib is imported only inside :func:`place_labels`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ['FAMILY_COLOURS', 'BASELINE_COLOUR', 'family_colour', 'place_labels', 'overlapping_labels']

# matplotlib's tab10 colours by name, one per family; grey is kept for the timm baselines
FAMILY_COLOURS = {
    'as_mlp': 'tab:blue',
    'cycle_mlp': 'tab:orange',
    'hire_mlp': 'tab:green',
    'repmlp': 'tab:red',
    'repmlpnet': 'tab:purple',
    'resmlp': 'tab:brown',
    'strip_mlp': 'tab:pink',
    'wave_mlp': 'tab:olive',
}
BASELINE_COLOUR = 'tab:gray'
_OTHER_COLOUR = 'tab:cyan'  # a family not in the table (a new one): visible, and distinct from the others


def family_colour(family: str | None) -> str:
    """The colour of ``family`` (a :func:`mlpvision.model_family` name); the baselines' grey for None."""
    if family is None:
        return BASELINE_COLOUR
    return FAMILY_COLOURS.get(family, _OTHER_COLOUR)


def _candidates(step: float = 4.0, rings: int = 6) -> list[tuple[float, float, str, str]]:
    """Offsets in points (dx, dy, ha, va) around a point, nearest first: right-above, right-below, left-above,
    left-below, above, below, right, left, then the same eight farther out."""
    out = []
    for k in range(1, rings + 1):
        d = step * k
        out += [(d, d / 2, 'left', 'bottom'), (d, -d / 2, 'left', 'top'), (-d, d / 2, 'right', 'bottom'),
                (-d, -d / 2, 'right', 'top'), (0, d + 2, 'center', 'bottom'), (0, -d - 2, 'center', 'top'),
                (d + 2, 0, 'left', 'center'), (-d - 2, 0, 'right', 'center')]
    return out


def place_labels(ax: Any, xy: Sequence[tuple[float, float]], labels: Sequence[str], fontsize: float = 7,
                 colours: Sequence[str] | None = None, marker_pt: float = 3.0,
                 vlines: Sequence[float] = ()) -> list[Any]:
    """Annotate each point ``xy[i]`` (data coordinates) with ``labels[i]``, each label at the first of
    :func:`_candidates` where it overlaps no label placed before it, no other point's marker (a square of
    ``marker_pt`` points around it), no legend and no vertical line at an x of ``vlines``, and stays inside the
    axes. A label with no free place goes where it
    overlaps least. Far labels get a thin leader line to their point.

    Call it last, after the limits, legend and layout are final (``fig.tight_layout()`` before, not after: the labels
    are offsets in points from their points, so a later change of the axes' size moves points but not text sizes).
    Returns the ``Annotation`` artists, in the order of ``labels``.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    pts = ax.transData.transform(list(xy)) if len(xy) else []
    r = marker_pt * scale
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in pts]
    legend = ax.get_legend()
    placed: list[Any] = [legend.get_window_extent(renderer)] if legend is not None else []
    for x in vlines:  # a line as a box 2 px wide over the axes' height
        lx = ax.transData.transform((x, 0))[0]
        placed.append(Bbox.from_extents(lx - 1, axes_box.y0, lx + 1, axes_box.y1))

    def cost(box: Any, own: int) -> float:
        area = sum(_overlap(box, b) for b in placed)
        area += sum(_overlap(box, m) for j, m in enumerate(markers) if j != own)
        inside = _overlap(box, axes_box)
        return area + (box.width * box.height - inside)  # the part outside the axes counts as overlap

    texts = []
    for i, label in enumerate(labels):
        best = None
        for dx, dy, ha, va in _candidates():
            far = abs(dx) > 8 or abs(dy) > 10
            t = ax.annotate(label, xy[i], xytext=(dx, dy), textcoords='offset points', ha=ha, va=va,
                            fontsize=fontsize, color=colours[i] if colours else None,
                            arrowprops=dict(arrowstyle='-', lw=0.5, color='0.5', shrinkA=0, shrinkB=2)
                            if far else None)
            t.update_positions(renderer)  # where the offset puts the text (set only at draw time otherwise)
            box = Text.get_window_extent(t, renderer)  # the text alone, not its leader line
            c = cost(box, i)
            if best is None or c < best[0]:
                if best is not None:
                    best[1].remove()
                best = (c, t, box)
            else:
                t.remove()
            if c == 0:
                break
        texts.append(best[1])
        placed.append(best[2])
    return texts


def _overlap(a: Any, b: Any) -> float:
    """The area two display boxes share (0 when they do not meet)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def overlapping_labels(texts: Sequence[Any]) -> list[tuple[str, str]]:
    """The pairs of ``texts`` (matplotlib text artists of one figure) whose drawn boxes overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    if not texts:
        return []
    fig = texts[0].figure
    canvas = fig.canvas if hasattr(fig.canvas, 'get_renderer') else FigureCanvasAgg(fig)  # a closed figure has none
    renderer = canvas.get_renderer()
    for t in texts:
        if hasattr(t, 'update_positions'):
            t.update_positions(renderer)
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if _overlap(ba, bb) > 0]
