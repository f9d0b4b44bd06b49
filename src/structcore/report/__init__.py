"""Figures and the HTML report of a benchmark folder (the paper's Figures 2-4 and Tables 8-11).

:func:`write_report` reads what :mod:`structcore.evaluation` wrote (:mod:`structcore.evaluation.schema`)
and adds ``figures/*.png`` and ``report.html``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..evaluation.schema import (
    FIGURES_DIR, REPORT_FILE, ReportError, maps_file, read_maps, read_results, read_scores, scores_file,
)
from ..files import atomic_write_text
from .distributions import figure_distributions
from .figures import figure_2, figure_3, figure_base_vs_hybrid, figure_qualitative, figure_seed_spread
from .page import Figures, render

__all__ = ["ReportError", "write_report"]


def write_report(out_dir: str | Path) -> Path:
    """Write ``figures/*.png`` and ``report.html`` into a benchmark folder; returns the report's path.

    A file that cannot be read or a figure that cannot be drawn is listed in the page (and warned
    about) instead of failing the report; a missing or foreign ``results.json`` raises :class:`ReportError`.
    """
    out_dir = Path(out_dir)
    results = read_results(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    problems: list[str] = []

    def attempt(what, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # one broken input must not cost the rest of the report
            msg = f"{what}: {type(e).__name__}: {e}"
            warnings.warn(msg, stacklevel=2)
            problems.append(msg)
            return None

    def read_all(file_of, reader) -> list:
        found = []
        for name in results["category_names"]:
            f = file_of(out_dir, name)
            if f.is_file() and (read := attempt(f.relative_to(out_dir).as_posix(), reader, f)) is not None:
                found.append(read)
        return found

    scores, maps = read_all(scores_file, read_scores), read_all(maps_file, read_maps)
    decision = results["config"]["decision_score"]
    figures = Figures()
    if results.get("statistics"):
        figures.seed_spread = attempt("seed spread", figure_seed_spread, results, fig_dir / "seed_spread.png")
    if scores:
        figures.figure_2 = attempt("Figure 2", figure_2, scores, fig_dir / "figure2_base_vs_hybrid.png")
    if scores:
        figures.distributions = attempt("score distributions", figure_distributions, scores,
                                        fig_dir / "score_distributions.png", decision)
    for s in scores:
        p = fig_dir / f"base_vs_hybrid_{s.category}.png"
        if attempt(f"base vs hybrid ({s.category})", figure_base_vs_hybrid, s, p) is not None:
            figures.base_vs_hybrid[s.category] = p
    if maps:
        figures.figure_3 = attempt("Figure 3", figure_3, maps, fig_dir / "figure3_qualitative.png", decision)
    for m in maps:
        p = fig_dir / f"qualitative_{m.category}.png"
        if attempt(f"qualitative ({m.category})", figure_qualitative, m, p, decision) is not None:
            figures.qualitative[m.category] = p
    return atomic_write_text(out_dir / REPORT_FILE, render(results, out_dir, scores, figures, problems))
