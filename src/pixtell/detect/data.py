"""Detection datasets: read VOC / COCO / YOLO, split, convert, and feed torchvision detectors.

Every format becomes one in-memory ``DetDataset`` of ``DetImage`` records whose boxes are
``xyxy`` in absolute, continuous pixel coordinates (the image spans ``[0, W] x [0, H]``).

Coordinate conventions, read and written:

- VOC: ``xmin ymin xmax ymax`` are 1-based inclusive pixel indices (the VOC devkit's rule),
  so a box is ``[xmin - 1, ymin - 1, xmax, ymax]`` here and is written back as
  ``xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1``.
- COCO: ``bbox = [x, y, w, h]`` in continuous pixels; ``iscrowd: 1`` regions are read as
  ``difficult`` boxes (both mean "do not penalise a detector for missing it").
- YOLO: ``class cx cy w h`` normalised by the image width and height.

Rounding rules when writing: VOC and COCO coordinates keep at most 4 decimals (integers stay
integers); YOLO's normalised values keep 8 decimals. A COCO -> VOC -> YOLO -> COCO round trip
therefore moves a box by well under 1e-3 px for images up to 10,000 px wide.

Two additions the formats lack, both ignored by other tools: a VOC folder written here holds
``classes.txt`` (class order; without it, VOC classes are sorted by name), and COCO files
written here carry ``split`` on image entries and ``difficult: 1`` on difficult annotations.
YOLO has no "difficult" flag, so it is lost on conversion to YOLO.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pixtell.data.images import ImageLoadError, is_image_file, load_image

FORMATS: tuple[str, ...] = ("voc", "coco", "yolo")
SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: dict[str, str] = {
    "voc": "VOC: Annotations/*.xml + JPEGImages/ (optional ImageSets/Main/{train,val,test}.txt)",
    "coco": "COCO: a *.json file (in the folder or in annotations/) with images in images/ or "
    "beside it",
    "yolo": "YOLO: images/ + labels/ (optionally images/train, labels/train, ...) with class "
    "names in data.yaml, classes.txt or obj.names",
}
_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_YOLO_NAME_FILES = ("classes.txt", "obj.names")
_CLIP_TOLERANCE = 1e-3  # px: float noise (e.g. from YOLO's normalised values) is clipped silently
_PROGRESS_MIN = 200


class DatasetFormatError(ValueError):
    """A path that holds no detection dataset of a known (or the requested) format."""


@dataclass
class DetImage:
    """One image and its boxes (``xyxy`` absolute pixels, clipped to the image)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64, 0-based index into DetDataset.class_names
    difficult: np.ndarray  # (N,) bool
    split: str | None = None


@dataclass
class DetDataset:
    """A loaded detection dataset and every problem met while loading it."""

    root: Path
    format: str
    class_names: list[str]
    images: list[DetImage]
    problems: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Record:
    """An image as an annotation file describes it, before the image itself is checked."""

    path: Path
    ann_file: Path
    boxes: list[list[float]]  # xyxy absolute, or cx cy w h normalised when ``normalized``
    labels: list[int]
    difficult: list[bool]
    split: str | None = None
    size: tuple[int, int] | None = None  # (width, height) the annotation states
    normalized: bool = False


_Loaded = tuple[Path, list[str], list[_Record], list[tuple[Path, str]]]


# ----------------------------------------------------------------------------- loading


