"""Writers of a benchmark folder: results.json, scores/<cat>.json, maps/<cat>.npz, tables/*.

Every file is written atomically (:mod:`structcore.files`), with the mode a plain ``open()`` gives.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data import Category
from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .schema import ALL_TABLES_FILE, RESULTS_FILE, TABLES_DIR, MapFile, ScoreFile, maps_file, scores_file
from .tables import benchmark_tables


def write_results(folder: Path, results: dict) -> Path:
    return atomic_write_json(Path(folder) / RESULTS_FILE, results)


def write_scores(folder: Path, scores: ScoreFile) -> Path:
    return atomic_write_json(scores_file(folder, scores.category), scores.to_json())


def write_maps(folder: Path, maps: MapFile) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **maps.arrays())
    return atomic_write_bytes(maps_file(folder, maps.category), buf.getvalue())


def write_tables(folder: Path, results: dict) -> list[Path]:
    """``tables/<stem>.md`` and ``.csv`` of every :func:`~.tables.benchmark_tables` table, and ``tables.md``."""
    folder = Path(folder)
    written, texts = [], []
    for stem, table in benchmark_tables(results).items():
        text = table.to_markdown()
        written.append(atomic_write_text(folder / TABLES_DIR / f"{stem}.csv", table.to_csv()))
        written.append(atomic_write_text(folder / TABLES_DIR / f"{stem}.md", text))
        texts.append(text)
    written.append(atomic_write_text(folder / ALL_TABLES_FILE, "\n".join(texts)))
    return written


def pick_examples(cat: Category, limit: int = 8) -> list[int]:
    """Test images kept in ``maps/<cat>.npz``: a deterministic mix of 2 good ones, then defects round-robin
    over defect types (sorted), then whatever is left."""
    goods = [i for i, s in enumerate(cat.test) if s.label == 0]
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(cat.test):
        if s.label == 1:
            by_type.setdefault(s.defect, []).append(i)
    chosen: list[int] = []
    n_good = min(len(goods), 2 if by_type else limit)
    if n_good:
        step = len(goods) / n_good
        chosen += [goods[int(j * step)] for j in range(n_good)]
    queues = [by_type[t] for t in sorted(by_type)]
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    for i in goods:
        if len(chosen) >= limit:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)
