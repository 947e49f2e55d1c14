"""Safe sorting of a folder of images into class folders, with a manifest and undo.

The sorter knows nothing about models: it receives a batched ``predict`` callable.
Files are copied (or moved) to ``out/<class>/<name>``; nothing is ever overwritten
(clashes get ``name_1.ext``, ``name_2.ext``, ...; a copy whose bytes are already there is
recorded, not made again), every completed operation is recorded in a JSON Lines manifest
right away, and :func:`undo_sort` reverses it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pixtell.data.folders import list_images
from pixtell.data.images import file_sha256

__all__ = [
    "Placement",
    "Prediction",
    "PredictFn",
    "SortInterrupted",
    "SortResult",
    "UndoResult",
    "move_files",
    "sort_folder",
    "undo_sort",
]

Prediction = tuple[str, float]
PredictFn = Callable[[list[Path]], list[Prediction | Exception]]

MANIFEST_NAME = "sort-manifest.jsonl"
UNDONE_SUFFIX = ".undone"
# Version 2 added the "already-sorted" action; an undo that knows only version 1 would treat
# it as a copy and delete a file that an earlier sort made, so older readers must refuse it.
MANIFEST_VERSION = 2
_READABLE_VERSIONS = (1, 2)
ALREADY_SORTED = "already-sorted"
_SYMLINK_REASON = (
    "symbolic link; left in place so that no file outside the inbox is moved or copied: "
    "sort the folder of the file it points to, or replace the link with the file"
)
# Errors of os.link that mean "hard links are not possible here", not "something is wrong".
_NO_LINK_ERRNOS = {
    errno.EXDEV,
    errno.EPERM,
    errno.EMLINK,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.ENOSYS,
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Placement:
    """Where one file went (or would go, in a dry run), and why."""

    source: Path
    destination: Path
    label: str  # the predicted class, also for files sent to the others folder
    probability: float
    already_sorted: bool = False  # copy mode: the same bytes were already at ``destination``


@dataclass
class SortResult:
    """Outcome of :func:`sort_folder`."""

    manifest: Path
    counts: dict[str, int]  # per output folder, already-sorted files included
    skipped: list[tuple[Path, str]]  # (file, reason): left where it is
    dry_run: bool
    moved: bool
    placements: list[Placement] = field(default_factory=list)
    not_searched: int = 0  # images in sub-folders of the inbox, left out as not recursive

    @property
    def verb(self) -> str:
        """What happened to the placed files: "copied", "moved" or "would sort"."""
        if self.dry_run:
            return "would sort"
        return "moved" if self.moved else "copied"


class SortInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`sort_folder` between two files; ``result`` says what was done.

    The manifest in ``result.manifest`` records every file placed so far (none for a dry run),
    so :func:`undo_sort` can reverse the partial sort.
    """

    def __init__(self, result: SortResult) -> None:
        super().__init__(
            f"sorting interrupted after {len(result.placements)} files ({result.verb})"
        )
        self.result = result


@dataclass
class UndoResult:
    """Outcome of :func:`undo_sort`."""

    restored: int
    removed_copies: int
    problems: list[tuple[Path, str]]
    already_sorted: int = 0  # files that were in place before that sort: left there


# --------------------------------------------------------------------------- helpers