def detect_format(path: str | Path) -> str:
    """``'voc'``, ``'coco'`` or ``'yolo'`` for a dataset folder (or COCO JSON / YOLO yaml file).

    Raises DatasetFormatError naming every layout it looked for.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
    elif path.is_dir():
        if (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
            return "voc"
        if (path / "images").is_dir() and (path / "labels").is_dir():
            return "yolo"
        if _coco_candidates(path):
            return "coco"
    else:
        raise FileNotFoundError(f"{path} not found; pass a dataset folder or a COCO JSON file")
    looked = "; ".join(LAYOUTS.values())
    raise DatasetFormatError(
        f"{path} is not a detection dataset pixtell knows. Looked for {looked}. "
        "Pass format='voc'|'coco'|'yolo' to force one."
    )


def load_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    drop_empty: bool = False,
    check_images: bool = True,
) -> DetDataset:
    """Read a VOC, COCO or YOLO dataset (format detected unless given).

    Boxes outside an image are clipped, boxes of zero or negative size are dropped, malformed
    annotation files and missing or unreadable images are skipped: each is one
    ``(file, reason)`` pair in ``problems``. Images without boxes are kept as negatives unless
    ``drop_empty``. ``check_images`` fully decodes every image (slow but certain); without it
    only the header is read where the annotation does not state the size.
    """
    path = Path(path)
    fmt = format.lower() if format else detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown detection format {format!r}: use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass a dataset folder or a COCO JSON file")
    loaders: dict[str, Callable[[Path], _Loaded]] = {
        "voc": _load_voc,
        "coco": _load_coco,
        "yolo": _load_yolo,
    }
    root, names, records, problems = loaders[fmt](path.absolute())
    images = _finish(records, check_images, drop_empty, problems)
    return DetDataset(root=root, format=fmt, class_names=names, images=images, problems=problems)


def _finish(
    records: list[_Record], check_images: bool, drop_empty: bool, problems: list[tuple[Path, str]]
) -> list[DetImage]:
    """Check each image, scale normalised boxes, clip and drop boxes; build the DetImages."""
    from rich.progress import track

    images: list[DetImage] = []
    seen: set[Path] = set()
    quiet = len(records) < _PROGRESS_MIN
    for rec in track(records, description="checking images", disable=quiet, transient=True):
        if rec.path in seen:
            problems.append((rec.ann_file, f"{rec.path.name} is annotated twice: kept the first"))
            continue
        size = _image_size(rec, check_images, problems)
        if size is None:
            continue
        seen.add(rec.path)
        width, height = size
        boxes = np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)
        if rec.normalized:
            cx, cy, w, h = boxes.T * np.array([[width], [height], [width], [height]])
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        keep = _clip_boxes(boxes, width, height, rec, problems)
        img = DetImage(
            path=rec.path,
            width=width,
            height=height,
            boxes=boxes[keep].astype(np.float32).reshape(-1, 4),
            labels=np.asarray(rec.labels, dtype=np.int64).reshape(-1)[keep],
            difficult=np.asarray(rec.difficult, dtype=bool).reshape(-1)[keep],
            split=rec.split,
        )
        if drop_empty and len(img.boxes) == 0:
            continue
        images.append(img)
    return images


def _image_size(
    rec: _Record, check_images: bool, problems: list[tuple[Path, str]]
) -> tuple[int, int] | None:
    """(width, height) of the image as ``load_image`` delivers it, or None (problem reported)."""
    if check_images:
        try:
            with load_image(rec.path) as img:  # the same check as pixtell.data.images.check_image
                actual = img.size
        except ImageLoadError as err:
            problems.append((rec.path, err.reason))
            return None
    elif not rec.path.is_file():
        problems.append((rec.path, "file not found; check the path"))
        return None
    elif rec.size is not None:
        return rec.size
    else:
        try:
            with Image.open(rec.path) as img:
                actual = img.size
        except (OSError, ValueError, SyntaxError) as exc:
            problems.append((rec.path, f"not an image Pillow can read ({exc})"))
            return None
    if rec.size is not None and tuple(rec.size) != tuple(actual):
        problems.append(
            (
                rec.ann_file,
                f"annotation says {rec.size[0]}x{rec.size[1]} but {rec.path.name} is "
                f"{actual[0]}x{actual[1]}: kept the boxes, clipped to the image",
            )
        )
    return int(actual[0]), int(actual[1])


def _fmt_box(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _clip_boxes(
    boxes: np.ndarray, width: int, height: int, rec: _Record, problems: list[tuple[Path, str]]
) -> np.ndarray:
    """Clip ``boxes`` in place to the image; the mask of boxes with a positive size."""
    keep = np.ones(len(boxes), dtype=bool)
    limits = np.array([width, height, width, height], dtype=np.float64)
    for k, box in enumerate(boxes):
        where = f"box {k + 1} xyxy {_fmt_box(box)}"
        if not np.isfinite(box).all():
            problems.append((rec.ann_file, f"{rec.path.name}: {where} is not finite: dropped"))
            keep[k] = False
            continue
        clipped = np.clip(box, 0.0, limits)
        if np.abs(clipped - box).max() > _CLIP_TOLERANCE:
            problems.append(
                (
                    rec.ann_file,
                    f"{rec.path.name}: {where} extends outside the {width}x{height} image: "
                    f"clipped to {_fmt_box(clipped)}",
                )
            )
        box[:] = clipped
        if box[2] <= box[0] or box[3] <= box[1]:
            problems.append(
                (rec.ann_file, f"{rec.path.name}: {where} has zero or negative size: dropped")
            )
            keep[k] = False
    return keep


# ---- VOC


def _load_voc(path: Path) -> _Loaded:
    root = path if path.is_dir() else path.parent
    problems: list[tuple[Path, str]] = []
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise DatasetFormatError(f"{root} is not a VOC dataset: looked for {LAYOUTS['voc']}")
    by_stem: dict[str, Path] = {}
    for p in sorted(img_dir.iterdir()):
        if is_image_file(p):
            by_stem.setdefault(p.stem, p)
    splits = _voc_splits(root / "ImageSets" / "Main")
    parsed: list[tuple[_Record, list[str]]] = []
    for xml_file in sorted(ann_dir.glob("*.xml")):
        try:
            rec, names = _parse_voc_xml(xml_file, img_dir, by_stem)
        except ValueError as err:
            problems.append((xml_file, f"malformed VOC annotation ({err}): skipped"))
            continue
        rec.split = splits.get(xml_file.stem)
        parsed.append((rec, names))
    annotated = {rec.path.stem for rec, _ in parsed} | {p.stem for p in ann_dir.glob("*.xml")}
    orphans = sorted(set(by_stem) - annotated)
    if orphans:
        problems.append(
            (
                img_dir,
                f"{len(orphans)} image(s) have no annotation file and were left out "
                f"(e.g. {by_stem[orphans[0]].name}); add an XML with no objects to keep a "
                "negative",
            )
        )
    class_file = root / "classes.txt"
    if class_file.is_file():
        class_names = _read_name_lines(class_file)
    else:
        class_names = sorted({n for _, names in parsed for n in names})
    index = {n: i for i, n in enumerate(class_names)}
    records: list[_Record] = []
    for rec, names in parsed:
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            problems.append(
                (rec.ann_file, f"unknown class {', '.join(unknown)} (not in classes.txt): skipped")
            )
            continue
        rec.labels = [index[n] for n in names]
        records.append(rec)
    return root, class_names, records, problems


def _voc_splits(main: Path) -> dict[str, str]:
    """Image id -> split from ImageSets/Main (test over val over train; trainval means train)."""
    out: dict[str, str] = {}
    for name, split in (
        ("trainval", "train"),
        ("train", "train"),
        ("val", "val"),
        ("test", "test"),
    ):
        file = main / f"{name}.txt"
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split():
                out[line.split()[0]] = split
    return out


def _xml_number(obj: ET.Element, tag: str) -> float:
    text = obj.findtext(tag)
    if text is None or not text.strip():
        raise ValueError(f"<{tag}> missing")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"<{tag}> is {text.strip()!r}, not a number") from None


def _parse_voc_xml(
    xml_file: Path, img_dir: Path, by_stem: dict[str, Path]
) -> tuple[_Record, list[str]]:
    """One VOC XML as a record (labels filled in later) and its objects' class names."""
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as err:
        raise ValueError(f"bad XML: {err}") from None
    ann = tree.getroot()
    filename = (ann.findtext("filename") or "").strip()
    image = img_dir / filename if filename else None
    if image is None or not image.is_file():
        image = by_stem.get(xml_file.stem, image)
    if image is None:
        raise ValueError("no <filename> and no image with the same name in JPEGImages")
    size = None
    size_el = ann.find("size")
    if size_el is not None:
        try:
            w, h = int(_xml_number(size_el, "width")), int(_xml_number(size_el, "height"))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            size = None  # the image itself tells the size
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(ann.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"object {k} has no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {k} ({name}) has no <bndbox>")
        try:
            x0, y0, x1, y1 = (_xml_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise ValueError(f"object {k} ({name}): {err}") from None
        boxes.append([x0 - 1.0, y0 - 1.0, x1, y1])
        names.append(name)
        diff = (obj.findtext("difficult") or "0").strip()
        difficult.append(diff not in ("0", "", "false", "False"))
    rec = _Record(image.absolute(), xml_file, boxes, [], difficult, size=size)
    return rec, names


# ---- COCO


def _coco_candidates(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))


