"""The README's results table from one or more ``structcore benchmark --seeds ...`` folders.

    python benchmarks/seed_table.py runs/seeds_1pct runs/seeds_10pct

One row per category and coreset setting: mean ± std over seeds (percent), the significance mark of
hybrid against base (+* gain, -* loss by DeLong's test, p < 0.05 in most seeds), the stratified
bootstrap interval of the hybrid I-AUROC (averaged over seeds), DeLong's median p, and the pixel metrics
in the crop frame and in the original frame.
"""

import argparse
from pathlib import Path

from structcore.evaluation.schema import read_results
from structcore.evaluation.tables import SIGNIFICANCE_MARKS, spread


def rows(results: dict) -> list[str]:
    out = []
    n = len(results["seeds"])
    for key, block in results["statistics"].items():
        for name, c in block["categories"].items():
            im, px, full = c["image"], c["pixel"], c["pixel_full"]
            ci, p, sig = c["auroc_ci95"], c["delong_p"], c["significant_seeds"]
            mark = SIGNIFICANCE_MARKS[c["significance"]]
            cells = [
                f"{name}, {float(key) * 100:g}%", spread(im["base"]["auroc"]), spread(im["struct"]["auroc"]),
                f"**{spread(im['hybrid']['auroc'])}** {mark}".strip(),
                f"[{100 * ci['hybrid'][0]:.1f}, {100 * ci['hybrid'][1]:.1f}]",
                spread(c["hybrid_minus_base"], sign=True),
                f"{p:.2g} ({sig['gain']}+/{sig['loss']}- of {n})",
                *[spread(px[k]) if px else "-" for k in ("auroc", "ap", "aupro")],
                *[spread(full[k]) if full else "-" for k in ("auroc", "ap", "aupro")],
            ]
            out.append("| " + " | ".join(cells) + " |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    a = ap.parse_args()
    header = ["category, coreset", "base I-AUROC", "struct I-AUROC", "hybrid I-AUROC", "hybrid 95% CI",
              "hybrid - base", "DeLong p (sig. seeds)", "P-AUROC", "P-AP", "AUPRO", "P-AUROC full", "P-AP full",
              "AUPRO full"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for folder in a.folders:
        results = read_results(Path(folder))
        lines += rows(results)
        t = results["timings"]
        print(f"{folder}: seeds {results['seeds']}, wall {t['wall_s']:.0f} s (features {t['feature_extraction_s']:.0f} s, "
              f"fit {t['fit_s']:.0f} s, scoring {t['scoring_s']:.0f} s, metrics {t['metrics_s']:.0f} s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
