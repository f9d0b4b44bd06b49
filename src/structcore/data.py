"""Image loading and dataset layouts (MVTec AD, VisA, plain folders) and background decoding.

Everything that can go wrong with the data raises :class:`DataError` with a message that names the file or
folder, says what is wrong and, where it helps, what to do about it.

Decoding decisions made by :func:`load_image` (all images become 8-bit RGB):

* **Alpha** (LA, RGBA, PA, palette transparency) is dropped: the stored colour values are kept as they
  are. In inspection imagery an alpha channel is almost always an export artefact (fully opaque); the
  camera's pixel values are the signal, and compositing over a matte colour would invent pixels that the
  camera never recorded (and make results depend on an arbitrary matte colour).
* **16-bit** grayscale (``I;16*``, and ``I`` as 16-bit PNGs load in older Pillow) is scaled by the bit depth
  of the container, ``round(v * 255 / 65535)``, never clipped and never stretched per image: per-image
  min/max stretching would make the same gray level look different in different images, which is exactly
  what an anomaly detector must not see. (Data that uses only 12 of the 16 bits comes out dark, but
  consistently so across the data set.) 16-bit RGB files are reduced to 8 bits by Pillow itself.
* **32-bit integer** (``I``) data outside 0..65535 and **32-bit float** (``F``) images are rejected: their
  value range is not defined by the format (a float image may hold 0..1, 0..255, depths in millimetres...),
  so any mapping to 8 bits would be a guess. Convert such files to 8- or 16-bit first.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``), so images appear the way viewers show them;
  masks get the same treatment. A malformed EXIF block only gives a warning.
* CMYK, YCbCr, HSV, 1-bit and palette images are converted with Pillow's ``convert("RGB")``.
* Truncated or corrupt files are errors (the pixels are decoded inside the check), never half-gray images.
"""

from __future__ import annotations

import csv
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

