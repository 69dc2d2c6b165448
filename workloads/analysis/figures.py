"""How every report saves and shows a figure: PNG at print resolution for the HTML page, SVG beside it for a paper."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 200  # print resolution; the SVG beside each PNG is the one to put in a paper


def save_figure(fig: Any, path: Path) -> Path:
    """The figure as PNG (for the HTML report) and as SVG beside it (vector, for print)."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


def figure_html(path: Path, alt: str = "") -> str:
    """The PNG inline (the report stays one file), with a link to its SVG for print."""
    svg = path.with_suffix(".svg")
    link = f'<p class="fig">Figure: {html.escape(alt or path.stem)}. <a href="{svg.name}">SVG for print</a></p>' if svg.is_file() else ""
    width_px = int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's width, drawn at 96 px per inch
    return (f'<figure><img alt="{html.escape(alt or path.stem)}" width="{round(width_px * 96 / DPI)}" '
            f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">{link}</figure>')
