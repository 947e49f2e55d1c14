"""ImageFolder scan (``DATA/<class>/<image>``), seeded leak-free stratified splits, manifests."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import track

from pixtell.data.images import (
    DEFAULT_MAX_PIXELS,
    StrPath,
    check_image,
    file_sha256,
    is_image_file,
)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
LAYOUT = "DATA/<class>/<image> (one sub-folder per class) or DATA/train|val|test/<class>/<image>"
_PROGRESS_MIN_FILES = 200
_LEAK_PRIORITY = {"test": 0, "val": 1, "train": 2}  # a cross-split duplicate stays in the first


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path  # absolute
    label: int


@dataclass
class ImageFolderScan:
    """Result of scanning an image folder: classes, splits and what was left out and why."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    conflicts: list[list[Path]] = field(default_factory=list)  # duplicates in 2+ class folders
    presplit: bool = False
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


# ----------------------------------------------------------------------------- scanning


def scan_image_folder(
    root: StrPath,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_samples_per_class: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify: bool = True,
    progress: bool = True,
) -> ImageFolderScan:
    """Scan ``root`` into seeded, stratified, leak-free train/val/test splits.

    Unusable files are reported in ``skipped`` (never in a split); identical files are reported
    in ``duplicates`` and always share a split. A group of identical files in two or more class
    folders is also a label conflict, reported in ``conflicts``: its files are kept (like other
    duplicates, in one split) because only the user can tell which label is right.
    """
    fracs = _check_fractions(fractions)
    if max_samples_per_class is not None and max_samples_per_class < 1:
        raise ValueError(f"max_samples_per_class must be >= 1, got {max_samples_per_class}")
    root = _check_root(root)
    presplit = _is_presplit(root)
    folders, skipped = _class_folders(root, presplit)  # (split or None, class) -> folder
    classes = sorted({name for _, name in folders})
    label_of = {name: i for i, name in enumerate(classes)}

    candidates: dict[tuple[str | None, str], list[Path]] = {}
    for key, folder in folders.items():
        files, not_images = _image_files(folder)
        candidates[key] = files
        skipped += not_images
    usable, hashes, bad = _verify_and_hash(candidates, max_pixels, verify, progress)
    skipped += bad
    for key, folder in folders.items():
        if not usable[key]:
            found = len(candidates[key])
            why = f"all {found} image files are unusable" if found else "no image files"
            raise ValueError(
                f"class folder {folder} has no usable images ({why}); "
                "add images or remove the folder"
            )

    samples = {
        key: _subset([Sample(p, label_of[key[1]]) for p in paths], max_samples_per_class, seed)
        for key, paths in usable.items()
    }
    if presplit:
        splits, leaks = _presplit_splits(samples, fracs, seed, hashes)
        skipped += leaks
    else:
        splits = stratified_split([s for v in samples.values() for s in v], fracs, seed, hashes)
    duplicates, _ = _group_by_hash(hashes)
    class_of = {path: key[1] for key, paths in usable.items() for path in paths}
    conflicts = [g for g in duplicates if len({class_of[p] for p in g}) > 1]
    return ImageFolderScan(
        root=root,
        classes=classes,
        splits=splits,
        skipped=sorted(skipped, key=lambda item: str(item[0])),
        duplicates=duplicates,
        conflicts=conflicts,
        presplit=presplit,
        seed=seed,
        fractions=fracs,
    )


def _check_root(root: StrPath) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"data folder {path} does not exist; expected {LAYOUT}")
    if not path.is_dir():
        raise ValueError(f"data folder {path} is not a folder; expected {LAYOUT}")
    return path.resolve()


def _listdir(folder: Path) -> list[Path]:
    """Non-hidden entries of ``folder`` in file-system order (callers sort)."""
    with os.scandir(folder) as entries:
        return [folder / e.name for e in entries if not e.name.startswith(".")]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in _listdir(folder) if p.is_dir())


def _is_presplit(root: Path) -> bool:
    """True when every top-level folder is a split folder, ``train`` (with sub-folders) among them.

    Any other top-level folder makes all of them classes, so a class named ``train`` never flips
    the layout. Top-level files do not decide: they are reported as skipped in either layout.
    """
    names = {d.name for d in _subdirs(root)}
    return "train" in names and names <= set(SPLITS) and bool(_subdirs(root / "train"))