def _split_of(name: str) -> str | None:
    """'train' / 'val' / 'test' when a file or folder name says so (instances_val2017 -> val)."""
    for token in re.split(r"[^a-z]+", name.lower()):
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return None


def _load_coco(path: Path) -> _Loaded:
    problems: list[tuple[Path, str]] = []
    if path.is_file():
        files = [path]
        base = path.parent
    else:
        files = _coco_candidates(path)
        base = path
        if not files:
            raise DatasetFormatError(f"{path} is not a COCO dataset: looked for {LAYOUTS['coco']}")
    root = base.parent if base.name == "annotations" and path.is_file() else base
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append((file, f"malformed COCO JSON ({err}): skipped"))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            problems.append((file, "not a COCO annotation file (no 'images' list): skipped"))
            continue
        loaded.append((file, data))
    if len(loaded) > 1 and len({_split_of(f.stem) for f, _ in loaded}) < len(loaded):
        raise DatasetFormatError(
            f"{path} holds several COCO files ({', '.join(f.name for f, _ in loaded)}) that "
            "are not one train/val/test file each; pass the JSON file to use"
        )
    categories: dict[int, str] = {}
    for file, data in loaded:
        for cat in data.get("categories") or []:
            try:
                cid, name = int(cat["id"]), str(cat["name"])
            except (KeyError, TypeError, ValueError):
                problems.append((file, f"category {cat!r} has no id or name: ignored"))
                continue
            if categories.setdefault(cid, name) != name:
                problems.append(
                    (file, f"category id {cid} is both {categories[cid]!r} and {name!r}")
                )
    cat_ids = sorted(categories)
    index = {cid: i for i, cid in enumerate(cat_ids)}
    records: list[_Record] = []
    for file, data in loaded:
        split = _split_of(file.stem) if len(loaded) > 1 else None
        records += _coco_records(file, data, index, split, problems)
    return root, [categories[c] for c in cat_ids], records, problems


