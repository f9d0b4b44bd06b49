"""The table model's three renderings, and the paper-layout tables built from results.json content."""

import csv
import io

import pytest

from structcore.evaluation.tables import (
    Table, ablation_table, benchmark_tables, components_per_category, main_table, ratio_stem,
)

SMALL = Table("a <title>", ["Name", "x", "y"], [["a", "1.0", ""], ["Mean", "2.5", "3"]], summary_rows=1,
              classes={(1, 1): "best"})


def test_markdown_rendering():
    assert SMALL.to_markdown() == (
        "### a <title>\n\n| Name | x | y |\n| --- | --- | --- |\n| a | 1.0 | – |\n| Mean | 2.5 | 3 |\n"
    )


def test_csv_rendering_keeps_missing_cells_empty():
    text = SMALL.to_csv()
    assert text == "Name,x,y\r\na,1.0,\r\nMean,2.5,3\r\n"
    assert list(csv.reader(io.StringIO(text))) == [SMALL.header, *SMALL.rows]


def test_html_rendering():
    page = SMALL.to_html()
    assert page.startswith("<table><caption>a &lt;title&gt;</caption><thead><tr><th>Name</th><th>x</th><th>y</th>")
    assert "<tr><th>a</th><td>1.0</td><td>&ndash;</td></tr>" in page
    assert '<tr class="mean"><th>Mean</th><td class="best">2.5</td><td>3</td></tr>' in page
    assert Table("t", ["h"], [["<b>"]]).to_html().count("&lt;b&gt;") == 1


def test_a_ragged_row_is_refused():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table("t", ["a", "b", "c"], [["1", "2"]])


def _image(base, struct, hybrid):
    return {s: {"auroc": v, "ap": v - 0.01, "f1_max": v - 0.02}
            for s, v in (("base", base), ("struct", struct), ("hybrid", hybrid))}


BLOCK = {
    "categories": {
        "bottle": {"image": _image(0.9, 0.8, 0.95), "pixel": {"auroc": 0.9, "ap": 0.5, "f1_max": 0.55, "aupro": 0.8},
                   "routing_accuracy": 1.0},
        "screw": {"image": _image(0.7, 0.75, 0.72), "pixel": None, "routing_accuracy": 0.5},
    },
    "mean": {"image": _image(0.8, 0.775, 0.835), "pixel": {"auroc": 0.9, "ap": 0.5, "f1_max": 0.55, "aupro": 0.8},
             "routing_accuracy": 0.75},
}


def test_main_table_layout_and_best_cells():
    t = main_table("routed", "0.01", BLOCK)
    assert t.title == "routed, coreset 0.01 (%; image: base/struct/hybrid, pixel once)"
    assert t.header[:4] == ["Category", "Base AUROC", "Base AP", "Base F1-max"]
    assert t.header[10:] == ["P-AUROC", "P-AP", "P-F1-max", "AUPRO", "Routing acc."]
    assert t.rows[0] == ["bottle", "90.0", "89.0", "88.0", "80.0", "79.0", "78.0", "95.0", "94.0", "93.0",
                         "90.0", "50.0", "55.0", "80.0", "100.0"]
    assert t.rows[1][10:14] == ["", "", "", ""] and t.rows[2][0] == "Mean" and t.summary_rows == 1
    assert t.classes == {(0, 7): "best", (1, 4): "best", (2, 7): "best"}
    assert "Routing acc." not in main_table("class_separated", "0.01", BLOCK).header


def _variant(per_cat: dict, base: float) -> dict:
    cats = {c: {"base": {"auroc": base}, "struct": {"auroc": 0.5}, "hybrid": {"auroc": v}} for c, v in per_cat.items()}
    hyb = sum(per_cat.values()) / len(per_cat)
    return {"categories": cats, "mean": {"base": {"auroc": base}, "struct": {"auroc": 0.5}, "hybrid": {"auroc": hyb},
                                         "hybrid_auroc_std": 0.01}}


def test_ablation_tables():
    ab = {"description": "subsets", "variants": {"std": _variant({"a": 0.9, "b": 0.8}, 0.8),
                                                 "std+topk+tv": _variant({"a": 0.95, "b": 0.85}, 0.8)}}
    t = ablation_table("components", ab, ["a", "b"])
    assert t.title == "ablation: components - subsets (%)"
    assert t.header == ["phi(S)", "a", "b", "Mean hybrid", "Std", "Mean struct", "Mean base", "Delta"]
    assert t.rows[1] == ["{sigma_S, top1%, TV}", "95.00", "85.00", "90.00", "1.00", "50.00", "80.00", "+10.00"]
    assert t.classes == {(1, 3): "best"}
    d = ablation_table("distances", ab, ["a", "b"])
    assert d.header[0] == "Distance" and "Delta" not in d.header and d.rows[0][0] == "std"
    per = components_per_category(ab, ["a", "b"])
    assert per.header == ["Category", "Base", "{sigma_S}", "{sigma_S, top1%, TV}"]
    assert per.rows == [["a", "80.00", "90.00", "95.00"], ["b", "80.00", "80.00", "85.00"],
                        ["Mean", "80.00", "85.00", "90.00"]]


def test_coreset_table_and_stems():
    variant = {"categories": {"a": {"bank_size": 10}}, "mean": {
        "base": {"auroc": 0.9}, "struct": {"auroc": 0.8}, "hybrid": {"auroc": 0.95}, "pixel": None, "fit_s": 1.25}}
    ab = {"description": "bank", "variants": {"0.01": variant}}
    t = ablation_table("coreset", ab, ["a", "b"])
    assert t.header == ["Coreset", "a bank", "b bank", "Base AUROC", "Struct AUROC", "Hybrid AUROC", "P-AUROC",
                        "AUPRO", "Fit s"]
    assert t.rows == [["0.01", "10", "", "90.00", "80.00", "95.00", "", "", "1.2"]]
    assert ratio_stem("0.01") == "coreset1" and ratio_stem("0.1") == "coreset10" and ratio_stem("size500") == "size500"
    results = {"results": {"class_separated": {"0.01": BLOCK, "0.1": BLOCK}, "routed": {"0.01": BLOCK, "0.1": BLOCK}},
               "ablations": {"coreset": ab}, "category_names": ["a", "b"]}
    assert list(benchmark_tables(results)) == ["class_separated_coreset1", "class_separated_coreset10",
                                               "routed_coreset1", "routed_coreset10", "ablation_coreset"]