def _class_folders(
    root: Path, presplit: bool
) -> tuple[dict[tuple[str | None, str], Path], list[tuple[Path, str]]]:
    """Map (split or None, class name) to its folder; report stray files and folders."""
    folders: dict[tuple[str | None, str], Path] = {}
    skipped = [(p, _NOT_IN_CLASS) for p in sorted(_listdir(root)) if not p.is_dir()]
    if not presplit:
        folders = {(None, d.name): d for d in _subdirs(root)}
    else:
        for d in _subdirs(root):  # only train/val/test, see _is_presplit
            folders.update({(d.name, c.name): c for c in _subdirs(d)})
            skipped += [(p, _NOT_IN_CLASS) for p in sorted(_listdir(d)) if not p.is_dir()]
    if not folders:
        raise ValueError(f"data folder {root} has no class sub-folders; expected {LAYOUT}")
    return folders, skipped


_NOT_IN_CLASS = "not inside a class folder; move it into a class folder or out of the data folder"


def _image_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (recursively, sorted) and files with a non-image extension."""
    images: list[Path] = []
    others: list[tuple[Path, str]] = []
    pending, seen = [folder], {folder.resolve()}
    while pending:
        for path in _listdir(pending.pop()):
            if path.is_dir():
                if path.resolve() not in seen:  # symlinked folders may form cycles
                    seen.add(path.resolve())
                    pending.append(path)
            elif is_image_file(path):
                images.append(path)
            else:
                ext = path.suffix or "no extension"
                others.append(
                    (path, f"not an image file extension ({ext}); move it out of the data folder")
                )
    return sorted(images), others


def _verify_and_hash(
    candidates: dict[tuple[str | None, str], list[Path]],
    max_pixels: int,
    verify: bool,
    progress: bool,
) -> tuple[dict[tuple[str | None, str], list[Path]], dict[Path, str], list[tuple[Path, str]]]:
    """Check (when ``verify``) and hash every candidate; bad files go to the third result."""
    todo = [(key, p) for key, paths in candidates.items() for p in paths]
    usable: dict[tuple[str | None, str], list[Path]] = {key: [] for key in candidates}
    hashes: dict[Path, str] = {}
    bad: list[tuple[Path, str]] = []
    show = progress and len(todo) > _PROGRESS_MIN_FILES
    for key, path in track(todo, description="Checking images", disable=not show, transient=True):
        reason = check_image(path, max_pixels=max_pixels) if verify else None
        if reason is None:
            try:
                hashes[path] = file_sha256(path)
            except OSError as exc:
                reason = f"cannot read file ({exc.strerror or exc}); check its permissions"
        if reason is None:
            usable[key].append(path)
        else:
            bad.append((path, reason))
    return usable, hashes, bad


def _subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of at most ``limit`` samples (all of them when ``limit`` is None)."""
    samples = sorted(samples, key=_path_key)
    if limit is None or len(samples) <= limit:
        return samples
    label = samples[0].label
    rng = random.Random(f"pixtell-subset:{seed}:{label}")
    return sorted(rng.sample(samples, limit), key=_path_key)


def _presplit_splits(
    samples: dict[tuple[str | None, str], list[Sample]],
    fractions: tuple[float, float, float],
    seed: int,
    hashes: dict[Path, str],
) -> tuple[dict[str, list[Sample]], list[tuple[Path, str]]]:
    """Use the given train/val/test folders; carve ``fractions[1]`` of train as val if missing."""
    given: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for (split, _), items in samples.items():
        given[str(split)].extend(items)
    given, leaks = _drop_cross_split_duplicates(given, hashes)
    has_val = any(split == "val" for split, _ in samples)
    if not has_val and fractions[1] > 0:
        val = fractions[1]
        carved = stratified_split(given["train"], (1 - val, val, 0.0), seed, hashes)
        given["train"], given["val"] = carved["train"], carved["val"]
    return {name: sorted(given[name], key=_path_key) for name in SPLITS}, leaks