def _coco_image_roots(file: Path) -> list[Path]:
    """Folders an image's ``file_name`` may be relative to, most likely first."""
    bases = [file.parent] + ([file.parent.parent] if file.parent.name == "annotations" else [])
    tail = file.stem.rsplit("_", 1)[-1]  # instances_val2017.json -> images in val2017/
    roots: list[Path] = []
    for b in bases:
        roots += [b / "images", b] + ([b / "images" / tail, b / tail] if tail != file.stem else [])
    return roots


def _coco_records(
    file: Path,
    data: dict[str, Any],
    index: dict[int, int],
    split: str | None,
    problems: list[tuple[Path, str]],
) -> list[_Record]:
    roots = _coco_image_roots(file)
    by_id: dict[int, _Record] = {}
    for entry in data["images"]:
        try:
            iid, name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            problems.append(
                (file, f"image entry {str(entry)[:80]} has no id or file_name: skipped")
            )
            continue
        if iid in by_id:
            problems.append((file, f"image id {iid} appears twice: kept the first"))
            continue
        image = next((r / name for r in roots if (r / name).is_file()), roots[0] / name)
        try:
            size: tuple[int, int] | None = (int(entry["width"]), int(entry["height"]))
        except (KeyError, TypeError, ValueError):
            size = None
        own_split = entry.get("split") if entry.get("split") in SPLITS else None
        by_id[iid] = _Record(image.absolute(), file, [], [], [], own_split or split, size=size)
    for ann in data.get("annotations") or []:
        aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
        try:
            rec = by_id.get(int(ann["image_id"]))
            cat = int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            problems.append(
                (file, f"annotation {aid} lacks image_id, category_id or a 4-number bbox")
            )
            continue
        if rec is None:
            problems.append(
                (file, f"annotation {aid}: unknown image_id {ann['image_id']}: dropped")
            )
            continue
        if cat not in index:
            problems.append((file, f"annotation {aid}: unknown category_id {cat}: dropped"))
            continue
        rec.boxes.append([x, y, x + w, y + h])
        rec.labels.append(index[cat])
        rec.difficult.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("difficult", 0)))
    return list(by_id.values())


