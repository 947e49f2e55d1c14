"""Captioning data: Flickr8k / COCO / Karpathy / demo parsers, leak-free splits, torch datasets.

``load_captions`` turns any supported layout into a ``CaptionDataset`` (images with all their
reference captions, plus every problem found as ``(file, reason)``). ``split_captions`` splits
by image (never by caption) and keeps identical image content in one split.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.progress import track
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from pixtell.caption.vocab import Vocabulary
from pixtell.data.decoded import DecodedImages
from pixtell.data.demo import meta_path
from pixtell.data.images import (
    DEFAULT_MAX_PIXELS,
    StrPath,
    check_image,
    file_sha256,
    is_image_file,
    load_image,
)

FORMATS: tuple[str, ...] = ("flickr8k", "coco", "karpathy", "demo")
SPLITS: tuple[str, str, str] = ("train", "val", "test")
LAYOUTS = (
    "Flickr8k (captions.txt + Images/, or Flickr8k.token.txt + Flicker8k_Dataset/), "
    "a COCO captions JSON, a Karpathy dataset_*.json, or a pixtell demo folder"
)
_FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
_OFFICIAL_SPLITS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_LEAK_PRIORITY = {"test": 0, "val": 1, "train": 2}  # shared content goes to the most held-out
_PROGRESS_MIN_FILES = 200
_ROOT_PROBE = 50  # image paths tried when choosing between candidate image folders
_DEMO_SUFFIX = "-meta.jsonl"


@dataclass
class CaptionImage:
    """One image with all its reference captions; ``split`` is the dataset's own, if any."""

    path: Path
    captions: list[str]
    split: str | None = None
    image_id: str = ""

    def __post_init__(self) -> None:
        if not self.image_id:
            self.image_id = self.path.name


@dataclass
class CaptionDataset:
    """Parsed captions: ``root`` is the folder image paths are relative to."""

    root: Path
    format: str
    images: list[CaptionImage]
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_captions(self) -> int:
        """Total number of captions over all images."""
        return sum(len(im.captions) for im in self.images)


@dataclass
class _Entry:
    """One (image, caption) record read from an annotation file, before checking."""

    rel: str  # image path relative to the image root
    caption: str
    where: str  # e.g. "captions.txt line 12", for problem reports
    split: str | None = None
    image_id: str = ""


# ----------------------------------------------------------------------------- loading


