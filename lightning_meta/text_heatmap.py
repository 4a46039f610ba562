"""A document's bytes coloured one by one by a value (e.g. the bits a learned updater saved against static reading),
as an HTML page and as a PNG.

Blue is a positive value (bits saved), red a negative one (bits lost), white zero; the colour saturates at
``limit`` (default: the 99th percentile of the absolute values). Bytes that are not printable ASCII show as ``·``
(newlines break the line; in the PNG, tabs show as a space).

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> text, saved = b"the cat sat\\non the mat", torch.linspace(-1, 1, 22)
    >>> folder = Path(tempfile.mkdtemp())
    >>> page = write_text_heatmap_html(text, saved, folder / "saved.html", "bits saved")
    >>> '<span style="background:' in page.read_text()
    True
    >>> plot_text_heatmap(text, saved, folder / "saved.png", "bits saved").stat().st_size > 0
    True
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import html
from pathlib import Path

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

COLOURS = "RdBu"
"""A diverging colour map: red for negative values, blue for positive ones."""


def _colours(values: Tensor, limit: float | None) -> tuple[list[str], float]:
    """One hex colour a value, and the value at which the colour saturates."""
    values = values.detach().double().cpu()
    if limit is None:
        limit = float(values.abs().quantile(0.99)) if len(values) else 1.0
    limit = limit if limit > 0 else 1.0
    colour_map, norm = colormaps[COLOURS], Normalize(-limit, limit, clip=True)
    return [to_hex(colour_map(norm(float(v)))) for v in values], limit


def _shown(byte: int) -> str:
    return chr(byte) if 32 <= byte < 127 else "·"


def write_text_heatmap_html(
    text: bytes, values: Tensor, path: Path, title: str, limit: float | None = None
) -> Path:
    """An HTML page of ``text`` with each byte's background coloured by ``values`` (one per byte); hovering a byte
    shows its value."""
    if len(text) != len(values):
        raise ValueError(f"text_heatmap: {len(text)} bytes but {len(values)} values: give one value per byte")
    colours, limit = _colours(values, limit)
    spans = []
    for byte, colour, value in zip(text, colours, values.tolist()):
        shown = "\n" if byte == 10 else html.escape(_shown(byte))
        spans.append(f'<span style="background:{colour}" title="{value:+.2f}">{shown}</span>')
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>\n"
        f"<h3>{html.escape(title)}</h3>\n<p>blue: positive, red: negative, saturated at &plusmn;{limit:.2f}; "
        "hover a byte for its value</p>\n"
        f"<pre style='font-size:13px; line-height:1.35'>{''.join(spans)}</pre>\n</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def plot_text_heatmap(
    text: bytes, values: Tensor, path: Path, title: str, limit: float | None = None, columns: int = 100,
    max_lines: int = 60,
) -> Path:
    """A PNG of ``text`` (wrapped at ``columns``, at most ``max_lines`` lines) with each byte on a cell coloured by
    its value, and a colour bar."""
    if len(text) != len(values):
        raise ValueError(f"text_heatmap: {len(text)} bytes but {len(values)} values: give one value per byte")
    colours, limit = _colours(values, limit)
    cells: list[list[tuple[str, str]]] = [[]]
    for byte, colour in zip(text, colours):
        if byte == 10 or len(cells[-1]) == columns:
            if len(cells) == max_lines:
                break
            cells.append([])
        if byte != 10:
            cells[-1].append((" " if byte == 9 else _shown(byte), colour))
    figure = Figure(figsize=(columns * 0.1 + 1.5, len(cells) * 0.17 + 1.0), layout="constrained")
    axis = figure.subplots()
    for row, line in enumerate(cells):
        for column, (char, colour) in enumerate(line):
            axis.add_patch(Rectangle((column, row), 1, 1, facecolor=colour, edgecolor="none"))
            axis.text(column + 0.5, row + 0.5, char, ha="center", va="center", family="monospace", fontsize=7)
    axis.set_xlim(0, columns)
    axis.set_ylim(len(cells), 0)
    axis.set_axis_off()
    mappable = ScalarMappable(Normalize(-limit, limit), colormaps[COLOURS])
    scale = figure.colorbar(mappable, ax=axis, fraction=0.02, pad=0.01, label="bits (saturated)")
    scale.ax.tick_params(labelsize=7)
    axis.set_title(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