# ---- YOLO


def _read_name_lines(file: Path) -> list[str]:
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    return [s.strip() for s in lines if s.strip()]


def _yolo_names(root: Path, problems: list[tuple[Path, str]]) -> list[str] | None:
    """Class names from data.yaml (``names`` list or dict), classes.txt or obj.names."""
    for yaml_name in ("data.yaml", "data.yml", "dataset.yaml"):
        file = root / yaml_name
        if not file.is_file():
            continue
        try:
            names = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("names")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as err:
            problems.append((file, f"unreadable YAML ({str(err).splitlines()[0]}): ignored"))
            continue
        if isinstance(names, list):
            return [str(n) for n in names]
        if isinstance(names, dict):
            try:
                by_id = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                problems.append((file, "'names' keys are not class ids: ignored"))
                continue
            top = max(by_id, default=-1)
            if sorted(by_id) != list(range(top + 1)):
                problems.append((file, "'names' ids are not 0..N-1: missing ids named by number"))
            return [by_id.get(i, str(i)) for i in range(top + 1)]
        problems.append((file, "no 'names' list or dict: ignored"))
    for name in _YOLO_NAME_FILES:
        for folder in (root, root / "labels"):
            if (folder / name).is_file():
                return _read_name_lines(folder / name)
    return None


def _load_yolo(path: Path) -> _Loaded:
    root = path.parent if path.is_file() else path
    img_dir, lbl_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lbl_dir.is_dir():
        raise DatasetFormatError(f"{root} is not a YOLO dataset: looked for {LAYOUTS['yolo']}")
    problems: list[tuple[Path, str]] = []
    names = _yolo_names(root, problems)
    parsed: list[tuple[_Record, list[int]]] = []
    used_labels: set[Path] = set()
    for image in sorted(p for p in img_dir.rglob("*") if p.is_file() and is_image_file(p)):
        rel = image.relative_to(img_dir)
        label_file = (lbl_dir / rel).with_suffix(".txt")
        used_labels.add(label_file)
        split = _SPLIT_ALIASES.get(rel.parts[0].lower()) if len(rel.parts) > 1 else None
        rec = _Record(image.absolute(), label_file, [], [], [], split, normalized=True)
        if label_file.is_file():
            try:
                ids = _parse_yolo_labels(label_file, rec, names)
            except ValueError as err:
                problems.append((label_file, f"malformed YOLO labels ({err}): skipped"))
                continue
        else:
            ids = []  # no label file: a negative image, as Ultralytics reads it
        parsed.append((rec, ids))
    for label_file in sorted(lbl_dir.rglob("*.txt")):
        if label_file not in used_labels and label_file.name not in _YOLO_NAME_FILES:
            problems.append((label_file, "label file without an image: ignored"))
    if names is None:
        top = max((i for _, ids in parsed for i in ids), default=-1)
        names = [str(i) for i in range(top + 1)]
        problems.append((root, "no data.yaml, classes.txt or obj.names: classes named by id"))
    for rec, ids in parsed:
        rec.labels = ids
    return root, names, [rec for rec, _ in parsed], problems


def _parse_yolo_labels(file: Path, rec: _Record, names: list[str] | None) -> list[int]:
    """Fill ``rec`` with one file's normalised boxes; the class ids (raises on a bad line)."""
    ids: list[int] = []
    text = file.read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise ValueError(f"line {n} has {len(fields)} fields, expected 5: class cx cy w h")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"line {n} has a field that is not a number") from None
        cls = values[0]
        if not cls.is_integer() or cls < 0:
            raise ValueError(f"line {n}: class id {fields[0]!r} is not a non-negative integer")
        if names is not None and cls >= len(names):
            raise ValueError(f"line {n}: unknown class id {int(cls)} ({len(names)} classes)")
        ids.append(int(cls))
        rec.boxes.append(values[1:])
        rec.difficult.append(False)
    return ids


# ----------------------------------------------------------------------------- splits