def _drop_cross_split_duplicates(
    given: dict[str, list[Sample]], hashes: dict[Path, str]
) -> tuple[dict[str, list[Sample]], list[tuple[Path, str]]]:
    """Keep identical files only in their most held-out split (test, then val, then train)."""
    keeper: dict[str, tuple[str, Path]] = {}
    for split in sorted(given, key=_LEAK_PRIORITY.__getitem__):
        for s in sorted(given[split], key=_path_key):
            keeper.setdefault(hashes[s.path], (split, s.path))
    kept: dict[str, list[Sample]] = {name: [] for name in given}
    leaks: list[tuple[Path, str]] = []
    for split, items in given.items():
        for s in items:
            where, twin = keeper[hashes[s.path]]
            if where == split:
                kept[split].append(s)
            else:
                leaks.append(
                    (
                        s.path,
                        f"same content as {twin} in {where}; left out of {split} "
                        "so the splits do not leak; delete one of the copies",
                    )
                )
    return kept, leaks


# ----------------------------------------------------------------------------- splitting


def stratified_split(
    samples: list[Sample],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: dict[Path, str] | None = None,
) -> dict[str, list[Sample]]:
    """Seeded per-class split into train/val/test; samples sharing a group share a split.

    A group (e.g. a content hash) is one unit, assigned by its first sorted path's label.
    Per class of n units: val = round(n*f_val), test = round(n*f_test); train keeps >= 1 and,
    for n >= 3, val and test get >= 1 when their fraction is > 0. Input order does not matter.
    """
    fracs = _check_fractions(fractions)
    units = _units(samples, groups or {})
    by_class: dict[int, list[list[Sample]]] = defaultdict(list)
    for unit in units:
        by_class[unit[0].label].append(unit)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for label, class_units in sorted(by_class.items()):
        rng = random.Random(f"pixtell-split:{seed}:{label}")
        rng.shuffle(class_units)  # units are already in sorted order
        n_val, n_test = _split_sizes(len(class_units), fracs)
        for i, unit in enumerate(class_units):
            name = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            out[name].extend(unit)
    return {name: sorted(items, key=_path_key) for name, items in out.items()}


def _units(samples: Iterable[Sample], groups: dict[Path, str]) -> list[list[Sample]]:
    """Group samples into split units, each sorted by path, ordered by their first path."""
    seen: set[Path] = set()
    by_key: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=_path_key):
        if s.path in seen:
            raise ValueError(f"sample {s.path} is listed twice; each file may appear only once")
        seen.add(s.path)
        key = groups.get(s.path)
        by_key[f"group:{key}" if key is not None else f"path:{s.path}"].append(s)
    return sorted(by_key.values(), key=lambda unit: _path_key(unit[0]))


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(n_val, n_test) for a class with ``n`` units."""
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else n_val
        n_test = max(n_test, 1) if fractions[2] > 0 else n_test
    while n_val + n_test > n - 1:  # train keeps at least one
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fracs = tuple(float(f) for f in fractions)
    if len(fracs) != 3 or any(f < 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    return fracs  # type: ignore[return-value]


def _path_key(sample: Sample) -> str:
    return sample.path.as_posix()


# ----------------------------------------------------------------------------- duplicates


def find_duplicates(paths: list[Path]) -> tuple[list[list[Path]], dict[Path, str]]:
    """Groups (sorted, len >= 2) of files with identical bytes, and each path's sha256."""
    hashes = {Path(p): file_sha256(p) for p in paths}
    return _group_by_hash(hashes)


def _group_by_hash(hashes: dict[Path, str]) -> tuple[list[list[Path]], dict[Path, str]]:
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path, digest in hashes.items():
        by_hash[digest].append(path)
    groups = [sorted(g, key=Path.as_posix) for g in by_hash.values() if len(g) > 1]
    return sorted(groups, key=lambda g: g[0].as_posix()), hashes


# ----------------------------------------------------------------------------- listing


@dataclass
class ImageListing:
    """What :func:`list_images` found: the images to use and what was left out."""

    paths: list[Path] = field(default_factory=list)  # sorted
    not_searched: int = 0  # images in sub-folders, left out because the search was not recursive
    symlinks: list[Path] = field(default_factory=list)  # symlinked images (and folders): not used
    missing: list[Path] = field(default_factory=list)  # inputs that do not exist
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (folder, reason)