def _progress(enabled: bool) -> Progress:
    """A rich progress bar on stderr; harmless when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so a file operation and its manifest line stay together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _check_folder_name(name: object, what: str) -> str:
    """Return ``name`` if it is a plain folder name, else raise ValueError."""
    seps = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if not isinstance(name, str) or name in {"", ".", ".."} or any(s in name for s in seps):
        raise ValueError(f"{what} {name!r} is not a plain folder name (no path separators).")
    return name


def _candidates(path: Path, sep: str = "_") -> Iterator[Path]:
    """``path``, then ``<stem><sep>1<suffix>``, ``<stem><sep>2<suffix>``, ..."""
    yield path
    for i in count(1):
        yield path.with_name(f"{path.stem}{sep}{i}{path.suffix}")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _sha_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


# --------------------------------------------------------------------------- file operations


def _copy_exclusive(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest``, which must not exist (FileExistsError); return the sha256."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            shutil.copystat(src, dest)
        except BaseException:
            dest.unlink(missing_ok=True)  # we created it, so removing it loses nothing
            raise
    return digest.hexdigest()


def _link_first_free(src: Path, targets: Iterable[Path]) -> Path | None:
    """Hard-link ``src`` to the first free target; None when hard links are impossible here."""
    for target in targets:
        try:
            os.link(src, target, follow_symlinks=False)
            return target
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno in _NO_LINK_ERRNOS:
                return None
            raise
    raise FileExistsError(errno.EEXIST, "destination already exists", str(target))


def _copy_first_free(src: Path, targets: Iterable[Path]) -> tuple[Path, str]:
    """Copy ``src`` to the first free target; return it and the sha256 of the copied bytes."""
    for target in targets:
        try:
            return target, _copy_exclusive(src, target)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "destination already exists", str(target))


def _transfer(src: Path, target: Path, *, move: bool, unique: bool = True) -> tuple[Path, str]:
    """Copy or move ``src`` to ``target`` without overwriting anything; return (dest, sha256).

    With ``unique`` a taken name becomes ``name_1.ext``, ``name_2.ext``, ...; without it a
    taken target raises FileExistsError. A move is a hard link + unlink where possible,
    else copy, verify the copy's sha256, then unlink the source.
    """

    def targets() -> Iterator[Path]:
        return _candidates(target) if unique else iter([target])

    if move:
        sha = file_sha256(src)
        dest = _link_first_free(src, targets())
        if dest is not None:
            _unlink_source(src, dest)
            return dest, sha
    dest, sha = _copy_first_free(src, targets())
    if move:
        if file_sha256(dest) != sha:
            dest.unlink()
            raise OSError(f"copy of {src} to {dest} did not verify; source kept")
        _unlink_source(src, dest)
    return dest, sha


def _holds(path: Path, size: int, sha: str) -> bool:
    """True when ``path`` is a regular file (not a symlink) with these bytes."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return False
    except OSError:
        return False
    return _sha_or_none(path) == sha


def _copy_unless_present(src: Path, target: Path) -> tuple[Path, str, bool]:
    """Copy ``src`` to ``target`` or its first free ``_N`` name, unless a taken name on the way
    already holds the same bytes; return (destination, sha256, whether it was already there)."""
    known: tuple[int, str] | None = None
    for cand in _candidates(target):
        try:
            return cand, _copy_exclusive(src, cand), False
        except FileExistsError:
            known = known or (src.stat().st_size, file_sha256(src))
            if _holds(cand, *known):
                return cand, known[1], True
    raise AssertionError("unreachable: _candidates never ends")


def _unlink_source(src: Path, dest: Path) -> None:
    """Finish a move; if the source cannot be removed, drop the new copy instead."""
    try:
        src.unlink()
    except OSError:
        dest.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- sorting


def _free_manifest_path(path: Path) -> Iterator[Path]:
    """Candidate manifest names whose file and ``.undone`` twin are both free."""
    for cand in _candidates(path, sep="-"):
        if not cand.exists() and not cand.with_name(cand.name + UNDONE_SUFFIX).exists():
            yield cand