def split_dataset(
    ds: DetDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Image indices per split: the dataset's own splits when it has them, else seeded.

    With the dataset's own splits, images that belong to none are left out. The seeded split
    shuffles images (not boxes) and gives every split with a positive fraction at least one
    image when there are enough images.
    """
    if any(img.split is not None for img in ds.images):
        return {s: [i for i, img in enumerate(ds.images) if img.split == s] for s in SPLITS}
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(ds.images)
    order = np.random.default_rng(seed).permutation(n).tolist()
    sizes = [math.floor(n * f + 0.5) for f in fr[1:]]
    for k, f in enumerate(fr[1:]):
        if f > 0 and sizes[k] == 0 and n - sum(sizes) > 1:
            sizes[k] = 1
    n_val, n_test = sizes
    n_train = max(n - n_val - n_test, 0)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def write_split(path: str | Path, ds: DetDataset, splits: dict[str, list[int]]) -> Path:
    """Record ``ds`` (every image and box) and its ``splits`` as JSON, image paths relative.

    Writing the same content again is a no-op; an existing different file is never replaced.
    """
    path = Path(path)
    root = ds.root.absolute()
    data = {
        "format": ds.format,
        "root": str(root),
        "root_relative": os.path.relpath(root, path.parent.absolute()),
        "class_names": list(ds.class_names),
        "images": [
            {
                "file": _rel(img.path, root),
                "width": img.width,
                "height": img.height,
                "boxes": img.boxes.astype(float).tolist(),
                "labels": img.labels.tolist(),
                "difficult": img.difficult.astype(int).tolist(),
                "split": img.split,
            }
            for img in ds.images
        ],
        "splits": {name: [int(i) for i in idx] for name, idx in splits.items()},
        "problems": [[_rel(p, root), reason] for p, reason in ds.problems],
    }
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if path.exists():
        if path.read_text(encoding="utf-8") == text:
            return path
        raise FileExistsError(f"{path} exists with a different split: choose a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_split(path: str | Path) -> tuple[DetDataset, dict[str, list[int]]]:
    """The dataset and splits recorded by ``write_split``.

    The data root is the recorded absolute path, or the recorded path relative to the split
    file when the absolute one no longer exists (a moved project).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        root = Path(data["root"])
        if not root.is_dir():
            moved = (path.parent / data.get("root_relative", "")).resolve()
            root = moved if moved.is_dir() else root
        images = [
            DetImage(
                path=root / e["file"],
                width=int(e["width"]),
                height=int(e["height"]),
                boxes=np.asarray(e["boxes"], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(e["labels"], dtype=np.int64).reshape(-1),
                difficult=np.asarray(e["difficult"], dtype=bool).reshape(-1),
                split=e.get("split"),
            )
            for e in data["images"]
        ]
        ds = DetDataset(
            root=root,
            format=str(data["format"]),
            class_names=[str(c) for c in data["class_names"]],
            images=images,
            problems=[(root / p, str(r)) for p, r in data.get("problems", [])],
        )
        splits = {str(k): [int(i) for i in v] for k, v in data["splits"].items()}
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{path} is not a detection split file written by pixtell ({exc})"
        ) from exc
    for name, idx in splits.items():
        if any(not 0 <= i < len(images) for i in idx):
            raise ValueError(f"{path}: split {name!r} has an image index out of range")
    return ds, splits


# ----------------------------------------------------------------------------- writing


def _num(v: float, digits: int = 4) -> float | int:
    """``v`` rounded to ``digits`` decimals; an int when it is integral (e.g. 12 not 12.0)."""
    r = round(float(v), digits)
    return int(r) if r.is_integer() else r


def _split_map(ds: DetDataset, indices: Sequence[int] | None) -> list[int]:
    return list(range(len(ds.images))) if indices is None else [int(i) for i in indices]


def to_coco_dict(ds: DetDataset, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """A COCO ground-truth dict for ``ds.images[indices]`` (all images by default).

    Image ids are 1 + the position in ``indices``, exactly as ``DetectionDataset`` numbers the
    same images, so predictions and this ground truth pair up. Categories are ``1..C`` in
    ``class_names`` order (label + 1, as the detectors' 1-based labels).
    """
    root = ds.root.absolute()
    images, annotations = [], []
    for pos, i in enumerate(_split_map(ds, indices), start=1):
        img = ds.images[i]
        entry: dict[str, Any] = {
            "id": pos,
            "file_name": _rel(img.path, root),
            "width": img.width,
            "height": img.height,
        }
        if img.split is not None:
            entry["split"] = img.split
        images.append(entry)
        for box, label, diff in zip(img.boxes, img.labels, img.difficult, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            w, h = _num(x1 - x0), _num(y1 - y0)
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": pos,
                "category_id": int(label) + 1,
                "bbox": [_num(x0), _num(y0), w, h],
                "area": _num(w * h),
                "iscrowd": 0,
            }
            if diff:
                ann["difficult"] = 1
            annotations.append(ann)
    categories = [
        {"id": k + 1, "name": name, "supercategory": "none"}
        for k, name in enumerate(ds.class_names)
    ]
    return {
        "info": {"description": f"pixtell export of {ds.root.name}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _unique_names(images: Sequence[DetImage]) -> list[str]:
    """Flat file names for the images, unique by stem (VOC ids and YOLO labels use the stem)."""
    taken: set[str] = set()
    out = []
    for img in images:
        stem, suffix = img.path.stem, img.path.suffix.lower()
        candidate, n = stem, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.casefold())
        out.append(candidate + suffix)
    return out


def convert(
    src: str | Path | DetDataset, dest: str | Path, *, to: str, format: str | None = None
) -> Path:
    """Write ``src`` (a dataset path or a loaded DetDataset) to ``dest`` in format ``to``.

    ``coco``: ``annotations.json`` + ``images/``; ``voc``: ``Annotations/``, ``JPEGImages/``,
    ``ImageSets/Main/`` (when the dataset has splits) and ``classes.txt``; ``yolo``:
    ``images/``, ``labels/`` (``images/<split>/`` ... when it has splits) and ``data.yaml``.
    Images are copied under flat, unique names. Refuses a non-empty ``dest``; ``dest``
    appears only once complete. Rounding rules: see the module docstring.
    """
    to = to.lower()
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}: use one of {', '.join(FORMATS)}")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty: choose a new folder")
    ds = src if isinstance(src, DetDataset) else load_dataset(src, format=format)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        {"coco": _write_coco, "voc": _write_voc, "yolo": _write_yolo}[to](ds, work)
        if dest.exists():
            dest.rmdir()
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return dest


def _write_coco(ds: DetDataset, out: Path) -> None:
    names = _unique_names(ds.images)
    (out / "images").mkdir()
    for img, name in zip(ds.images, names, strict=True):
        shutil.copy2(img.path, out / "images" / name)
    coco = to_coco_dict(ds)
    for entry, name in zip(coco["images"], names, strict=True):
        entry["file_name"] = name
    text = json.dumps(coco, indent=1, ensure_ascii=False)
    (out / "annotations.json").write_text(text + "\n", encoding="utf-8")


def _write_voc(ds: DetDataset, out: Path) -> None:
    names = _unique_names(ds.images)
    for sub in ("Annotations", "JPEGImages"):
        (out / sub).mkdir()
    for img, name in zip(ds.images, names, strict=True):
        shutil.copy2(img.path, out / "JPEGImages" / name)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = "JPEGImages"
        ET.SubElement(ann, "filename").text = name
        size = ET.SubElement(ann, "size")
        for tag, value in (("width", img.width), ("height", img.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        ET.SubElement(ann, "segmented").text = "0"
        for box, label, diff in zip(img.boxes, img.labels, img.difficult, strict=True):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = ds.class_names[int(label)]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(int(diff))
            bb = ET.SubElement(obj, "bndbox")
            x0, y0, x1, y1 = (float(v) for v in box)
            for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bb, tag).text = str(_num(v))
        ET.indent(ann)
        ET.ElementTree(ann).write(
            out / "Annotations" / f"{Path(name).stem}.xml", encoding="utf-8", xml_declaration=True
        )
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in ds.class_names), encoding="utf-8")
    if any(img.split for img in ds.images):
        main = out / "ImageSets" / "Main"
        main.mkdir(parents=True)
        ids = {
            s: [Path(n).stem for img, n in zip(ds.images, names, strict=True) if img.split == s]
            for s in SPLITS
        }
        ids["trainval"] = ids["train"] + ids["val"]
        for split, stems in ids.items():
            if stems:
                (main / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))