def load_captions(
    path: StrPath,
    *,
    format: str | None = None,
    images: StrPath | None = None,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> CaptionDataset:
    """Read a captioning dataset from a folder or an annotation file.

    The format is detected unless ``format`` (flickr8k, coco, karpathy, demo) forces it;
    ``images`` overrides the image folder. Missing or (with ``check_images``) unreadable
    images and empty captions are reported in ``problems`` and skipped; an image left with
    no caption is dropped. Raises ValueError when nothing usable is found.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown caption format {format!r}: use one of {', '.join(FORMATS)}")
    src = Path(path).expanduser()
    if not src.exists():
        raise ValueError(f"{src} does not exist; expected {LAYOUTS}")
    fmt, ann = _locate(src, format)
    entries, problems, candidates = _PARSERS[fmt](ann)
    image_root = Path(images).expanduser() if images is not None else None
    if image_root is not None and not image_root.is_dir():
        raise ValueError(f"image folder {image_root} does not exist or is not a folder")
    root = image_root or _pick_root(candidates, [e.rel for e in entries], ann)
    items, more = _assemble(entries, root.resolve(), check_images, max_pixels, progress)
    problems += more
    if not items:
        first = "; ".join(f"{p}: {r}" for p, r in problems[:3]) or "the file lists no captions"
        raise ValueError(f"no usable captioned images in {ann} (images in {root}): {first}")
    return CaptionDataset(root=root.resolve(), format=fmt, images=items, problems=problems)


def detect_format(path: StrPath) -> str:
    """The caption format of a folder or annotation file (ValueError when none matches)."""
    return _locate(Path(path).expanduser(), None)[0]


def _locate(src: Path, forced: str | None) -> tuple[str, Path]:
    """(format, annotation file) for ``src``, a folder or a file."""
    if src.is_file():
        fmt = forced or _format_of_file(src)
        return fmt, src
    order = [forced] if forced else ["demo", "flickr8k", "karpathy", "coco"]
    for fmt in order:
        ann = _FINDERS[fmt](src)
        if ann is not None:
            return fmt, ann
    what = f"{forced} annotations" if forced else "caption annotations"
    raise ValueError(f"no {what} found in {src}; expected {LAYOUTS}")


def _format_of_file(file: Path) -> str:
    name = file.name.lower()
    if name.endswith(".jsonl"):
        return "demo"
    if name.endswith((".txt", ".csv")):
        return "flickr8k"
    if name.endswith(".json"):
        data = _read_json(file)
        if isinstance(data, dict) and "annotations" in data:
            return "coco"
        imgs = data.get("images") if isinstance(data, dict) else None
        if isinstance(imgs, list) and (not imgs or "sentences" in imgs[0]):
            return "karpathy"
    raise ValueError(f"cannot tell the caption format of {file}; pass format= ({LAYOUTS})")


def _find_demo(folder: Path) -> Path | None:
    meta = meta_path(folder)
    return meta if meta.is_file() else None


def _find_flickr(folder: Path) -> Path | None:
    for rel in ("captions.txt", "Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt"):
        if (folder / rel).is_file():
            return folder / rel
    return None


def _find_json(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern)) + sorted(folder.glob(f"annotations/{pattern}"))
    if len(found) > 1:
        names = ", ".join(str(f) for f in found)
        raise ValueError(f"several annotation files in {folder} ({names}); pass one of them")
    return found[0] if found else None


_FINDERS: dict[str, Callable[[Path], Path | None]] = {
    "demo": _find_demo,
    "flickr8k": _find_flickr,
    "karpathy": lambda d: _find_json(d, "dataset_*.json"),
    "coco": lambda d: _find_json(d, "captions_*.json"),
}


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file} is not UTF-8 text ({exc}); re-save it as UTF-8") from exc
    except OSError as exc:
        raise ValueError(f"cannot read {file} ({exc.strerror or exc})") from exc


def _read_json(file: Path) -> Any:
    try:
        return json.loads(_read_text(file))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc})") from exc


Parsed = tuple[list[_Entry], list[tuple[Path, str]], list[Path]]  # entries, problems, roots


def _parse_flickr(ann: Path) -> Parsed:
    if ".token" in ann.name.lower():
        return _parse_flickr_official(ann)
    entries: list[_Entry] = []
    problems: list[tuple[Path, str]] = []
    rows = csv.reader(io.StringIO(_read_text(ann)))
    header = next(rows, None) or []
    if [h.strip().lower() for h in header[:2]] == ["image", "caption"]:
        pending: list[list[str]] = []
    elif len(header) >= 2 and is_image_file(header[0].strip()):
        pending = [header]  # no header line: the first row is already data
    else:
        raise ValueError(f"{ann} should start with the header 'image,caption', got {header}")
    for row in itertools.chain(pending, rows):
        where = f"{ann.name} line {rows.line_num}"
        if not row:
            continue
        if len(row) < 2:
            problems.append((ann, f"{where}: expected 'image,caption'; skipped"))
            continue
        # Captions with unquoted commas come back as extra fields: join them again.
        entries.append(_Entry(row[0].strip(), ",".join(row[1:]), where))
    return entries, problems, _flickr_roots(ann)


def _parse_flickr_official(ann: Path) -> Parsed:
    entries: list[_Entry] = []
    problems: list[tuple[Path, str]] = []
    for n, line in enumerate(_read_text(ann).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{ann.name} line {n}"
        key, tab, caption = line.partition("\t")
        name = key.rsplit("#", 1)[0].strip()
        if not tab or not name:
            problems.append((ann, f"{where}: expected 'name.jpg#k<TAB>caption'; skipped"))
            continue
        entries.append(_Entry(name, caption, where))
    split_of = _official_splits(ann.parent)
    if split_of:
        for e in entries:
            e.split = split_of.get(e.rel)
    return entries, problems, _flickr_roots(ann)


def _official_splits(folder: Path) -> dict[str, str]:
    """Image name -> split, from the official Flickr_8k.*Images.txt lists next to the tokens."""
    split_of: dict[str, str] = {}
    for split, name in _OFFICIAL_SPLITS.items():
        file = folder / name
        if file.is_file():
            for line in _read_text(file).splitlines():
                if line.strip():
                    split_of.setdefault(line.strip(), split)
    return split_of


def _flickr_roots(ann: Path) -> list[Path]:
    return [d / name for d in (ann.parent, ann.parent.parent) for name in _FLICKR_IMAGE_DIRS]


def _parse_coco(ann: Path) -> Parsed:
    data = _read_json(ann)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{ann} is not a COCO captions file (no 'images' list)")
    problems: list[tuple[Path, str]] = []
    files: dict[Any, str] = {}
    for im in data["images"]:
        if isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str):
            files[im["id"]] = im["file_name"]
        else:
            problems.append((ann, f"image entry without id/file_name ({str(im)[:60]}); skipped"))
    entries: list[_Entry] = []
    for k, a in enumerate(data.get("annotations") or []):
        where = f"{ann.name} annotation {k}"
        if not isinstance(a, dict) or a.get("image_id") not in files:
            problems.append((ann, f"{where}: no matching image_id; skipped"))
            continue
        caption = a.get("caption")
        caption = caption if isinstance(caption, str) else ""
        entries.append(_Entry(files[a["image_id"]], caption, where, image_id=str(a["image_id"])))
    tag = ann.stem.rsplit("_", 1)[-1]  # captions_train2017 -> train2017
    base = [ann.parent, ann.parent.parent]
    roots = [d / sub for d in base for sub in ("images", tag, f"images/{tag}")] + base
    return entries, problems, roots


def _parse_karpathy(ann: Path) -> Parsed:
    data = _read_json(ann)
    imgs = data.get("images") if isinstance(data, dict) else None
    if not isinstance(imgs, list):
        raise ValueError(f"{ann} is not a Karpathy split file (no 'images' list)")
    entries: list[_Entry] = []
    problems: list[tuple[Path, str]] = []
    for k, im in enumerate(imgs):
        name = im.get("filename") if isinstance(im, dict) else None
        if not isinstance(name, str):
            problems.append((ann, f"{ann.name} image {k}: no filename; skipped"))
            continue
        rel = f"{im['filepath']}/{name}" if im.get("filepath") else name
        split = _KARPATHY_SPLITS.get(str(im.get("split")))
        image_id = str(im.get("cocoid", rel))
        for s, sent in enumerate(im.get("sentences") or []):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            where = f"{ann.name} image {k} sentence {s}"
            entries.append(_Entry(rel, raw if isinstance(raw, str) else "", where, split, image_id))
    base = [ann.parent, ann.parent.parent]
    roots = base + [d / sub for d in base for sub in ("images", *_FLICKR_IMAGE_DIRS[:2])]
    return entries, problems, roots


def _parse_demo(ann: Path) -> Parsed:
    entries: list[_Entry] = []
    problems: list[tuple[Path, str]] = []
    for n, line in enumerate(_read_text(ann).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{ann.name} line {n}"
        try:
            rec = json.loads(line)
            file, captions = rec["file"], rec["captions"]
            if not isinstance(file, str) or not isinstance(captions, list):
                raise TypeError("file must be a string and captions a list")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append((ann, f"{where}: not a demo record ({exc}); skipped"))
            continue
        entries += [_Entry(file, c if isinstance(c, str) else "", where) for c in captions]
    name = ann.name[: -len(_DEMO_SUFFIX)] if ann.name.endswith(_DEMO_SUFFIX) else ann.stem
    return entries, problems, [ann.parent / name, ann.parent]


_PARSERS: dict[str, Callable[[Path], Parsed]] = {
    "flickr8k": _parse_flickr,
    "coco": _parse_coco,
    "karpathy": _parse_karpathy,
    "demo": _parse_demo,
}


def _pick_root(candidates: list[Path], rels: list[str], ann: Path) -> Path:
    """The candidate folder holding most of a sample of the listed images."""
    folders = list(dict.fromkeys(c for c in candidates if c.is_dir()))
    if not folders:
        raise ValueError(f"no image folder found beside {ann}; pass images=FOLDER")
    unique = list(dict.fromkeys(rels))
    step = max(1, len(unique) // _ROOT_PROBE)
    probe = unique[::step][:_ROOT_PROBE]
    return max(folders, key=lambda d: sum((d / r).is_file() for r in probe))


def _assemble(
    entries: list[_Entry], root: Path, check: bool, max_pixels: int, progress: bool
) -> tuple[list[CaptionImage], list[tuple[Path, str]]]:
    """Group captions by image (first-seen order); report empty captions and bad images."""
    problems: list[tuple[Path, str]] = []
    grouped: dict[str, CaptionImage] = {}
    for e in entries:
        im = grouped.get(e.rel)
        if im is None:
            im = grouped[e.rel] = CaptionImage(root / e.rel, [], e.split, e.image_id or e.rel)
        caption = " ".join(e.caption.split())
        if caption:
            im.captions.append(caption)
        else:
            problems.append((im.path, f"empty caption ({e.where}); skipped"))
    show = progress and len(grouped) > _PROGRESS_MIN_FILES
    kept: list[CaptionImage] = []
    for im in track(grouped.values(), "Checking images", disable=not show, transient=True):
        if not im.path.is_file():
            reason: str | None = "image file not found; its captions are skipped"
        else:
            reason = check_image(im.path, max_pixels=max_pixels) if check else None
        if reason is not None:
            problems.append((im.path, reason))
        elif not im.captions:
            problems.append((im.path, "no non-empty caption; image left out"))
        else:
            kept.append(im)
    return kept, problems


# ----------------------------------------------------------------------------- splits


def split_captions(
    ds: CaptionDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Indices of ``ds.images`` per split (train/val/test), split by image, never by caption.

    The dataset's own split (official Flickr8k lists, Karpathy) is used when it has one;
    images it leaves out stay out, and a missing val split is carved from train with
    ``fractions[1]``. Otherwise a seeded split by image. Images with identical bytes
    always share a split (the most held-out one of their own splits).
    """
    fracs = _check_fractions(fractions)
    groups = _content_groups(ds)
    if any(im.split is not None for im in ds.images):
        out: dict[str, list[int]] = {name: [] for name in SPLITS}
        for group in groups:
            own = [ds.images[i].split for i in group if ds.images[i].split in SPLITS]
            if own:
                out[min(own, key=_LEAK_PRIORITY.__getitem__)] += group  # type: ignore[index]
        if not out["val"] and fracs[1] > 0:
            in_train = set(out["train"])
            train = [g for g in groups if g[0] in in_train]
            carved = _seeded_split(train, (1 - fracs[1], fracs[1], 0.0), seed)
            out["train"], out["val"] = carved["train"], carved["val"]
        return {name: sorted(idx) for name, idx in out.items()}
    return _seeded_split(groups, fracs, seed)


def _content_groups(ds: CaptionDataset) -> list[list[int]]:
    """Image indices grouped by sha256 (unreadable files alone), ordered by first path."""
    by_key: dict[str, list[int]] = {}
    for i, im in enumerate(ds.images):
        try:
            key = file_sha256(im.path)
        except OSError:
            key = f"path:{im.path}"
        by_key.setdefault(key, []).append(i)
    return sorted(by_key.values(), key=lambda g: ds.images[g[0]].path.as_posix())


def _seeded_split(
    groups: list[list[int]], fracs: tuple[float, float, float], seed: int
) -> dict[str, list[int]]:
    units = list(groups)
    random.Random(f"pixtell-caption-split:{seed}").shuffle(units)
    n = len(units)
    n_val, n_test = round(n * fracs[1]), round(n * fracs[2])
    if n >= 3:  # every requested split gets at least one image
        n_val = max(n_val, 1) if fracs[1] > 0 else n_val
        n_test = max(n_test, 1) if fracs[2] > 0 else n_test
    while n_val + n_test > n - 1 and n_val + n_test > 0:  # train keeps at least one
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for k, unit in enumerate(units):
        out["val" if k < n_val else "test" if k < n_val + n_test else "train"] += unit
    return {name: sorted(idx) for name, idx in out.items()}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fracs = tuple(float(f) for f in fractions)
    if len(fracs) != 3 or any(f < 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise ValueError(
            "fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    return fracs  # type: ignore[return-value]


def _key(ds: CaptionDataset, im: CaptionImage) -> str:
    """An image's name in a split file: its path relative to the image root."""
    try:
        return im.path.relative_to(ds.root).as_posix()
    except ValueError:
        return im.path.as_posix()


def write_split(path: StrPath, ds: CaptionDataset, splits: dict[str, list[int]]) -> None:
    """Write ``splits`` as JSON naming images by path relative to ``ds.root`` (atomically)."""
    data = {
        "root": str(ds.root),
        "format": ds.format,
        "splits": {
            name: sorted(_key(ds, ds.images[i]) for i in splits.get(name, [])) for name in SPLITS
        },
    }
    _write_json_atomic(Path(path), data)


def read_split(path: StrPath, ds: CaptionDataset) -> dict[str, list[int]]:
    """Indices of ``ds.images`` per split, from a file written by ``write_split``.

    Images the file names but ``ds`` no longer has (deleted or unreadable since) are
    added to ``ds.problems`` and left out.
    """
    path = Path(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["splits"]
        listed = {name: [str(k) for k in names.get(name, [])] for name in SPLITS}
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path} is not a caption split file ({exc}); re-create it") from exc
    index = {_key(ds, im): i for i, im in enumerate(ds.images)}
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for name, keys in listed.items():
        for k in keys:
            if k in index:
                out[name].append(index[k])
            else:
                ds.problems.append((ds.root / k, f"in {path.name} ({name}) but not usable now"))
    return {name: sorted(idx) for name, idx in out.items()}


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- vocabulary


def build_vocabulary(
    ds: CaptionDataset, splits: dict[str, list[int]], *, min_word_count: int = 5
) -> Vocabulary:
    """The vocabulary of the TRAINING split's captions only (held-out words stay ``<unk>``)."""
    captions = (c for i in splits["train"] for c in ds.images[i].captions)
    return Vocabulary.build(captions, min_word_count=min_word_count)


# ----------------------------------------------------------------------------- torch side


class _Inputs:
    """Image ``i`` as the model sees it: a cached feature row, a decoded uint8 image
    [3, S, S] (``pixels``: normalised on the device, see ``CaptionDataModule``), or the
    transformed image."""

    def __init__(
        self,
        images: Sequence[CaptionImage],
        transform: Callable | None,
        features: np.ndarray | None,
        feature_rows: Sequence[int] | None,
        max_pixels: int,
        min_size: int | None = None,
        pixels: DecodedImages | None = None,
    ) -> None:
        if features is None and transform is None and pixels is None:
            raise ValueError("pass a transform (images), features (a feature cache) or pixels")
        rows = list(range(len(images))) if feature_rows is None else list(feature_rows)
        if features is not None and len(rows) != len(images):
            raise ValueError(f"{len(rows)} feature rows for {len(images)} images")
        self.paths = [im.path for im in images]
        self.transform, self.features, self.rows = transform, features, rows
        self.max_pixels, self.min_size, self.pixels = max_pixels, min_size, pixels

    def __call__(self, i: int) -> torch.Tensor:
        if self.features is not None:
            # np.array copies the row out of a memory map (workers must not share the mapping).
            return torch.from_numpy(np.array(self.features[self.rows[i]], dtype=np.float32))
        if self.pixels is not None:
            return self.pixels.tensor(self.rows[i])
        assert self.transform is not None
        image = load_image(self.paths[i], max_pixels=self.max_pixels, min_size=self.min_size)
        return self.transform(image)


class CaptionTrainDataset(Dataset):
    """Every (image, caption) pair as (image or feature, caption ids, length).

    Index ``k`` is a flat pair index (``pairs[k] == (image, caption)``); pair it with
    ``OneCaptionPerImageSampler`` to see each image once per epoch with a different caption.
    ``features`` (rows ``feature_rows``, default 0..n-1) replaces images and ``transform``.
    """

    def __init__(
        self,
        images: Sequence[CaptionImage],
        vocab: Vocabulary,
        transform: Callable | None = None,
        *,
        features: np.ndarray | None = None,
        feature_rows: Sequence[int] | None = None,
        max_len: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
        pixels: DecodedImages | None = None,
    ) -> None:
        self.inputs = _Inputs(
            images, transform, features, feature_rows, max_pixels, min_size, pixels
        )
        self.encoded = [[vocab.encode(c, max_len) for c in im.captions] for im in images]
        self.pairs = [(i, j) for i, caps in enumerate(self.encoded) for j in range(len(caps))]
        self.first = np.cumsum([0] + [len(c) for c in self.encoded])[:-1].tolist()

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_images(self) -> int:
        """How many images (not pairs) the dataset holds."""
        return len(self.encoded)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, j = self.pairs[k]
        ids = self.encoded[i][j]
        return self.inputs(i), torch.tensor(ids, dtype=torch.long), len(ids)


class OneCaptionPerImageSampler(Sampler[int]):
    """Each image once per epoch, with a seeded caption that changes every epoch.

    An image with ``k`` captions goes through all of them, in a seeded order, every ``k``
    epochs. The epoch is set by ``set_epoch`` (Lightning calls it) and otherwise advances
    by one per pass, so results depend on (seed, epoch) only, not on workers or resumes.
    """

    def __init__(self, ds: CaptionTrainDataset, *, shuffle: bool = True, seed: int = 0) -> None:
        self.counts = [len(c) for c in ds.encoded]
        self.first = ds.first
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s captions and order on the next pass."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.counts)

    def caption_index(self, image: int, epoch: int) -> int:
        """Which of ``image``'s captions is used in ``epoch``."""
        k = self.counts[image]
        order = np.random.default_rng([self.seed, image, epoch // k]).permutation(k)
        return int(order[epoch % k])

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        n = len(self.counts)
        order = np.random.default_rng([self.seed, n, epoch]).permutation(n) if self.shuffle \
            else range(n)  # fmt: skip
        for i in order:
            yield self.first[i] + self.caption_index(int(i), epoch)


class CaptionEvalDataset(Dataset):
    """(image or feature, image index); all raw reference captions are in ``references``."""

    def __init__(
        self,
        images: Sequence[CaptionImage],
        transform: Callable | None = None,
        *,
        features: np.ndarray | None = None,
        feature_rows: Sequence[int] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
        pixels: DecodedImages | None = None,
    ) -> None:
        self.inputs = _Inputs(
            images, transform, features, feature_rows, max_pixels, min_size, pixels
        )
        self.references: list[list[str]] = [list(im.captions) for im in images]
        self.paths: list[Path] = [im.path for im in images]

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.inputs(i), i


def collate_captions(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs [B, ...], caption ids [B, T] padded with ``<pad>``=0, lengths [B])."""
    inputs, captions, lengths = zip(*batch, strict=True)
    padded = pad_sequence(list(captions), batch_first=True, padding_value=0)
    return torch.stack(inputs), padded, torch.tensor(lengths, dtype=torch.long)


def _without_nan_rows(
    ds: CaptionDataset, splits: dict[str, list[int]], features: np.ndarray
) -> dict[str, list[int]]:
    """Leave out images whose feature row is NaN (``FeatureCache.compute`` could not read them)."""
    bad: set[int] = set()
    for start in range(0, len(features), 4096):  # in blocks: features may be a large memmap
        block = np.asarray(features[start : start + 4096])
        block = block.reshape(len(block), -1)
        bad.update(start + int(i) for i in np.flatnonzero(np.isnan(block).any(axis=1)))
    for i in sorted(bad):
        ds.problems.append((ds.images[i].path, "no cached feature (unreadable when encoded)"))
    return {name: [i for i in idx if i not in bad] for name, idx in splits.items()}


class CaptionDataModule(L.LightningDataModule):
    """Train / val / test loaders over an already-made split of a ``CaptionDataset``.

    Training yields ``collate_captions`` batches, one caption per image per epoch;
    val/test yield (inputs, image indices) into ``references(split)``. With ``features``
    (row ``i`` = ``dataset.images[i]``, e.g. from ``FeatureCache.compute``) no image is
    decoded and the transforms are not used. With ``pixels`` (the images decoded once, row
    ``i`` = ``dataset.images[i]``; captioning has no augmentation, so this is the whole
    evaluation transform but the normalisation) batches arrive as uint8 and are normalised
    with ``normalize`` = (mean, std) on the device, in ``on_after_batch_transfer``.
    """

    def __init__(
        self,
        dataset: CaptionDataset,
        splits: dict[str, list[int]],
        vocab: Vocabulary,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        seed: int = 0,
        max_len: int | None = None,
        features: np.ndarray | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
        pixels: DecodedImages | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        if features is not None:
            if len(features) != len(dataset.images):
                raise ValueError(f"{len(features)} feature rows for {len(dataset.images)} images")
            splits = _without_nan_rows(dataset, splits, features)
        if pixels is not None:
            if len(pixels) != len(dataset.images) or normalize is None:
                raise ValueError("pixels need one decoded row per image and normalize=(mean, std)")
            dataset.problems.extend(pixels.problems)
            splits = {k: [i for i in v if pixels.ok[i]] for k, v in splits.items()}
        self.dataset, self.splits, self.vocab = dataset, splits, vocab
        self.train_tf, self.eval_tf = train_transform, eval_transform
        self.batch_size, self.seed, self.max_len = batch_size, seed, max_len
        # One core stays with the training loop.
        self.num_workers = (
            max(0, min(4, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
        )
        self.features, self.max_pixels, self.min_size = features, max_pixels, min_size
        self.pixels, self.normalize = pixels, normalize
        self._train: CaptionTrainDataset | None = None

    def _images(self, split: str) -> list[CaptionImage]:
        return [self.dataset.images[i] for i in self.splits.get(split, [])]

    def train_dataset(self) -> CaptionTrainDataset:
        """The training split as (input, caption ids, length) pairs (tokenized once)."""
        if self._train is None:
            self._train = self._make_train_dataset()
        return self._train

    def _make_train_dataset(self) -> CaptionTrainDataset:
        return CaptionTrainDataset(
            self._images("train"),
            self.vocab,
            self.train_tf,
            features=self.features,
            feature_rows=self._rows("train"),
            max_len=self.max_len,
            max_pixels=self.max_pixels,
            min_size=self.min_size,
            pixels=self.pixels,
        )

    def _rows(self, split: str) -> list[int] | None:
        """Rows of ``split`` in whole-dataset arrays (features or decoded pixels)."""
        whole = self.features is not None or self.pixels is not None
        return self.splits.get(split, []) if whole else None

    def eval_dataset(self, split: str) -> CaptionEvalDataset:
        """``split`` (val or test) as (input, index into its references)."""
        return CaptionEvalDataset(
            self._images(split),
            self.eval_tf,
            features=self.features,
            feature_rows=self._rows(split),
            max_pixels=self.max_pixels,
            min_size=self.min_size,
            pixels=self.pixels,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.normalize is None or batch[0].dtype != torch.uint8:
            return batch
        mean, std = (
            torch.tensor(v, device=batch[0].device).view(1, 3, 1, 1) for v in self.normalize
        )
        return (batch[0].float().div_(255).sub_(mean).div_(std), *batch[1:])

    def references(self, split: str) -> list[list[str]]:
        """All raw reference captions of ``split``, in loader index order."""
        return [list(im.captions) for im in self._images(split)]

    def _kwargs(self) -> dict[str, Any]:
        w = self.num_workers
        return {"batch_size": self.batch_size, "num_workers": w, "persistent_workers": w > 0}

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        sampler = OneCaptionPerImageSampler(ds, shuffle=True, seed=self.seed)
        return DataLoader(
            ds,
            sampler=sampler,
            collate_fn=collate_captions,
            drop_last=ds.num_images > self.batch_size,
            **self._kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("val"), shuffle=False, **self._kwargs())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("test"), shuffle=False, **self._kwargs())
