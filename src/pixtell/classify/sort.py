"""Safe sorting of a folder of images into class folders, with a manifest and undo.

The sorter knows nothing about models: it receives a batched ``predict`` callable.
Files are copied (or moved) to ``out/<class>/<name>``; nothing is ever overwritten
(clashes get ``name_1.ext``, ``name_2.ext``, ...), every completed operation is
recorded in a JSON Lines manifest right away, and :func:`undo_sort` reverses it.
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pixtell.data.images import IMAGE_EXTENSIONS, file_sha256

__all__ = ["Prediction", "PredictFn", "SortResult", "UndoResult", "sort_folder", "undo_sort"]

Prediction = tuple[str, float]
PredictFn = Callable[[list[Path]], list[Prediction | Exception]]

MANIFEST_NAME = "sort-manifest.jsonl"
UNDONE_SUFFIX = ".undone"
MANIFEST_VERSION = 1
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


@dataclass
class SortResult:
    """Outcome of :func:`sort_folder`."""

    manifest: Path
    counts: dict[str, int]
    skipped: list[tuple[Path, str]]
    dry_run: bool
    moved: bool
    placements: list[tuple[Path, Path]] = field(default_factory=list)  # (source, destination)


@dataclass
class UndoResult:
    """Outcome of :func:`undo_sort`."""

    restored: int
    removed_copies: int
    problems: list[tuple[Path, str]]


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


def _unlink_source(src: Path, dest: Path) -> None:
    """Finish a move; if the source cannot be removed, drop the new copy instead."""
    try:
        src.unlink()
    except OSError:
        dest.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- sorting


def _collect(inbox: Path, out: Path, recursive: bool) -> list[Path]:
    """Image files in ``inbox``, sorted; hidden files, symlinks and files in ``out`` left out."""
    found = inbox.rglob("*") if recursive else inbox.iterdir()
    skip_out = out != inbox and _is_within(out, inbox)
    files = []
    for path in found:
        rel = path.relative_to(inbox)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.is_symlink() or not path.is_file():
            continue
        if skip_out and _is_within(path, out):
            continue
        files.append(path)
    return sorted(files)


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


def _plan_dest(target: Path, reserved: set[Path]) -> Path:
    """The name a real run would pick, for dry runs (no file is created)."""
    dest = next(c for c in _candidates(target) if c not in reserved and not c.exists())
    reserved.add(dest)
    return dest


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _validate(
    inbox: Path, out: Path, threshold: float, others: str, batch_size: int, recursive: bool
) -> None:
    if not inbox.is_dir():
        raise ValueError(f"Inbox folder {inbox} does not exist or is not a folder.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    _check_folder_name(others, "The others folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"Output folder {out} exists and is not a folder.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if recursive and out == inbox:
        raise ValueError("out must not be the inbox itself when sorting recursively.")


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
    which ``predict`` returns an exception stay where they are and are reported in
    ``skipped``. Every completed operation is appended to a JSON Lines manifest
    (default ``out/sort-manifest.jsonl``, never overwriting an older one) that
    :func:`undo_sort` reverses. ``dry_run`` only plans: nothing on disk changes.
    """
    inbox, out = Path(inbox).resolve(), Path(out).resolve()
    _validate(inbox, out, threshold, others, batch_size, recursive)
    files = _collect(inbox, out, recursive)
    manifest = Path(manifest).resolve() if manifest else out / MANIFEST_NAME
    result = SortResult(manifest=manifest, counts={}, skipped=[], dry_run=dry_run, moved=move)
    header = {
        "type": "header",
        "version": MANIFEST_VERSION,
        "inbox": str(inbox),
        "out": str(out),
        "threshold": threshold,
        "others": others,
        "move": move,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if dry_run:
        result.manifest = next(_free_manifest_path(manifest))
        _run_sort(files, predict, out, threshold, others, move, batch_size, progress, result, None)
        return result
    writer = _ManifestWriter(manifest, header)
    result.manifest = writer.path
    try:
        _run_sort(
            files, predict, out, threshold, others, move, batch_size, progress, result, writer
        )
    finally:
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
    out: Path,
    threshold: float,
    others: str,
    move: bool,
    batch_size: int,
    progress: bool,
    result: SortResult,
    writer: _ManifestWriter | None,
) -> None:
    reserved: set[Path] = set()
    with _progress(progress) as bar:
        task = bar.add_task("Sorting", total=len(files))
        for batch in _batches(files, batch_size):
            preds = _predict_batch(predict, batch)
            for src, pred in zip(batch, preds, strict=True):
                with _sigint_deferred():
                    _sort_one(src, pred, out, threshold, others, move, result, writer, reserved)
                bar.advance(task)


def _sort_one(
    src: Path,
    pred: Prediction | Exception,
    out: Path,
    threshold: float,
    others: str,
    move: bool,
    result: SortResult,
    writer: _ManifestWriter | None,
    reserved: set[Path],
) -> None:
    """Place one file (or plan it, when ``writer`` is None) and record the outcome."""
    label: dict[str, Any] = {}
    try:
        folder, name, prob = _route(pred, threshold, others)
        label = {"class": name, "probability": prob}
        target = out / folder / src.name
        if writer is None:
            dest = _plan_dest(target, reserved)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            dest, sha = _transfer(src, target, move=move)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        result.skipped.append((src, reason))
        if writer is not None:
            writer.write(_entry(src, **label, sha256=_sha_or_none(src), reason=reason))
        return
    result.counts[folder] = result.counts.get(folder, 0) + 1
    result.placements.append((src, dest))
    if writer is not None:
        writer.write(
            _entry(
                src,
                **label,
                destination=str(dest),
                sha256=sha,
                action="move" if move else "copy",
                status="done",
            )
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
    if records[0].get("version") != MANIFEST_VERSION:
        raise ValueError(f"Manifest {path} has unsupported version {records[0].get('version')}.")
    entries = [r for r in records[1:] if r.get("type") == "entry" and r.get("status") == "done"]
    return records[0], entries, problems


def _undo_move(entry: dict[str, Any], result: UndoResult) -> None:
    src, dest, sha = Path(entry["source"]), Path(entry["destination"]), entry["sha256"]
    if src.exists() or src.is_symlink():
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
    elif _sha_or_none(src) != sha:
        result.problems.append((dest, f"original {src} is gone or changed; copy kept"))
    else:
        dest.unlink()
        result.removed_copies += 1


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
    deleted only if unchanged and the original is still there. Class folders left
    empty are removed. When no problem remains the manifest is renamed to
    ``<name>.undone``; otherwise it stays, and undo can be run again after fixing them.
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
                (_undo_move if entry["action"] == "move" else _undo_copy)(entry, result)
            bar.advance(task)
    out = Path(header["out"])
    _remove_empty_folders((Path(e["destination"]).parent for e in entries), out)
    if not result.problems:
        _mark_undone(manifest)
    return result
