"""Shared bits of the examples: argument parsing and where figures go."""

from __future__ import annotations

import argparse
import os


def parser(doc: str, *, figures: bool = True) -> argparse.ArgumentParser:
    """The examples' flags; ``--out`` only for those that write figures."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    if figures:
        p.add_argument("--out", default="figures", help="folder for the PNG figures")
    p.add_argument("--tiny", action="store_true", help="a very small run (used by the tests)")
    return p


def figure_path(out: str, name: str) -> str:
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, name)


def save_figure(fig, out: str, name: str, dpi: int = 80) -> str:
    """Lay out ``fig``, write it as ``out/name`` and say where."""
    fig.tight_layout()
    path = figure_path(out, name)
    fig.savefig(path, dpi=dpi)
    print(f"figure: {path}")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