class _ManifestWriter:
    """Appends one JSON object per line, flushed to disk before returning."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for cand in _free_manifest_path(path):
            try:
                self._fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
            except FileExistsError:
                continue
            self.path = cand
            break
        self.write(header)

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _entry(source: Path, **fields: Any) -> dict[str, Any]:
    base = {
        "type": "entry",
        "source": str(source),
        "destination": None,
        "class": None,
        "probability": None,
        "sha256": None,
        "action": "skip",
        "status": "skipped",
        "reason": None,
    }
    return base | fields


def _route(pred: Prediction | Exception, threshold: float, others: str) -> tuple[str, str, float]:
    """Map a prediction to (folder, class, probability); raise ValueError for unusable ones."""
    if isinstance(pred, BaseException):
        raise ValueError(str(pred) or type(pred).__name__)
    try:
        name, prob = pred
        prob = float(prob)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"predict returned an invalid prediction {pred!r}") from exc
    _check_folder_name(name, "Predicted class")
    if not math.isfinite(prob):
        raise ValueError(f"predicted probability {prob} is not a finite number")
    return (name if prob >= threshold else others), name, prob


def _plan_dest(src: Path, target: Path, planned: dict[Path, Path], move: bool) -> tuple[Path, bool]:
    """What a real run would pick, for dry runs: (destination, already there); nothing is made.

    ``planned`` maps the names this dry run has given out to the files that would fill them.
    """
    known: tuple[int, str] | None = None
    for cand in _candidates(target):
        occupant = planned.get(cand, cand)
        if occupant == cand and not (cand.exists() or cand.is_symlink()):
            planned[cand] = src
            return cand, False
        if not move:
            known = known or (src.stat().st_size, file_sha256(src))
            if _holds(occupant, *known):
                return cand, True
    raise AssertionError("unreachable: _candidates never ends")


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _validate(inbox: Path, out: Path, threshold: float, others: str, batch_size: int) -> None:
    if not inbox.is_dir():
        raise ValueError(f"Inbox folder {inbox} does not exist or is not a folder.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    _check_folder_name(others, "The others folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"Output folder {out} exists and is not a folder.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if out == inbox:
        raise ValueError(
            f"The output folder {out} is the inbox itself: class folders would be mixed with the "
            "unsorted images, and a recursive sort would sort them again. Choose another output "
            f"folder, e.g. {inbox / 'sorted'} (left out when the inbox is read) or "
            f"{inbox.with_name(inbox.name + '-sorted')}."
        )


@dataclass(frozen=True)
class _Job:
    """The settings every file of one sort shares."""

    out: Path
    threshold: float
    others: str
    move: bool


def sort_folder(
    inbox: Path,
    predict: PredictFn,
    out: Path,
    *,
    threshold: float = 0.6,
    others: str = "others",
    move: bool = False,
    dry_run: bool = False,
    manifest: Path | None = None,
    batch_size: int = 32,
    recursive: bool = False,
    progress: bool = True,
) -> SortResult:
    """Copy (or move) each image in ``inbox`` to ``out/<class>/`` by ``predict``'s top class.

    Images whose probability is below ``threshold`` go to ``out/<others>/``; images for
    which ``predict`` returns an exception, and symlinks, stay where they are and are reported
    in ``skipped``. In copy mode a file whose bytes are already at its destination (or at one
    of its ``_N`` names), e.g. from an earlier sort, is recorded as already sorted instead of
    copied again. Every completed operation is appended to a JSON Lines manifest (default
    ``out/sort-manifest.jsonl``, never overwriting an older one) that :func:`undo_sort`
    reverses. ``dry_run`` only plans (without a progress bar): nothing on disk changes.

    Raises ValueError for bad arguments (``out`` may not be the inbox itself) and
    :class:`SortInterrupted`, carrying the partial result, on Ctrl-C: the file being placed
    is finished and recorded first.
    """
    inbox, out = Path(inbox).resolve(), Path(out).resolve()
    _validate(inbox, out, threshold, others, batch_size)
    listing = list_images(inbox, recursive=recursive, exclude=out)
    left_out = [(p, _SYMLINK_REASON) for p in listing.symlinks] + listing.unreadable
    manifest = Path(manifest).resolve() if manifest else out / MANIFEST_NAME
    result = SortResult(
        manifest=manifest,
        counts={},
        skipped=[],
        dry_run=dry_run,
        moved=move,
        not_searched=listing.not_searched,
    )
    job = _Job(out=out, threshold=threshold, others=others, move=move)
    header = {
        "type": "header",
        "version": MANIFEST_VERSION,
        "inbox": str(inbox),
        "out": str(out),
        "threshold": threshold,
        "others": others,
        "move": move,
        "recursive": recursive,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    writer = None
    if dry_run:
        result.manifest = next(_free_manifest_path(manifest))
    else:
        writer = _ManifestWriter(manifest, header)
        result.manifest = writer.path
    try:
        for path, reason in left_out:
            with _sigint_deferred():
                result.skipped.append((path, reason))
                if writer is not None:
                    writer.write(_entry(path, reason=reason))
        _run_sort(listing.paths, predict, job, batch_size, progress and not dry_run, result, writer)
    except KeyboardInterrupt as exc:
        raise SortInterrupted(result) from exc
    finally:
        if writer is not None:
            writer.close()
    return result


def _predict_batch(predict: PredictFn, batch: list[Path]) -> list[Prediction | Exception]:
    """``predict(batch)``; if the whole batch fails, retry file by file to isolate the culprit."""
    try:
        preds = predict(batch)
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        return [_predict_batch(predict, [path])[0] for path in batch]
    if len(preds) != len(batch):
        raise ValueError(f"predict returned {len(preds)} results for {len(batch)} files.")
    return list(preds)


def _run_sort(
    files: list[Path],
    predict: PredictFn,
    job: _Job,
    batch_size: int,
    progress: bool,
    result: SortResult,
    writer: _ManifestWriter | None,
) -> None:
    planned: dict[Path, Path] = {}
    with _progress(progress) as bar:
        task = bar.add_task("Sorting", total=len(files))
        for batch in _batches(files, batch_size):
            preds = _predict_batch(predict, batch)
            for src, pred in zip(batch, preds, strict=True):
                with _sigint_deferred():
                    _sort_one(src, pred, job, result, writer, planned)
                bar.advance(task)


def _sort_one(
    src: Path,
    pred: Prediction | Exception,
    job: _Job,
    result: SortResult,
    writer: _ManifestWriter | None,
    planned: dict[Path, Path],
) -> None:
    """Place one file (or plan it, when ``writer`` is None) and record the outcome."""
    label: dict[str, Any] = {}
    sha = None
    try:
        folder, name, prob = _route(pred, job.threshold, job.others)
        label = {"class": name, "probability": prob}
        target = job.out / folder / src.name
        if writer is None:
            dest, already = _plan_dest(src, target, planned, job.move)
        elif job.move:
            target.parent.mkdir(parents=True, exist_ok=True)
            dest, sha = _transfer(src, target, move=True)
            already = False
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            dest, sha, already = _copy_unless_present(src, target)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        result.skipped.append((src, reason))
        if writer is not None:
            writer.write(_entry(src, **label, sha256=_sha_or_none(src), reason=reason))
        return
    result.counts[folder] = result.counts.get(folder, 0) + 1
    result.placements.append(Placement(src, dest, name, prob, already_sorted=already))
    if writer is not None:
        action = ALREADY_SORTED if already else "move" if job.move else "copy"
        writer.write(
            _entry(src, **label, destination=str(dest), sha256=sha, action=action, status="done")
        )


# --------------------------------------------------------------------------- undo


def _read_manifest(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Header, entries and problems (an unreadable last line, from a crash mid-write)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records, problems = [], []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i != len(lines) - 1:
                raise ValueError(f"Manifest {path} is corrupt at line {i + 1}: {exc}.") from exc
            problems.append(f"last line is incomplete and was ignored: {line[:80]!r}")
    if not records or records[0].get("type") != "header":
        raise ValueError(f"{path} is not a pixtell sort manifest (no header line).")
    if records[0].get("version") not in _READABLE_VERSIONS:
        raise ValueError(f"Manifest {path} has unsupported version {records[0].get('version')}.")
    entries = [r for r in records[1:] if r.get("type") == "entry" and r.get("status") == "done"]
    return records[0], entries, problems


def _source_is_link(src: Path, dest: Path) -> bool:
    """True when ``src`` is a symlink, or leads to ``dest`` itself through a linked folder.

    Deleting ``dest`` could then take away what ``src`` shows, so ``src`` counts as occupied
    by something other than the sorted file: undo keeps ``dest`` and reports it.
    """
    if src.is_symlink():
        return True
    try:
        return src.exists() and src.resolve() == dest.resolve()
    except OSError:  # e.g. a symlink loop: not ours to judge, keep everything
        return True


def _undo_move(entry: dict[str, Any], result: UndoResult) -> None:
    src, dest, sha = Path(entry["source"]), Path(entry["destination"]), entry["sha256"]
    if _source_is_link(src, dest):
        result.problems.append(
            (src, f"source path holds a symlink (or a linked folder); {dest} left in place")
        )
        return
    if src.exists():
        if _sha_or_none(src) != sha:
            result.problems.append(
                (src, f"source path is occupied by a different file; {dest} left in place")
            )
            return
        if dest.exists() and _sha_or_none(dest) == sha:
            dest.unlink()  # the same bytes are back at the source, so this is a duplicate
        result.restored += 1
        return
    if not dest.exists():
        result.problems.append((src, f"file is missing: neither {src} nor {dest} exists"))
        return
    src.parent.mkdir(parents=True, exist_ok=True)
    try:
        _transfer(dest, src, move=True, unique=False)
    except OSError as exc:
        result.problems.append((src, f"could not move {dest} back: {exc}"))
        return
    result.restored += 1
    if file_sha256(src) != sha:
        result.problems.append((src, "restored, but its content differs from the sorted file"))


def _undo_copy(entry: dict[str, Any], result: UndoResult) -> None:
    src, dest, sha = Path(entry["source"]), Path(entry["destination"]), entry["sha256"]
    if not dest.exists():
        return
    if _sha_or_none(dest) != sha:
        result.problems.append((dest, "copy was modified after sorting; left in place"))
    elif _source_is_link(src, dest):
        result.problems.append(
            (dest, f"original {src} is now a symlink (or in a linked folder); copy kept")
        )
    elif not src.exists():
        result.problems.append(
            (dest, f"original {src} is gone, so this copy is now the only one; copy kept")
        )
    elif _sha_or_none(src) != sha:
        result.problems.append((dest, f"original {src} changed after sorting; copy kept"))
    else:
        dest.unlink()
        result.removed_copies += 1


def _undo_already_sorted(entry: dict[str, Any], result: UndoResult) -> None:
    """The file was in place before that sort (an earlier sort made it): it stays."""
    result.already_sorted += 1


def _undo_unknown(entry: dict[str, Any], result: UndoResult) -> None:
    result.problems.append(
        (Path(entry["source"]), f"unknown action {entry.get('action')!r}; left as it is")
    )


_UNDO: dict[str, Callable[[dict[str, Any], UndoResult], None]] = {
    "move": _undo_move,
    "copy": _undo_copy,
    ALREADY_SORTED: _undo_already_sorted,
}


def _remove_empty_folders(folders: Iterable[Path], out: Path) -> None:
    """Remove the given class folders under ``out`` if (and only if) they are empty."""
    for folder in sorted(set(folders), reverse=True):
        if folder != out and _is_within(folder, out):
            with suppress(OSError):
                folder.rmdir()  # fails unless empty, atomically


def _mark_undone(manifest: Path) -> Path:
    """Rename ``manifest`` to ``<name>.undone`` without overwriting anything."""
    for cand in _candidates(manifest.with_name(manifest.name + UNDONE_SUFFIX)):
        try:
            os.link(manifest, cand)
        except FileExistsError:
            continue
        except OSError:  # no hard links here: fall back to a checked rename
            if cand.exists():
                continue
            manifest.rename(cand)
            return cand
        manifest.unlink()
        return cand
    raise AssertionError("unreachable")


def undo_sort(manifest: Path, *, progress: bool = True) -> UndoResult:
    """Reverse the sort recorded in ``manifest`` (last operation first).

    Moved files go back to their source (never over a different file); copies are
    deleted only if unchanged and the original is still there. A source path that now
    holds a symlink counts as occupied: nothing it could lead to is deleted. Files that were
    already sorted before that sort stay. Class folders left empty are removed. When no
    problem remains the manifest is renamed to ``<name>.undone``; otherwise it stays, and
    undo can be run again after fixing them.
    """
    manifest = Path(manifest)
    if manifest.name.endswith(UNDONE_SUFFIX) or (
        not manifest.exists() and manifest.with_name(manifest.name + UNDONE_SUFFIX).exists()
    ):
        raise ValueError(f"Manifest {manifest} has already been undone.")
    if not manifest.is_file():
        raise ValueError(f"Manifest {manifest} does not exist.")
    header, entries, notes = _read_manifest(manifest)
    result = UndoResult(restored=0, removed_copies=0, problems=[(manifest, n) for n in notes])
    with _progress(progress) as bar:
        task = bar.add_task("Undoing", total=len(entries))
        for entry in reversed(entries):
            with _sigint_deferred():
                _UNDO.get(entry.get("action", ""), _undo_unknown)(entry, result)
            bar.advance(task)
    out = Path(header["out"])
    _remove_empty_folders((Path(e["destination"]).parent for e in entries), out)
    if not result.problems:
        _mark_undone(manifest)
    return result


# --------------------------------------------------------------------------- moves chosen elsewhere


def move_files(
    moves: Sequence[tuple[Path, Path]],
    *,
    root: Path,
    manifest: Path,
    header: dict[str, Any] | None = None,
    progress: bool = True,
) -> SortResult:
    """Move each ``(file, folder)`` into ``folder`` with the same safety, manifest and
    :func:`undo_sort` as a sort (e.g. files relabelled by ``classify inspect --fix``).

    Nothing is overwritten (a taken name becomes ``name_1.ext``); symlinks and files that cannot
    be moved stay and are reported in ``skipped``. ``root`` is the manifest's ``out``: folders
    below it that undo leaves empty are removed. ``header`` adds fields to the manifest header.
    """
    root = Path(root).resolve()
    head = {
        "type": "header",
        "version": MANIFEST_VERSION,
        "inbox": str(root),
        "out": str(root),
        "move": True,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    } | (header or {})
    result = SortResult(manifest=manifest, counts={}, skipped=[], dry_run=False, moved=True)
    writer = _ManifestWriter(Path(manifest).resolve(), head)
    result.manifest = writer.path
    try:
        with _progress(progress) as bar:
            task = bar.add_task("Moving", total=len(moves))
            for src, folder in moves:
                with _sigint_deferred():
                    _move_one(Path(src), Path(folder), result, writer)
                bar.advance(task)
    except KeyboardInterrupt as exc:
        raise SortInterrupted(result) from exc
    finally:
        writer.close()
    return result


def _move_one(src: Path, folder: Path, result: SortResult, writer: _ManifestWriter) -> None:
    name = folder.name
    try:
        if src.is_symlink():
            raise ValueError(_SYMLINK_REASON)
        folder.mkdir(parents=True, exist_ok=True)
        dest, sha = _transfer(src, folder / src.name, move=True)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        result.skipped.append((src, reason))
        writer.write(_entry(src, sha256=_sha_or_none(src), reason=reason))
        return
    result.counts[name] = result.counts.get(name, 0) + 1
    result.placements.append(Placement(src, dest, name, math.nan))
    fields = {"class": name, "destination": str(dest), "sha256": sha}
    writer.write(_entry(src, **fields, action="move", status="done"))