def _write_yolo(ds: DetDataset, out: Path) -> None:
    names = _unique_names(ds.images)
    for img, name in zip(ds.images, names, strict=True):
        sub = Path(img.split) if img.split else Path()
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
        (out / "labels" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(img.path, out / "images" / sub / name)
        lines = []
        for box, label in zip(img.boxes, img.labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            cx, cy = (x0 + x1) / 2 / img.width, (y0 + y1) / 2 / img.height
            w, h = (x1 - x0) / img.width, (y1 - y0) / img.height
            lines.append(f"{int(label)} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}\n")
        (out / "labels" / sub / f"{Path(name).stem}.txt").write_text("".join(lines))
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    present = [s for s in SPLITS if any(img.split == s for img in ds.images)]
    spec: dict[str, Any] = {s: f"images/{s}" for s in present} or {
        "train": "images",
        "val": "images",
    }
    spec["nc"] = len(ds.class_names)
    spec["names"] = list(ds.class_names)
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------------------- training


class DetectionDataset(torch.utils.data.Dataset):
    """``(image float 0-1 CxHxW, target)`` pairs for torchvision detectors.

    ``target = {"boxes": (N, 4) float xyxy, "labels": (N,) int64 1-based, "image_id": int}``;
    label 0 is the background, as torchvision's detectors expect. ``image_id`` is 1 + the
    position in ``images``, matching ``to_coco_dict`` for the same selection. ``transform``
    is called as ``transform(image, target)`` with a ``tv_tensors.Image`` and
    ``tv_tensors.BoundingBoxes`` (see ``build_transforms``).
    """

    def __init__(self, images: Sequence[DetImage], transform: Callable | None = None) -> None:
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.images[idx]
        image = tv_tensors.Image(F.pil_to_tensor(load_image(rec.path)))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=tuple(image.shape[-2:]),
            ),
            "labels": torch.as_tensor(rec.labels, dtype=torch.int64).reshape(-1) + 1,
            "image_id": idx + 1,
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        image = F.to_dtype(image, torch.float32, scale=True)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        return image.as_subclass(torch.Tensor), target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list, list]:
    """Keep images and targets as lists (sizes differ), as torchvision's references do."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


class ResizeLonger(v2.Transform):
    """Resize so the longer side is ``size`` x a scale drawn from ``scale`` (boxes follow).

    ``size=None`` scales the image's own longer side; ``scale=None`` means exactly 1.
    """

    def __init__(self, size: int | None, scale: tuple[float, float] | None = None) -> None:
        super().__init__()
        if size is None and scale is None:
            raise ValueError("ResizeLonger needs a size, a scale range or both")
        self.size, self.scale = size, scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        base = self.size if self.size is not None else max(height, width)
        factor = 1.0
        if self.scale is not None:
            lo, hi = self.scale
            factor = lo + (hi - lo) * float(torch.rand(()))
        return {"longer": max(1, round(base * factor))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, None, max_size=params["longer"], antialias=True)


def build_transforms(
    train: bool,
    *,
    img_size: int | None,
    hflip: bool = True,
    multiscale: tuple[float, float] | None = None,
) -> v2.Compose:
    """Detection transforms (torchvision.transforms.v2): boxes move with the image.

    ``img_size`` is the longer side after resizing (None keeps the size). In training,
    ``multiscale=(a, b)`` draws that side from ``[a, b] x img_size`` (or x the image's own
    longer side) per image, and ``hflip`` flips half the images. Evaluation only resizes.
    Ends with a float 0-1 image.
    """
    ops: list[torch.nn.Module] = []
    if train and multiscale is not None:
        lo, hi = multiscale
        if not 0 < lo <= hi:
            raise ValueError(
                f"multiscale must be (low, high) with 0 < low <= high, got {multiscale}"
            )
        ops.append(ResizeLonger(img_size, (lo, hi)))
    elif img_size is not None:
        ops.append(ResizeLonger(img_size))
    if train and hflip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    return v2.Compose(ops)