#: Mask formats whose compression is lossy: their masks are thresholded at half range, not at 0.
_LOSSY_EXTENSIONS = {".jpg", ".jpeg", ".webp"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class DataError(ValueError):
    """A problem with the input data (a file, a folder or a data set layout)."""


# -- images and masks ---------------------------------------------------------------------------
def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open ``path``, decode every pixel and apply the EXIF orientation; errors become DataError."""
    if not path.exists():
        raise DataError(f"{path}: no such {what} file")
    if not path.is_file():
        raise DataError(f"{path}: is a folder, not an {what} file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated / corrupt data fails here and not later
            try:
                out = ImageOps.exif_transpose(im)
            except Exception as e:  # a broken EXIF block should not make an image unusable
                warnings.warn(f"{path}: ignoring unreadable EXIF orientation ({e})", stacklevel=3)
                out = im.copy()
            if out is im:  # older Pillow may return the same object; detach from the file
                out = im.copy()
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image is too large to decode safely ({e})") from e
    except Exception as e:
        raise DataError(
            f"{path}: cannot read this {what} file ({type(e).__name__}: {e}); "
            "it is corrupt, truncated or not an image - replace or remove it"
        ) from e
    return out


def _scale_16bit(path: Path, im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    if im.mode == "I":  # 32-bit signed container (how Pillow < 10.? loads 16-bit PNGs)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(
                f"{path}: 32-bit integer image with values {lo}..{hi}, outside the 16-bit range; "
                "there is no defined way to map it to 8 bits - convert it to an 8- or 16-bit image"
            )
    a8 = np.rint(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(a8)  # 2-D uint8 -> mode "L"


def load_image(path: str | Path) -> Image.Image:
    """Load an image file as an 8-bit ``"RGB"`` PIL image.

    Handles 1-bit, L, LA, P/PA (palette), RGB, RGBA, CMYK, YCbCr, 16-bit grayscale PNG/TIFF, any of the
    formats in :data:`IMAGE_EXTENSIONS`, and EXIF orientation. See the module docstring for the decisions:
    alpha is dropped (not composited), 16-bit data is scaled by 255/65535, float images are rejected.
    Raises :class:`DataError` naming the file if it is missing, corrupt, truncated or not an image.
    """
    path = Path(path)
    im = _open_decoded(path, "image")
    mode = im.mode
    if mode == "F":
        raise DataError(
            f"{path}: 32-bit floating point image; its value range is not defined by the format, so it "
            "cannot be mapped to 8 bits without guessing - convert it to an 8- or 16-bit image"
        )
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        im = _scale_16bit(path, im)
    elif mode in ("P", "PA"):
        # via RGBA so that palette transparency is handled without warnings; the alpha is then dropped
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")  # RGBA/LA -> RGB drops the alpha channel (no compositing)
    except Exception as e:
        raise DataError(f"{path}: unsupported image mode {mode!r} ({e}); convert the file to RGB") from e


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_image` returns it, read from the header only.

    Accounts for EXIF orientations that swap width and height. Raises :class:`DataError` if unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except Exception as e:
        raise DataError(f"{path}: cannot read this image file ({type(e).__name__}: {e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as a boolean ``[H, W]`` array: ``True`` (defect) where the pixel is > 0.

    Any mode is accepted: colour masks count a pixel as defect if any colour channel is > 0 (an alpha
    channel is ignored, as for images); 16-bit and label-index masks (0/1/2...) work as they are.
    Masks stored in a lossy format (JPEG, WebP) are thresholded at half range instead of 0, because
    compression leaves small nonzero values around every edge.
    ``size`` is the ``(width, height)`` of the image the mask belongs to; a mask of another size raises
    :class:`DataError` naming the mask and both sizes.
    """
    path = Path(path)
    im = _open_decoded(path, "mask")
    if size is not None and tuple(im.size) != tuple(size):
        raise DataError(
            f"{path}: mask is {im.size[0]}x{im.size[1]} (width x height) but its image is "
            f"{size[0]}x{size[1]}; masks must have exactly the size of their image"
        )
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode == "CMYK" or im.mode == "YCbCr":
        im = im.convert("RGB")
    a = np.asarray(im)
    if a.ndim == 3:
        if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
            a = a[..., :-1]  # ignore alpha
        a = a.max(axis=-1)
    if path.suffix.lower() in _LOSSY_EXTENSIONS:
        return a >= 128
    return a > 0


def mask_for_crop(mask: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Put a ``[H, W]`` mask through the images' geometry: resize to ``resize`` x ``resize`` (nearest
    neighbour, pixel-centre aligned like Pillow's ``NEAREST``), then center-crop ``crop`` x ``crop`` with
    the torchvision offset ``int(round((resize - crop) / 2))``. Returns a boolean ``[crop, crop]`` array.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
    h, w = mask.shape
    o = int(round((resize - crop) / 2.0))
    dst = np.arange(o, o + crop, dtype=np.float64) + 0.5
    rows = np.minimum(np.floor(dst * (h / resize)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(dst * (w / resize)).astype(np.int64), w - 1)
    return mask[np.ix_(rows, cols)] > 0


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
    images = sorted(p for p in found if _is_image_file(p))
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
    return sorted(p for p in folder.iterdir() if _is_image_file(p)) if folder.is_dir() else []


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
    paths: Sequence[str | Path],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    num_workers: int = 2,
    prefetch_batches: int = 2,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, batch)`` in order, ``batch = stack([transform(load_image(paths[i])) ...])``.

    Images are decoded and transformed in ``num_workers`` background threads (Pillow releases the GIL
    while decoding and resizing), so the consumer rarely waits on PNG decoding. At most
    ``prefetch_batches`` batches are decoded ahead of the one being consumed, which keeps memory bounded.
    ``num_workers=0`` decodes in the calling thread. Decoding errors are raised as :class:`DataError`
    when their batch is reached.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = list(paths)

    def work(i: int) -> torch.Tensor:
        return transform(load_image(paths[i]))

    def stack(idx: list[int], items: list[torch.Tensor]) -> torch.Tensor:
        shape = items[0].shape
        for i, t in zip(idx, items):
            if t.shape != shape:
                raise ValueError(
                    f"{paths[i]}: transform gave shape {tuple(t.shape)}, but {paths[idx[0]]} gave "
                    f"{tuple(shape)}; the transform must give one size for all images"
                )
        return torch.stack(items)

    n = len(paths)
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
