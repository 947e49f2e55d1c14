"""Exact duplicates (same bytes) and near-duplicates (perceptual hash) among image files.

Exact groups come from sha256; near groups join files whose perceptual hashes (imagehash's
DCT ``phash`` at 16x16 = 256 bits) differ in at most ``threshold`` bits, transitively. Resized
and re-encoded copies of an image land within a few bits; on Fashion-MNIST the closest pair
of distinct images was 30 bits apart and copies at most 22, hence the default of 24.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_HASH_SIZE",
    "DEFAULT_NEAR_THRESHOLD",
    "DuplicateGroup",
    "duplicate_groups",
    "hamming_pairs",
    "perceptual_hash",
]

DEFAULT_HASH_SIZE = 16
DEFAULT_NEAR_THRESHOLD = 24  # bits of 256
_BLOCK_BYTES = 1 << 26  # memory for one block of the pairwise XOR


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that hold the same image: ``exact`` (identical bytes) or ``near`` (similar pixels)."""

    kind: Literal["exact", "near"]
    paths: tuple[Path, ...]  # sorted


def perceptual_hash(image: Image.Image, hash_size: int = DEFAULT_HASH_SIZE) -> np.ndarray:
    """imagehash's ``phash`` packed into ``hash_size**2 / 8`` bytes (uint8)."""
    import imagehash  # optional: the ``inspect`` extra

    return np.packbits(imagehash.phash(image, hash_size=hash_size).hash.ravel())


def hamming_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` of rows of packed hashes (N, B) at most ``threshold`` bits apart.

    Brute force in blocks: N^2 / 2 XOR-popcounts, a few seconds for 50,000 images.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    n = len(hashes)
    rows_per_block = max(1, _BLOCK_BYTES // max(1, hashes.size))
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, rows_per_block):
        block = hashes[start : start + rows_per_block]
        dist = np.bitwise_count(block[:, None, :] ^ hashes[None, start:, :]).sum(-1, dtype=np.int32)
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows  # upper triangle of this block: j > i, each pair once
        pairs += zip((rows[keep] + start).tolist(), (cols[keep] + start).tolist(), strict=True)
    return pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def duplicate_groups(
    sha256: Mapping[Path, str],
    phash: Mapping[Path, np.ndarray] | None = None,
    *,
    threshold: int = DEFAULT_NEAR_THRESHOLD,
) -> list[DuplicateGroup]:
    """Exact groups (same sha256) and near groups (phash within ``threshold`` bits).

    A near group joins files of at least two different contents (identical files within it are
    also reported as their own exact group); files without a phash (e.g. undecodable) take part
    in exact groups only. Groups are sorted by their first path.
    """
    by_sha: dict[str, list[Path]] = defaultdict(list)
    for path, digest in sha256.items():
        by_sha[digest].append(Path(path))
    groups = [
        DuplicateGroup("exact", tuple(sorted(g, key=Path.as_posix)))
        for g in by_sha.values()
        if len(g) > 1
    ]
    if phash:
        # one representative hash per content; joining contents, then expanding to their files
        contents = sorted({sha256[p] for p in phash if p in sha256})
        rep: dict[str, np.ndarray] = {}
        for path, h in phash.items():
            if path in sha256:
                rep.setdefault(sha256[path], h)
        if contents:
            uf = _UnionFind(len(contents))
            for i, j in hamming_pairs(np.stack([rep[c] for c in contents]), threshold):
                uf.union(i, j)
            members: dict[int, list[str]] = defaultdict(list)
            for i, c in enumerate(contents):
                members[uf.find(i)].append(c)
            for shas in members.values():
                if len(shas) > 1:
                    paths = [p for s in shas for p in by_sha[s]]
                    groups.append(DuplicateGroup("near", tuple(sorted(paths, key=Path.as_posix))))
    return sorted(groups, key=lambda g: (g.paths[0].as_posix(), g.kind))