def list_images(
    inputs: StrPath | Sequence[StrPath],
    *,
    recursive: bool = False,
    exclude: StrPath | None = None,
) -> ImageListing:
    """The image files named by ``inputs`` (files and folders), as predict and sort use them.

    Folders contribute their image files (by extension), skipping hidden files and folders as
    scanning does, the folder ``exclude`` (e.g. a sort's output inside its inbox), and symlinks
    (reported in ``symlinks``, never followed, so sorting cannot move a file from outside the
    folder). Sub-folders are searched only when ``recursive``; otherwise their images are
    counted in ``not_searched``. Files named explicitly are kept even when hidden.
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    skip = _folder_id(Path(exclude)) if exclude is not None else None
    listing = ImageListing()
    found: set[Path] = set()
    for item in map(Path, items):
        if item.is_dir():
            _search(item, recursive, skip, listing, found)
        elif item.exists():
            found.add(item)
        else:
            listing.missing.append(item)
    listing.paths = sorted(found)
    listing.symlinks.sort()
    return listing


def _folder_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, to recognise it under any name; None if it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _search(
    folder: Path,
    recursive: bool,
    skip: tuple[int, int] | None,
    listing: ImageListing,
    found: set[Path],
) -> None:
    pending = [(folder, True)]  # (folder, searched); unsearched ones are only counted
    while pending:
        current, searched = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            reason = f"cannot list folder ({exc.strerror or exc}); check its permissions"
            listing.unreadable.append((current, reason))
            continue
        for entry in entries:
            path = current / entry.name
            try:
                if entry.is_symlink():
                    if searched and (is_image_file(path) or (recursive and path.is_dir())):
                        listing.symlinks.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    if skip is None or _folder_id(path) != skip:
                        pending.append((path, searched and recursive))
                elif entry.is_file(follow_symlinks=False) and is_image_file(path):
                    if searched:
                        found.add(path)
                    else:
                        listing.not_searched += 1
            except OSError as exc:  # vanished or unreadable while listing
                reason = f"cannot read ({exc.strerror or exc}); check its permissions"
                listing.unreadable.append((path, reason))


# ----------------------------------------------------------------------------- manifests


def write_split(path: StrPath, scan: ImageFolderScan) -> None:
    """Write ``scan`` as pretty, sorted JSON with paths relative to its root (atomically)."""
    root = scan.root
    data: dict[str, Any] = {
        "root": str(root.resolve()),
        "classes": list(scan.classes),
        "seed": scan.seed,
        "fractions": list(scan.fractions),
        "presplit": scan.presplit,
        "splits": {
            name: sorted([_rel(s.path, root), s.label] for s in scan.splits.get(name, []))
            for name in SPLITS
        },
        "skipped": sorted([_rel(p, root), reason] for p, reason in scan.skipped),
        "duplicates": sorted(sorted(_rel(p, root) for p in g) for g in scan.duplicates),
        "conflicts": sorted(sorted(_rel(p, root) for p in g) for g in scan.conflicts),
    }
    path = Path(path)
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


def read_split(path: StrPath) -> ImageFolderScan:
    """Read a file written by ``write_split``; relative paths are resolved against its root."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        root = Path(data["root"])
        splits = {
            name: [Sample(root / rel, int(label)) for rel, label in data["splits"].get(name, [])]
            for name in SPLITS
        }
        return ImageFolderScan(
            root=root,
            classes=[str(c) for c in data["classes"]],
            splits=splits,
            skipped=[(root / rel, str(reason)) for rel, reason in data.get("skipped", [])],
            duplicates=[[root / rel for rel in g] for g in data.get("duplicates", [])],
            conflicts=[[root / rel for rel in g] for g in data.get("conflicts", [])],
            presplit=bool(data.get("presplit", False)),
            seed=int(data.get("seed", 0)),
            fractions=_check_fractions(data.get("fractions", (0.8, 0.1, 0.1))),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{path} is not a valid split file ({exc}); re-create it with scan + write_split"
        ) from exc


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with posix separators, or absolute when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
