"""On-disk, memory-mapped cache of frozen-encoder features, keyed by encoder and image content.

Layout: ``ROOT/<encoder slug>-<key hash>/`` holds ``key.json`` (the full encoder key, the
feature shape and dtype) and shards: ``<id>.npy`` (N feature rows) plus ``<id>.json`` (the N
image sha256s). A shard's JSON is written last, by atomic rename, after its ``.npy`` is
complete: it is the commit marker, so an interrupted write leaves only ignored files.
Entries are keyed by content, so a renamed file still hits and an edited file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from pixtell.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, StrPath, file_sha256, load_image

EncodeFn = Callable[[list[Image.Image]], Any]  # images -> array-like [B, *shape]
_FLUSH_ROWS = 1024  # compute() commits a shard at least this often (bounded loss on interrupt)


def default_cache_root() -> Path:
    """``$PIXTELL_CACHE`` when set, else ``~/.cache/pixtell/features``."""
    env = os.environ.get("PIXTELL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pixtell" / "features"


def encoder_key(
    name: str, weights: str | None, input_size: int | Sequence[int], **extra: Any
) -> str:
    """A cache key: encoder name, weights identity and input size (plus e.g. the transform).

    ``weights`` must identify the actual parameters: a torchvision weights name, a file's
    sha256, or ``state_dict_digest(model)`` for random or fine-tuned weights.
    """
    size = (
        "x".join(str(s) for s in input_size) if not isinstance(input_size, int) else str(input_size)
    )
    parts = [name, f"weights={weights}", f"size={size}"]
    parts += [f"{k}={extra[k]}" for k in sorted(extra)]
    return "|".join(parts)


def state_dict_digest(module: Any) -> str:
    """sha256 of a torch module's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Features of images under one encoder key, stored under ``root`` (memory-mapped).

    ``get``/``put`` work on sha256 content hashes; ``compute`` takes file paths, encodes only
    the images not cached yet and stores them. Unusable files seen by the last ``compute``
    are in ``problems`` as (path, reason).
    """

    def __init__(self, key: str, root: StrPath | None = None, *, dtype: Any = np.float32) -> None:
        if not key:
            raise ValueError("the encoder key must not be empty")
        self.key = key
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", key)[:48].strip("-") or "encoder"
        self.dir = self.root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        self.dtype = np.dtype(dtype)
        self.problems: list[tuple[Path, str]] = []
        self._index: dict[str, tuple[str, int]] = {}  # sha256 -> (shard id, row)
        self._seen: set[str] = set()  # shard ids already indexed
        self._maps: dict[str, np.ndarray] = {}
        self._shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ reading

    def _refresh(self) -> None:
        """Index committed shards written since the last look (also by other processes)."""
        if not self.dir.is_dir():
            return
        self._read_meta()
        for marker in sorted(self.dir.glob("*.json")):
            sid = marker.stem
            if sid == "key" or sid.startswith(".") or sid in self._seen:
                continue
            try:
                hashes = json.loads(marker.read_text(encoding="utf-8"))["hashes"]
                rows = np.load(self.dir / f"{sid}.npy", mmap_mode="r")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable shard: treated as absent, recomputed if needed
            if len(rows) != len(hashes) or (self._shape and rows.shape[1:] != self._shape):
                continue
            self._seen.add(sid)
            self._maps[sid] = rows
            for row, h in enumerate(hashes):
                self._index.setdefault(str(h), (sid, row))

    def _read_meta(self) -> None:
        if self._shape is not None:
            return
        meta = self.dir / "key.json"
        if meta.is_file():
            data = json.loads(meta.read_text(encoding="utf-8"))
            if data.get("key") != self.key:
                raise ValueError(
                    f"{self.dir} holds features of another encoder ({data.get('key')})"
                )
            self._shape = tuple(int(s) for s in data["shape"])

    def __contains__(self, sha256: object) -> bool:
        self._refresh()
        return sha256 in self._index

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def missing(self, hashes: Sequence[str]) -> list[str]:
        """The hashes (in order, without repeats) that are not cached."""
        self._refresh()
        return list(dict.fromkeys(h for h in hashes if h not in self._index))

    def get(self, hashes: Sequence[str]) -> np.ndarray | None:
        """Features [len(hashes), *shape] in order, or None when any one is not cached."""
        self._refresh()
        if any(h not in self._index for h in hashes) or self._shape is None:
            return None if hashes else np.zeros((0, *(self._shape or ())), self.dtype)
        out = np.empty((len(hashes), *self._shape), dtype=self.dtype)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for pos, h in enumerate(hashes):
            sid, row = self._index[h]
            dst, src = by_shard.setdefault(sid, ([], []))
            dst.append(pos)
            src.append(row)
        for sid, (dst, src) in by_shard.items():
            out[dst] = self._maps[sid][src]
        return out

    # ------------------------------------------------------------------ writing

    def put(self, hashes: Sequence[str], features: Any) -> None:
        """Store one feature row per hash (rows of already cached hashes are not rewritten)."""
        arr = np.asarray(_to_numpy(features), dtype=self.dtype)
        if len(arr) != len(hashes):
            raise ValueError(f"{len(arr)} feature rows for {len(hashes)} hashes")
        self._refresh()
        keep = [i for i, h in enumerate(hashes) if h not in self._index]
        keep = list({hashes[i]: i for i in reversed(keep)}.values())[::-1]  # first of repeats
        if not keep:
            return
        self._write_meta(arr.shape[1:])
        sid = uuid.uuid4().hex
        _atomic_write(self.dir / f"{sid}.npy", lambda fh: np.save(fh, arr[keep]))
        marker = json.dumps({"hashes": [hashes[i] for i in keep]}).encode()
        _atomic_write(self.dir / f"{sid}.json", lambda fh: fh.write(marker))

    def _write_meta(self, shape: tuple[int, ...]) -> None:
        self._read_meta()
        if self._shape is not None:
            if tuple(shape) != self._shape:
                raise ValueError(f"features of shape {tuple(shape)}, cache holds {self._shape}")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"key": self.key, "shape": list(shape), "dtype": self.dtype.str}
        data = json.dumps(meta, indent=1).encode()
        _atomic_write(self.dir / "key.json", lambda fh: fh.write(data))
        self._shape = tuple(shape)

    def compute(
        self,
        paths: Sequence[StrPath],
        encode_fn: EncodeFn,
        *,
        batch_size: int = 64,
        progress: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
    ) -> np.ndarray:
        """Features of ``paths`` in order, running ``encode_fn`` only on uncached images.

        ``encode_fn`` gets a list of RGB images and returns [B, *shape] (array or tensor).
        ``min_size``: ``load_image``'s scaled JPEG decoding (``decode_min_size(input_size)``;
        part of what the encoder sees, so it belongs in the key's ``extra`` too).
        Unusable files get NaN rows and are listed in ``problems``.
        """
        self.problems = []
        paths = [Path(p) for p in paths]
        hashes: list[str | None] = []
        for p in paths:
            try:
                hashes.append(file_sha256(p))
            except OSError as exc:
                hashes.append(None)
                self.problems.append((p, f"cannot read file ({exc.strerror or exc})"))
        todo = self.missing([h for h in hashes if h is not None])
        path_of = {h: p for h, p in zip(hashes, paths, strict=True) if h}
        pending_h: list[str] = []
        pending_f: list[np.ndarray] = []
        with Progress(disable=not progress or not todo, transient=True) as bar:
            task = bar.add_task("Encoding images", total=len(todo))
            for start in range(0, len(todo), batch_size):
                batch_h, batch_im = [], []
                for h in todo[start : start + batch_size]:
                    try:
                        batch_im.append(
                            load_image(path_of[h], max_pixels=max_pixels, min_size=min_size)
                        )
                        batch_h.append(h)
                    except ImageLoadError as err:
                        self.problems.append((path_of[h], err.reason))
                if batch_im:
                    pending_f.append(np.asarray(_to_numpy(encode_fn(batch_im)), self.dtype))
                    pending_h += batch_h
                if len(pending_h) >= _FLUSH_ROWS:
                    self.put(pending_h, np.concatenate(pending_f))
                    pending_h, pending_f = [], []
                bar.advance(task, len(todo[start : start + batch_size]))
            if pending_h:
                self.put(pending_h, np.concatenate(pending_f))
        return self._gather(hashes)

    def _gather(self, hashes: list[str | None]) -> np.ndarray:
        self._refresh()
        ok = [i for i, h in enumerate(hashes) if h is not None and h in self._index]
        found = self.get([hashes[i] for i in ok])  # type: ignore[misc]
        shape = self._shape or (0,)
        out = np.full((len(hashes), *shape), np.nan, dtype=self.dtype)
        if found is not None and ok:
            out[ok] = found
        return out


def _to_numpy(x: Any) -> Any:
    """Tensors (any device, with grad) to numpy; anything else unchanged."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return x


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write via a hidden temp file in the same folder, then rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
