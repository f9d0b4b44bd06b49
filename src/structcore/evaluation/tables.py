"""One table model, rendered to Markdown, CSV and HTML, and the paper-layout tables of a results.json.

:func:`benchmark_tables` builds the tables once from ``results.json``'s content; the benchmark writes
them to ``tables/<stem>.md|csv`` and ``tables.md``, the report puts the same tables in ``report.html``.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field

from .schema import IMAGE_KEYS, PIXEL_KEYS, SCORES, SETTINGS

COMPONENT_NAMES = {"std": "sigma_S", "topk": "top1%", "tv": "TV"}
FIRST_COLUMN = {"components": "phi(S)", "distances": "Distance", "lambda": "lambda", "layers": "Blocks",
                "calibration": "Calibration", "descriptor_on": "phi on"}
MISSING_MD = "–"


@dataclass
class Table:
    """A titled grid of text cells; ``""`` is a missing value. The first column labels the rows.

    ``summary_rows``: how many last rows summarise the others (a mean); ``classes``: an HTML class for
    some cells by (row, column), e.g. ``"best"`` (bold). Both only change the HTML.
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    summary_rows: int = 0
    classes: dict[tuple[int, int], str] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table {self.title!r}: a row has {len(row)} cells for {len(self.header)} columns")

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "| " + " | ".join(["---"] * len(self.header)) + " |"]
        lines += ["| " + " | ".join(c if c != "" else MISSING_MD for c in r) + " |" for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        return buf.getvalue()

    def to_html(self) -> str:
        e = html.escape
        out = [f"<table><caption>{e(self.title)}</caption><thead><tr>"]
        out += [f"<th>{e(h)}</th>" for h in self.header]
        out.append("</tr></thead><tbody>")
        first_summary = len(self.rows) - self.summary_rows
        for i, row in enumerate(self.rows):
            out.append('<tr class="mean">' if i >= first_summary else "<tr>")
            for j, cell in enumerate(row):
                tag = "th" if j == 0 else "td"
                cls = self.classes.get((i, j))
                attr = f' class="{cls}"' if cls else ""
                out.append(f"<{tag}{attr}>{e(cell) if cell != '' else '&ndash;'}</{tag}>")
            out.append("</tr>")
        out.append("</tbody></table>")
        if self.note:
            out.append(f'<p class="note">{e(self.note)}</p>')
        return "".join(out)


PIXEL_COLUMNS = ("P-AUROC", "P-AP", "P-F1-max", "AUPRO")  # headers of PIXEL_KEYS


def percent(v: float | None, digits: int = 1) -> str:
    """A fraction as percent text; ``""`` for a missing value."""
    return "" if v is None else f"{100 * v:.{digits}f}"


def _best(table_rows: list[list[str]], columns: list[int], rows: range | None = None) -> dict[tuple[int, int], str]:
    """``"best"`` for the cells holding the largest number of ``columns``, per row (``rows=None``) or
    over ``rows`` per column."""
    def mark(cells: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
        values = {c: float(table_rows[c[0]][c[1]].split()[0]) for c in cells if table_rows[c[0]][c[1]] != ""}  # "mean ± std"
        top = max(values.values(), default=None)
        return {c: "best" for c, v in values.items() if v == top}

    out: dict[tuple[int, int], str] = {}
    if rows is None:
        for i in range(len(table_rows)):
            out.update(mark([(i, j) for j in columns]))
    else:
        for j in columns:
            out.update(mark([(i, j) for i in rows]))
    return out


def ratio_stem(key: str) -> str:
    """File-name part of a coreset key: ``"0.01"`` -> ``coreset1``, ``"size500"`` stays."""
    return key if key.startswith("size") else f"coreset{float(key) * 100:g}"


def components_label(label: str) -> str:
    """``"std+topk"`` -> ``{sigma_S, top1%}``."""
    return "{" + ", ".join(COMPONENT_NAMES[c] for c in label.split("+")) + "}"


def spread(summary: dict | None, digits: int = 1, scale: float = 100.0, sign: bool = False) -> str:
    """``mean ± std`` of a seed summary in percent (``mean`` alone for one seed); ``""`` if missing."""
    if summary is None:
        return ""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = f.format(scale * summary["mean"])
    return text if summary["std"] is None else f"{text} ± {scale * summary['std']:.{digits}f}"


SIGNIFICANCE_MARKS = {"gain": "+*", "loss": "-*", "none": ""}
SEEDS_NOTE = (
    "Mean ± std over the seeds (each seed refits projection, coreset and routing). [low, high]: the 95% "
    "stratified bootstrap interval of the hybrid I-AUROC over the test images, averaged over seeds. "
    "+* / -*: hybrid significantly above / below base by DeLong's test (p < 0.05) in most seeds; no mark: "
    "no significant difference; p: the median over seeds. Full frame: pixel metrics against the original-"
    "resolution masks, the border outside the crop (not seen) left out."
)


def seed_table(key: str, block: dict, seeds: list[int]) -> Table:
    """Base / struct / hybrid I-AUROC and pixel metrics over seeds, with intervals and significance marks."""
    header = ["Category", "Base I-AUROC", "Struct I-AUROC", "Hybrid I-AUROC", "Hybrid 95% CI", "Hybrid - base",
              "DeLong p", "Hybrid I-AP", "Hybrid I-F1", "P-AUROC", "P-AP", "P-F1-max", "AUPRO",
              "P-AUROC full", "P-AP full", "P-F1-max full", "AUPRO full", "Not seen"]
    rows = []
    for name, c in [*block["categories"].items(), ("Mean", block["mean"])]:
        im, px, full = c["image"], c["pixel"], c["pixel_full"]
        ci = c.get("auroc_ci95")
        mark = SIGNIFICANCE_MARKS.get(c.get("significance") or "none", "")
        p = c.get("delong_p")
        rows.append([
            name, spread(im["base"]["auroc"]), spread(im["struct"]["auroc"]),
            f"{spread(im['hybrid']['auroc'])} {mark}".strip(),
            f"[{100 * ci['hybrid'][0]:.1f}, {100 * ci['hybrid'][1]:.1f}]" if ci else "",
            spread(c["hybrid_minus_base"], sign=True), "" if p is None else f"{p:.3g}",
            spread(im["hybrid"]["ap"]), spread(im["hybrid"]["f1_max"]),
            *[spread(px[k]) if px else "" for k in PIXEL_KEYS],
            *[spread(full[k]) if full else "" for k in PIXEL_KEYS],
            percent(full["not_seen"]["mean"]) if full else "",
        ])
    title = f"class-separated, coreset {key}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}) (%)"
    return Table(title, header, rows, summary_rows=1, note=SEEDS_NOTE)


# -- the paper's tables ---------------------------------------------------------------------------
def main_table(setting: str, key: str, block: dict) -> Table:
    """Paper Tables 8-11: base / struct / hybrid (AUROC, AP, F1-max), then pixel metrics once."""
    routed = setting == "routed"
    header = ["Category"]
    for title in ("Base", "Struct", "Hybrid"):
        header += [f"{title} AUROC", f"{title} AP", f"{title} F1-max"]
    header += list(PIXEL_COLUMNS)
    if routed:
        header.append("Routing acc.")
    rows = []
    for name, r in [*block["categories"].items(), ("Mean", block["mean"])]:
        row = [name]
        for s in SCORES:
            row += [percent(r["image"][s][k]) for k in IMAGE_KEYS]
        px = r["pixel"]
        row += [percent(px[k]) if px else "" for k in PIXEL_KEYS]
        if routed:
            row.append(percent(r.get("routing_accuracy")))
        rows.append(row)
    title = f"{setting.replace('_', '-')}, coreset {key} (%; image: base/struct/hybrid, pixel once)"
    auroc_columns = [1 + 3 * i for i in range(len(SCORES))]
    return Table(title, header, rows, summary_rows=1, classes=_best(rows, auroc_columns))


def ablation_table(name: str, ab: dict, categories: list[str]) -> Table:
    """Rows = variants; columns = hybrid I-AUROC per category, then means (percent, 2 decimals)."""
    title = f"ablation: {name} - {ab['description']} (%)"
    if name == "coreset":
        header = ["Coreset", *[f"{c} bank" for c in categories], "Base AUROC", "Struct AUROC", "Hybrid AUROC",
                  "P-AUROC", "AUPRO", "Fit s"]
        rows = []
        for key, v in ab["variants"].items():
            m = v["mean"]
            rows.append([key, *[str(v["categories"].get(c, {}).get("bank_size", "")) for c in categories],
                         percent(m["base"]["auroc"], 2), percent(m["struct"]["auroc"], 2),
                         percent(m["hybrid"]["auroc"], 2),
                         percent(m["pixel"]["auroc"], 2) if m["pixel"] else "",
                         percent(m["pixel"]["aupro"], 2) if m["pixel"] else "",
                         f"{m['fit_s']:.1f}" if m.get("fit_s") is not None else ""])
        return Table(title, header, rows, classes=_best(rows, [len(categories) + 3], range(len(rows))))
    header = [FIRST_COLUMN.get(name, "Variant"), *categories, "Mean hybrid", "Std", "Mean struct", "Mean base"]
    if name == "components":
        header.append("Delta")
    with_pixel = any("pixel" in v["mean"] for v in ab["variants"].values())
    if with_pixel:
        header += [f"Mean {c}" for c in PIXEL_COLUMNS]
    rows = []
    for label, v in ab["variants"].items():
        cats, m, seeds = v["categories"], v["mean"], v.get("seeds")
        if seeds:  # mean ± std over the seeds
            cells = [spread(seeds["categories"].get(c, {}).get("hybrid"), 2) for c in categories]
            means = [spread(seeds["mean"][s], 2) for s in ("hybrid", "struct", "base")]
        else:
            cells = [percent(cats.get(c, {}).get("hybrid", {}).get("auroc"), 2) for c in categories]
            means = [percent(m[s]["auroc"], 2) for s in ("hybrid", "struct", "base")]
        row = [components_label(label) if name == "components" else label, *cells, means[0],
               percent(m.get("hybrid_auroc_std"), 2), *means[1:]]
        if name == "components":
            hb = (seeds["mean"]["hybrid"]["mean"], seeds["mean"]["base"]["mean"]) if seeds else (
                m["hybrid"]["auroc"], m["base"]["auroc"])
            row.append("" if None in hb else f"{100 * (hb[0] - hb[1]):+.2f}")
        if with_pixel:
            px = seeds["mean"].get("pixel") if seeds else m.get("pixel")
            row += [(spread(px[k], 2) if seeds else percent(px[k], 2)) if px else "" for k in PIXEL_KEYS]
        rows.append(row)
    seeds = ab.get("seeds")
    note = f"Cells: mean ± std over seeds {', '.join(map(str, seeds))}; Std: over categories, first seed." if seeds else ""
    return Table(title, header, rows, classes=_best(rows, [len(categories) + 1], range(len(rows))), note=note)


def components_per_category(ab: dict, categories: list[str]) -> Table:
    """Paper Table 7: hybrid I-AUROC of every component subset, per category."""
    labels = list(ab["variants"])
    header = ["Category", "Base", *[components_label(lab) for lab in labels]]
    rows = []
    for c in [*categories, "Mean"]:
        def pick(v, c=c):
            return v["mean"] if c == "Mean" else v["categories"].get(c, {})

        first = pick(ab["variants"][labels[0]])
        rows.append([c, percent(first.get("base", {}).get("auroc"), 2),
                     *[percent(pick(ab["variants"][lab]).get("hybrid", {}).get("auroc"), 2) for lab in labels]])
    return Table("ablation: components per category (hybrid I-AUROC, %; paper Table 7)", header, rows,
                 summary_rows=1, classes=_best(rows, list(range(1, len(header)))))


def _rate_cell(r: dict) -> str:
    low, high = r["ci95"]
    return f"{r['count']}/{r['n']} ({percent(r['rate'])}; {percent(low)}-{percent(high)})" if r["n"] else ""


def decision_table(key: str, block: dict, score: str) -> Table:
    """Good test images rejected and defective ones accepted at each threshold calibration's thresholds,
    per category and pooled (count/n, %, 95% Wilson interval)."""
    methods = list(block["mean"]["decisions"])
    header = ["Category"] + [f"{m}: {kind}" for m in methods for kind in ("good rejected", "defective accepted")]
    rows = []
    for name, r in [*block["categories"].items(), ("Pooled", block["mean"])]:
        rows.append([name] + [_rate_cell(r["decisions"][m][score][kind]) for m in methods
                              for kind in ("good_rejected", "defective_accepted")])
    title = f"decisions at the stored thresholds, {score} score, coreset {key} (count/n, %, 95% Wilson interval)"
    return Table(title, header, rows, summary_rows=1)


def benchmark_tables(results: dict) -> dict[str, Table]:
    """Every table of a results.json by file stem, in the order of ``tables.md``."""
    tables: dict[str, Table] = {}
    for setting in SETTINGS:
        for key, block in results["results"][setting].items():
            tables[f"{setting}_{ratio_stem(key)}"] = main_table(setting, key, block)
    for key, block in results["results"]["class_separated"].items():
        if block["mean"].get("decisions"):
            score = results["config"]["decision_score"]
            tables[f"decisions_{ratio_stem(key)}"] = decision_table(key, block, score)
    for key, block in results.get("statistics", {}).items():
        tables[f"seeds_{ratio_stem(key)}"] = seed_table(key, block, results["seeds"])
    for name, ab in results["ablations"].items():
        tables[f"ablation_{name}"] = ablation_table(name, ab, results["category_names"])
        if name == "components":
            tables["ablation_components_per_category"] = components_per_category(ab, results["category_names"])
    return tables
