"""Dataset layouts (MVTec AD, VisA, plain folders) and background decoding of image batches.

Everything that can go wrong with a layout raises :class:`~structcore.errors.DataError` naming the file or
folder, what is wrong and, where it helps, what to do about it. Decoding itself is :mod:`structcore.images`.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .errors import DataError
from .images import IMAGE_EXTENSIONS, as_image, is_image_file, source_name


# -- folders ------------------------------------------------------------------------------------
def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files (extensions in :data:`IMAGE_EXTENSIONS`, any case) in ``folder``.

    Hidden files and folders (``.name``, including macOS ``._name`` files) are skipped; subfolders are
    searched only when ``recursive``. A missing folder, or one without images, raises :class:`DataError`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: is a file, expected a folder of images")
    if recursive:
        found = (p for p in folder.rglob("*") if not any(d.startswith(".") for d in p.relative_to(folder).parent.parts))
    else:
        found = folder.iterdir()
    images = sorted(p for p in found if is_image_file(p))
    if not images:
        hint = ""
        subs = [] if recursive else _subfolders(folder)
        if subs:
            names = ", ".join(p.name for p in subs[:5]) + (", ..." if len(subs) > 5 else "")
            hint = f"; it has subfolders ({names}) - did you mean one of them?"
        raise DataError(
            f"{folder}: no images in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}){hint}"
        )
    return images


@dataclass
class Sample:
    """One test image: ``label`` 0 good / 1 defective, ``defect`` its type ("good" for good ones)."""

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None


@dataclass
class Category:
    """A category's good training images and labelled test images.

    ``has_masks`` says whether pixel-level ground truth exists; when it is True every defective test sample
    has a ``mask_path``. When False, pixel metrics must be reported as absent (never as zeros).
    """

    name: str
    train: list[Path]
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False


def _mask_index(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def _assign_masks(
    samples: list[Sample], mask_folder_of: Callable[[Sample], Path], where: str
) -> None:
    """Fill ``mask_path`` of ``samples`` from mask folders.

    A mask of image ``<stem>.<ext>`` is ``<stem>_mask.<any image ext>`` or ``<stem>.<any image ext>`` in
    ``mask_folder_of(sample)``; ``_mask`` wins if both exist. Defective samples must get a mask, good ones
    may; a mask file that no image claims is an error (it usually means a misnamed file).
    """
    folders: dict[Path, list[Path]] = {}
    stems: dict[Path, dict[str, list[Path]]] = {}
    claimed: dict[Path, Path] = {}
    missing: list[Sample] = []
    for s in samples:
        folder = mask_folder_of(s)
        if folder not in folders:
            folders[folder] = _mask_index(folder)
            stems[folder] = {}
            for m in folders[folder]:
                stems[folder].setdefault(m.stem, []).append(m)
        by_stem = stems[folder]
        found = None
        for stem in (f"{s.path.stem}_mask", s.path.stem):
            cands = by_stem.get(stem, [])
            if len(cands) > 1:
                raise DataError(
                    f"{s.path}: several masks match this image ({', '.join(str(c) for c in cands)}); keep one"
                )
            if cands:
                found = cands[0]
                break
        if found is not None:
            if found in claimed:
                raise DataError(
                    f"{found}: this mask matches two images, {claimed[found]} and {s.path}; "
                    "give the images distinct names or keep masks in one folder per defect type"
                )
            claimed[found] = s.path
            s.mask_path = found
        elif s.label == 1:
            missing.append(s)
    if missing:
        first = missing[0]
        folder = mask_folder_of(first)
        more = f" (and {len(missing) - 1} more defective images)" if len(missing) > 1 else ""
        raise DataError(
            f"{first.path}: defective test image has no mask{more}; expected "
            f"{folder / (first.path.stem + '_mask.png')} or {folder / (first.path.stem + '.png')}. "
            f"{where} exists, so every defective image needs a mask; add the masks, or remove {where} "
            "to evaluate at image level only"
        )
    for folder, masks in folders.items():
        for m in masks:
            if m not in claimed:
                raise DataError(
                    f"{m}: mask without an image - no test image named {m.stem.removesuffix('_mask')}.* "
                    "belongs to it; fix its name or remove it"
                )


def _good(name: str) -> bool:
    return name.lower() == "good"


# -- MVTec AD -----------------------------------------------------------------------------------
def _mvtec_categories(root: Path) -> list[str]:
    return [p.name for p in _subfolders(root) if (p / "train" / "good").is_dir()]


def load_mvtec(root: str | Path, categories: list[str] | None = None) -> list[Category]:
    """Categories of a data set in MVTec AD layout.

    ``root/<cat>/train/good/*`` (training images, all good), ``root/<cat>/test/<defect>/*`` (``good`` is
    label 0, any other folder label 1 with that defect name) and optionally
    ``root/<cat>/ground_truth/<defect>/<stem>_mask.<ext>`` (or ``<stem>.<ext>``, any image extension).
    ``has_masks`` is True when ``ground_truth/`` exists; then every defective image must have a mask and
    every mask an image. A category without ``test/`` loads with an empty test list (enough for fitting).
    ``categories=None`` loads every subfolder that has ``train/good``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data set folder does not exist")
    available = _mvtec_categories(root)
    if categories is None:
        if not available:
            hint = ""
            if (root / "train" / "good").is_dir():
                hint = (
                    f" - it looks like a category folder itself: pass its parent {root.parent} as the root "
                    f"and {root.name!r} as the category"
                )
            raise DataError(
                f"{root}: no categories found; expected the MVTec layout ROOT/<category>/train/good{hint}"
            )
        names = available
    else:
        names = list(categories)
        unknown = [c for c in names if c not in available]
        if unknown:
            raise DataError(
                f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                f"available: {', '.join(available) if available else '(none: no <category>/train/good folders)'}"
            )
    return [_load_mvtec_category(root / name) for name in names]


def _load_mvtec_category(folder: Path) -> Category:
    train = list_images(folder / "train" / "good")
    test: list[Sample] = []
    test_dir = folder / "test"
    if test_dir.is_dir():
        for d in _subfolders(test_dir):
            good = _good(d.name)
            for p in list_images(d):
                test.append(Sample(p, 0 if good else 1, "good" if good else d.name, None))
    gt = folder / "ground_truth"
    has_masks = gt.is_dir()
    if has_masks:
        defect_dirs = {s.path.parent.name for s in test}
        for d in _subfolders(gt):
            if d.name not in defect_dirs:
                masks = _mask_index(d)
                if masks:
                    raise DataError(
                        f"{masks[0]}: mask without an image - there is no test folder {test_dir / d.name}"
                    )
        _assign_masks(test, lambda s: gt / s.path.parent.name, str(gt))
    return Category(folder.name, train, test, has_masks)


# -- VisA ---------------------------------------------------------------------------------------
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def load_visa(
    root: str | Path, categories: list[str] | None = None, split_csv: str | Path | None = None
) -> list[Category]:
    """Categories of a data set in VisA layout, from its split file.

    The split file (default ``root/split_csv/1cls.csv``; a relative ``split_csv`` is taken relative to
    ``root``) has columns ``object,split,label,image,mask`` with ``split`` train/test, ``label``
    normal/anomaly and paths relative to ``root``. Training rows must be normal. Anomalous test samples get
    the defect name ``"anomaly"`` (VisA does not record defect types). ``has_masks`` is True when the
    anomalous rows give masks (all of them must, then).

    The raw layout without a split file (``<cat>/Data/Images/{Normal,Anomaly}``) is not accepted: it
    defines no train/test split, and an invented one would not be comparable to published VisA results.
    Use the official ``split_csv/1cls.csv``, or :func:`load_folder` for a split of your own.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data set folder does not exist")
    csv_path = Path(split_csv) if split_csv is not None else Path("split_csv") / "1cls.csv"
    if not csv_path.is_absolute():
        csv_path = root / csv_path
    if not csv_path.is_file():
        raw = [p.name for p in _subfolders(root) if (p / "Data" / "Images").is_dir()]
        hint = (
            f" The folder has the raw VisA layout ({', '.join(raw[:5])}), which defines no train/test split: "
            "get split_csv/1cls.csv from the VisA release, or use a plain-folder split (load_folder)."
            if raw
            else ""
        )
        raise DataError(f"{csv_path}: VisA split file not found.{hint}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(_VISA_COLUMNS)}"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not a UTF-8 text CSV file ({e})") from e

    def resolve(rel: str, line: int) -> Path:
        p = root / rel.replace("\\", "/")
        if not p.is_file():
            raise DataError(f"{csv_path}, line {line}: file {p} does not exist")
        return p

    per: dict[str, Category] = {}
    listed: set[str] = set()
    mask_seen: dict[str, list[bool]] = {}
    for line, r in enumerate(rows, start=2):
        obj, split, label = r["object"], r["split"].lower(), r["label"].lower()
        if not obj:
            continue
        listed.add(obj)
        if categories is not None and obj not in categories:
            continue
        if label not in ("normal", "anomaly"):
            raise DataError(f"{csv_path}, line {line}: label {r['label']!r}; expected normal or anomaly")
        if split not in ("train", "test"):
            raise DataError(f"{csv_path}, line {line}: split {r['split']!r}; expected train or test")
        cat = per.setdefault(obj, Category(obj, [], [], False))
        image = resolve(r["image"], line)
        if split == "train":
            if label != "normal":
                raise DataError(
                    f"{csv_path}, line {line}: anomalous training image {image}; training uses normal "
                    "images only - use the 1cls split file"
                )
            cat.train.append(image)
        elif label == "normal":
            cat.test.append(Sample(image, 0, "good", None))
        else:
            mask = resolve(r["mask"], line) if r["mask"] else None
            mask_seen.setdefault(obj, []).append(mask is not None)
            cat.test.append(Sample(image, 1, "anomaly", mask))
    available = sorted(listed)
    if categories is not None:
        unknown = [c for c in categories if c not in listed]
        if unknown:
            raise DataError(
                f"{csv_path}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                f"available: {', '.join(available) if available else '(none)'}"
            )
        names = list(categories)
    else:
        names = available
    if not names:
        raise DataError(f"{csv_path}: the split file lists no images")
    out = []
    for name in names:
        cat = per[name]
        if not cat.train:
            raise DataError(f"{csv_path}: category {name!r} has no training (split=train, normal) rows")
        seen = mask_seen.get(name, [])
        if any(seen) and not all(seen):
            s = next(s for s in cat.test if s.label == 1 and s.mask_path is None)
            raise DataError(
                f"{s.path}: anomalous image has no mask in {csv_path}, while others of {name!r} do; "
                "give every anomalous row a mask, or none"
            )
        cat.has_masks = bool(seen) and all(seen)
        out.append(cat)
    return out


# -- plain folders ------------------------------------------------------------------------------
def load_folder(
    good: str | Path,
    defective: Sequence[str | Path] | None = None,
    test_good: str | Path | None = None,
    masks: str | Path | None = None,
    name: str = "folder",
) -> Category:
    """A category from plain folders.

    ``good``: good training images. ``defective``: folders of defective test images (the defect name is
    the folder name). ``test_good``: good test images. ``masks``: a folder of masks, matched to images by
    stem (``<stem>_mask.<ext>`` or ``<stem>.<ext>``); if it has a subfolder named like a defect folder, that
    defect's masks are looked up there instead. With ``masks`` every defective image needs a mask and every
    mask an image (``has_masks`` True).
    """
    train = list_images(good)
    test: list[Sample] = []
    if test_good is not None:
        test += [Sample(p, 0, "good", None) for p in list_images(test_good)]
    for d in defective or []:
        d = Path(d)
        test += [Sample(p, 1, d.name, None) for p in list_images(d)]
    if masks is not None:
        masks = Path(masks)
        if not masks.is_dir():
            raise DataError(f"{masks}: mask folder does not exist")

        def folder_of(s: Sample) -> Path:
            sub = masks / s.path.parent.name
            return sub if s.label == 1 and sub.is_dir() else masks

        _assign_masks(test, folder_of, str(masks))
    return Category(name, train, test, masks is not None)


# -- background decoding ------------------------------------------------------------------------
def iter_batches(
    images: Sequence,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    num_workers: int = 2,
    prefetch_batches: int = 2,
    first_index: int = 0,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, batch)`` in order, ``batch = stack([transform(as_image(images[i])) ...])``.

    ``images`` holds paths, PIL images or arrays (``first_index`` numbers in-memory ones in messages).
    Images are decoded and transformed in ``num_workers`` background threads (Pillow releases the GIL
    while decoding and resizing), so the consumer rarely waits on PNG decoding. At most
    ``prefetch_batches`` batches are decoded ahead of the one being consumed, which keeps memory bounded.
    ``num_workers=0`` decodes in the calling thread. Decoding errors are raised as :class:`DataError`
    when their batch is reached.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = list(images)

    def work(i: int) -> torch.Tensor:
        return transform(as_image(images[i], source_name(images[i], first_index + i)))

    def stack(idx: list[int], items: list[torch.Tensor]) -> torch.Tensor:
        shape = items[0].shape
        for i, t in zip(idx, items):
            if t.shape != shape:
                raise ValueError(
                    f"{source_name(images[i], first_index + i)}: transform gave shape {tuple(t.shape)}, but "
                    f"{source_name(images[idx[0]], first_index + idx[0])} gave {tuple(shape)}; "
                    "the transform must give one size for all images"
                )
        return torch.stack(items)

    n = len(images)
    if num_workers <= 0:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            yield idx, stack(idx, [work(i) for i in idx])
        return

    limit = batch_size * max(1, prefetch_batches)
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="structcore-decode")
    pending: deque[tuple[int, Future]] = deque()
    next_i = 0

    def refill():
        nonlocal next_i
        while next_i < n and len(pending) < limit:
            pending.append((next_i, pool.submit(work, next_i)))
            next_i += 1

    try:
        refill()
        while pending:
            idx, items = [], []
            while pending and len(idx) < batch_size:
                i, fut = pending.popleft()
                idx.append(i)
                items.append(fut.result())
                refill()  # keep the workers busy while this batch is assembled and consumed
            yield idx, stack(idx, items)
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
