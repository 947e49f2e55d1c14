"""Procedural demo images: coloured shapes on muted textures, with captions and exact boxes.

No download: ``pixtell demo`` generates its data here. Every scene carries the
classification label (shape of the first object), five reference captions and,
for every object, a tight box computed from the very mask it was composited with.
Everything random comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 170, 60),
    "blue": (35, 80, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 45, 190),
    "orange": (250, 125, 15),
}
# Longer side of the object's tight box as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.32, 0.44),
    "medium": (0.48, 0.62),
    "large": (0.66, 0.85),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "checker", "noise", "gradient")

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "round shape", "disk"),
    "square": ("square", "square shape", "four-sided shape"),
    "triangle": ("triangle", "triangular shape", "three-sided shape"),
    "star": ("star", "star shape", "five-pointed star"),
    "hexagon": ("hexagon", "hexagonal shape", "six-sided shape"),
    "cross": ("cross", "plus sign", "cross shape"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "blank", "uniform"),
    "stripes": ("striped", "stripy", "lined"),
    "checker": ("checkered", "checked", "chequered"),
    "noise": ("noisy", "speckled", "mottled"),
    "gradient": ("gradient", "shaded", "fading"),
}

_SUPERSAMPLE = 4  # masks are drawn at 4x and box-filtered down: antialiased edges
_MASK_MIN = 48  # mask values below this are zeroed, so every box pixel is visibly object
_MASK_LUT = [0] * _MASK_MIN + list(range(_MASK_MIN, 256))
_MAX_IOU = 0.3
_PLACEMENT_TRIES = 32
_LAYOUT_TRIES = 8
_ROTATION_PERIOD: dict[str, float] = {
    "circle": 0.0,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "hexagon": 60.0,
    "cross": 90.0,
}


@dataclass(frozen=True)
class DemoObject:
    """One drawn object; ``box`` is (x_min, y_min, x_max, y_max) in pixels, max exclusive."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]


@dataclass
class DemoScene:
    """A rendered RGB image with its objects, background kind and five captions."""

    image: Image.Image
    objects: list[DemoObject]
    background: str
    captions: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Classification label: the shape of the first object."""
        return self.objects[0].shape

    def meta(self, file: str | None = None) -> dict[str, Any]:
        """JSON-ready metadata: objects (shape, color, size, box), background, captions."""
        out: dict[str, Any] = {} if file is None else {"file": file}
        out["objects"] = [{**asdict(o), "box": [float(v) for v in o.box]} for o in self.objects]
        out["background"] = self.background
        out["captions"] = list(self.captions)
        return out


# ---------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size) float32; read-only."""
    c = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(c, c)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def _muted_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation colours close to each other (a low-contrast texture)."""
    base = rng.uniform(60.0, 200.0) + rng.uniform(-25.0, 25.0, 3)
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 40.0) + rng.uniform(-8.0, 8.0, 3)
    c1 = np.clip(base, 0.0, 255.0)
    return c1, np.clip(c1 + delta, 0.0, 255.0)


def _projection(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coordinates projected on a random direction, in pixels."""
    xx, yy = _grid(size)
    theta = rng.uniform(0.0, np.pi)
    return xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))


def _weights(kind: str, rng: np.random.Generator, size: int) -> np.ndarray | None:
    """Per-pixel blend weight in [0, 1] between the two background colours."""
    scale = size / 64.0
    if kind == "plain":
        return None
    if kind == "stripes":
        t = _projection(rng, size) / (rng.uniform(4.0, 12.0) * scale) + rng.uniform(0.0, 1.0)
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * t)
    if kind == "checker":
        xx, yy = _grid(size)
        cell = rng.uniform(5.0, 14.0) * scale
        ox, oy = rng.uniform(0.0, cell, 2)
        return ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.float32)
    if kind == "noise":
        n = int(rng.integers(4, 12))
        low = (rng.uniform(0.0, 255.0, (n, n))).astype(np.uint8)
        smooth = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        fine = rng.normal(0.0, 0.08, (size, size))
        return np.clip(np.asarray(smooth, np.float32) / 255.0 + fine, 0.0, 1.0)
    if kind == "gradient":
        t = _projection(rng, size)
        return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    raise ValueError(f"unknown background {kind!r}: use one of {', '.join(BACKGROUNDS)}")


def render_background(rng: np.random.Generator, kind: str, img_size: int) -> Image.Image:
    """A muted, low-contrast RGB texture of the given kind."""
    c1, c2 = _muted_pair(rng)
    w = _weights(kind, rng, img_size)
    if w is None:
        arr = np.broadcast_to(c1, (img_size, img_size, 3))
    else:
        arr = c1 + w[..., None] * (c2 - c1)
    return Image.fromarray(np.rint(arr).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------- objects


@cache
def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (k, 2) of the shape, unrotated, within the unit circle; cached, read-only."""
    if shape == "cross":
        a = 1.0 / 3.0
        pts = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1),
               (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1)]  # fmt: skip
        out = np.asarray(pts, dtype=np.float64)
    elif shape == "star":
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        out = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    else:
        n, start = {"square": (4, 45.0), "triangle": (3, -90.0), "hexagon": (6, 0.0)}[shape]
        ang = np.deg2rad(start + 360.0 / n * np.arange(n))
        out = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    out.setflags(write=False)
    return out


def _outline(shape: str, rng: np.random.Generator, extent: float) -> np.ndarray:
    """Randomly rotated vertices, centred on their box, whose longer box side is ``extent``."""
    pts = _unit_polygon(shape)
    theta = np.deg2rad(rng.uniform(0.0, _ROTATION_PERIOD[shape]))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = pts @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - (lo + hi) / 2.0) * (extent / float((hi - lo).max()))


def _geometry(shape: str, rng: np.random.Generator, extent: float, img_size: int) -> np.ndarray:
    """Pixel vertices of the object (a circle: its bounding corners), fully inside the image."""
    if shape == "circle":
        pts = np.array([[-0.5, -0.5], [0.5, 0.5]]) * extent
    else:
        pts = _outline(shape, rng, extent)
    half = (pts.max(axis=0) - pts.min(axis=0)) / 2.0
    margin = 0.5
    return pts + rng.uniform(half + margin, img_size - half - margin)


def _rasterize(shape: str, pts: np.ndarray, img_size: int) -> Image.Image:
    """The object's antialiased "L" mask: drawn at 4x, box-filtered down, faint edges cut."""
    k = _SUPERSAMPLE
    big = Image.new("L", (img_size * k, img_size * k), 0)
    draw = ImageDraw.Draw(big)
    xy = [(float(x), float(y)) for x, y in pts * k]
    if shape == "circle":
        draw.ellipse([xy[0], xy[1]], fill=255)
    else:
        draw.polygon(xy, fill=255)
    return big.reduce(k).point(_MASK_LUT)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Overlap of two (x0, y0, x1, y1) boxes: max(IoU, 0.6 * intersection / smaller area).

    Below 0.3 means IoU < 0.3 and the smaller box is less than half covered.
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    if union <= 0:
        return 0.0
    return max(inter / union, 0.6 * inter / max(min(area_a, area_b), 1e-9))


def _max_overlap(box: tuple[float, ...], taken: list[tuple[float, ...]]) -> float:
    """Largest overlap of ``box`` with any of ``taken`` (0 when none)."""
    return max((_overlap(box, t) for t in taken), default=0.0)


def _place_object(
    rng: np.random.Generator, shape: str, img_size: int, others: list[DemoObject]
) -> tuple[float, DemoObject, Image.Image]:
    """Draw one object whose box overlaps the ``others``' boxes little (IoU < 0.3).

    Its colour differs from the others' while colours remain. Retries with new
    size and position (checked first on the vertices' box, cheaply); after a
    quarter of the tries only small objects are drawn. Returns (overlap, object,
    mask) of the first fit, else of the least overlapping try.
    """
    free = [c for c in COLORS if c not in {o.color for o in others}] or list(COLORS)
    color = str(rng.choice(free))
    taken = [o.box for o in others]
    best: tuple[float, str, np.ndarray] | None = None
    for attempt in range(_PLACEMENT_TRIES):
        size = "small" if attempt >= _PLACEMENT_TRIES // 4 else str(rng.choice(list(SIZES)))
        pts = _geometry(shape, rng, rng.uniform(*SIZES[size]) * img_size, img_size)
        approx = _max_overlap((*pts.min(axis=0), *pts.max(axis=0)), taken)
        if best is None or approx < best[0]:
            best = (approx, size, pts)
        if approx < _MAX_IOU - 0.05:
            break
    assert best is not None
    _, size, pts = best
    mask = _rasterize(shape, pts, img_size)
    bbox = mask.getbbox()
    assert bbox is not None, "object mask is empty"
    box = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    return _max_overlap(box, taken), DemoObject(shape, color, size, box), mask


def _layout(
    rng: np.random.Generator, kinds: list[str], img_size: int
) -> list[tuple[DemoObject, Image.Image]]:
    """Place objects of the given shapes in order; start over while any overlaps too much."""
    best: tuple[float, list[tuple[DemoObject, Image.Image]]] | None = None
    for _ in range(_LAYOUT_TRIES):
        placed: list[tuple[DemoObject, Image.Image]] = []
        worst = 0.0
        for kind in kinds:
            overlap, obj, mask = _place_object(rng, kind, img_size, [o for o, _ in placed])
            placed.append((obj, mask))
            worst = max(worst, overlap)
        if best is None or worst < best[0]:
            best = (worst, placed)
        if worst < _MAX_IOU:
            break
    assert best is not None
    return best[1]


def _paint(img: Image.Image, color: str, mask: Image.Image, rng: np.random.Generator) -> None:
    """Composite the object in its named colour (slightly jittered) through ``mask``."""
    rgb = np.clip(np.asarray(COLORS[color]) + rng.integers(-12, 13, 3), 0, 255)
    img.paste(tuple(int(v) for v in rgb), (0, 0, *img.size), mask)


# ---------------------------------------------------------------------------- captions


def _an(phrase: str) -> str:
    """Prefix the right indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _position(box: tuple[float, float, float, float], img_size: int) -> str:
    """Where the box centre lies, in words ('in the top left', 'in the center', ...)."""
    cx, cy = (box[0] + box[2]) / 2 / img_size, (box[1] + box[3]) / 2 / img_size
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the center"


_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_captions(
    objects: list[DemoObject], background: str, img_size: int, rng: np.random.Generator
) -> list[str]:
    """Five different lower-case captions; each names every object's colour and shape."""

    def pick(words: tuple[str, ...]) -> str:
        return str(words[int(rng.integers(len(words)))])

    def syn(words: tuple[str, ...]) -> str:
        return str(words[1 + int(rng.integers(len(words) - 1))])

    full = [_an(f"{o.size} {o.color} {o.shape}") for o in objects]
    short = [_an(f"{o.color} {o.shape}") for o in objects]
    loose = [_an(f"{syn(SIZE_WORDS[o.size])} {o.color} {syn(SHAPE_WORDS[o.shape])}")
             for o in objects]  # fmt: skip
    placed = [_an(f"{o.color} {pick(SHAPE_WORDS[o.shape])} {_position(o.box, img_size)}")
              for o in objects]  # fmt: skip
    pic = [_an(f"{pick(SIZE_WORDS[o.size])} {o.color} {pick(SHAPE_WORDS[o.shape])}")
           for o in objects]  # fmt: skip
    n = len(objects)
    there = (f"there is {loose[0]}" if n == 1
             else f"there are {_NUMBERS[n] if n < 10 else n} shapes: {_join(loose)}")  # fmt: skip
    return [
        f"{_join(full)} on {_an(BACKGROUND_WORDS[background][0])} background",
        _join(short),
        there,
        _join(placed),
        f"a picture of {_join(pic)} on {_an(pick(BACKGROUND_WORDS[background]))} background",
    ]


# Relation words: (short, long) for "a is <rel> b"; the inverse names b first.
_RELATION_WORDS: dict[str, tuple[str, str]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
_INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
CAPTION_STYLES: tuple[str, ...] = ("relations", "varied")


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def left_to_right(objects: list[DemoObject]) -> list[DemoObject]:
    """The objects ordered by box centre x (ties: top first, then drawing order)."""
    order = sorted(range(len(objects)), key=lambda k: (*_centre(objects[k].box), k))
    return [objects[k] for k in order]


def relation(a: DemoObject, b: DemoObject) -> str:
    """Where ``a`` lies relative to ``b``: 'left', 'right', 'above' or 'below'.

    The larger of the horizontal and vertical centre offsets decides (image y grows down).
    """
    (ax, ay), (bx, by) = _centre(a.box), _centre(b.box)
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):
        return "left" if dx >= 0 else "right"
    return "above" if dy > 0 else "below"


def make_relation_captions(objects: list[DemoObject]) -> list[str]:
    """Five distinct lower-case captions naming the objects left to right with spatial relations.

    The first is canonical, e.g. "a small red circle left of a large blue square above a
    medium green star": each object's size, colour and shape, consecutive objects joined by
    where the earlier lies relative to the later (``relation``). The others vary it as people
    do, with no random words: longer relation phrases ("to the left of", "over"), a count
    ("there are two shapes: ..."), the reverse order with inverse relations ("right of",
    "below"), and sizes omitted with "next to" for side-by-side pairs. Deterministic.
    """
    if not objects:
        raise ValueError("a scene has at least one object")
    objs = left_to_right(objects)
    rels = [relation(a, b) for a, b in zip(objs, objs[1:], strict=False)]
    full = [_an(f"{o.size} {o.color} {o.shape}") for o in objs]
    bare = [_an(f"{o.color} {o.shape}") for o in objs]

    def chain(names: list[str], words: list[str]) -> str:
        parts = [names[0]]
        for word, name in zip(words, names[1:], strict=True):
            parts += [word, name]
        return " ".join(parts)

    short = [_RELATION_WORDS[r][0] for r in rels]
    canonical = chain(full, short)
    n = len(objs)
    if n == 1:
        o = objs[0]
        return [canonical, f"one {o.size} {o.color} {o.shape}", f"there is {canonical}",
                f"a picture of {canonical}", bare[0]]  # fmt: skip
    count = f"there are {_NUMBERS[n] if n < 10 else n} shapes: {canonical}"
    long = chain(full, [_RELATION_WORDS[r][1] for r in rels])
    reverse = chain(full[::-1], [_RELATION_WORDS[_INVERSE[r]][0] for r in rels[::-1]])
    beside = ["next to" if r in ("left", "right") else _RELATION_WORDS[r][0] for r in rels]
    return [canonical, long, count, reverse, chain(bare, beside)]


# ---------------------------------------------------------------------------- scenes


def render_scene(
    rng: np.random.Generator,
    *,
    img_size: int = 64,
    n_objects: int = 1,
    shape: str | None = None,
    background: str | None = None,
) -> DemoScene:
    """Render one scene: ``n_objects`` shapes on a random (or given) background.

    ``shape`` fixes the first object's shape (the label); the others are random.
    Later objects are drawn over earlier ones; boxes are those of each object's
    own full mask (amodal), pairwise IoU < 0.3 whenever such a layout was found
    (always in practice up to 4 objects at 64x64; crowded scenes keep the best try).
    """
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    if n_objects < 1:
        raise ValueError("n_objects must be at least 1")
    if background is None:
        background = str(rng.choice(BACKGROUNDS))
    img = render_background(rng, background, img_size)
    kinds = [str(rng.choice(SHAPES)) for _ in range(n_objects)]
    if shape is not None:
        kinds[0] = shape
    objects: list[DemoObject] = []
    for obj, mask in _layout(rng, kinds, img_size):
        _paint(img, obj.color, mask, rng)
        objects.append(obj)
    captions = make_captions(objects, background, img_size, rng)
    return DemoScene(image=img, objects=objects, background=background, captions=captions)


def meta_path(out: Path) -> Path:
    """Where ``make_classification_folder(out)`` writes its per-image metadata."""
    return out.parent / f"{out.name}-meta.jsonl"


def objects_path(out: Path) -> Path:
    """Where ``make_caption_scenes(out)`` writes each scene's objects (JSON lines as
    ``meta_path``'s, ``file`` being the image's name), the truth of hallucination metrics.
    Not ``meta_path``: that would make the folder read as the demo caption format."""
    return out.parent / f"{out.name}-objects.jsonl"


def make_classification_folder(
    out: Path,
    *,
    n_per_class: int = 200,
    img_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``out/<shape>/<shape>_<i:04d>.png`` (one object each, balanced classes).

    Per-image metadata (objects with boxes, background, captions) goes to
    ``meta_path(out)`` as JSON lines, outside the class folders. Image ``i`` of
    class ``c`` depends only on ``(seed, c, i)``, so a smaller ``n_per_class``
    gives a prefix of a larger one. Refuses a non-empty ``out`` or an existing
    metadata file unless ``overwrite``; a new ``out`` appears only when complete.
    """
    out, meta = Path(out), meta_path(Path(out))
    if not overwrite:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
        if meta.exists():
            raise FileExistsError(f"{meta} exists: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    in_place = out.is_dir() and any(out.iterdir())
    work = out if in_place else Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lines = _write_class_images(work, n_per_class, img_size, seed, progress)
        if not in_place:
            if out.exists():
                out.rmdir()
            work.rename(out)
    finally:
        if not in_place and work.exists():
            shutil.rmtree(work)
    partial = meta.with_name(meta.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(meta)
    return out


def _write_class_images(
    root: Path, n_per_class: int, img_size: int, seed: int, progress: bool
) -> list[str]:
    """Render and save every class image under ``root``; returns the metadata JSON lines."""
    from rich.progress import track

    for name in SHAPES:
        (root / name).mkdir(exist_ok=True)
    jobs = [(c, i) for i in range(n_per_class) for c in range(len(SHAPES))]
    lines: list[str] = []
    for c, i in track(jobs, description="demo images", disable=not progress, transient=True):
        rng = np.random.default_rng([seed, c, i])
        scene = render_scene(rng, img_size=img_size, shape=SHAPES[c])
        rel = f"{SHAPES[c]}/{SHAPES[c]}_{i:04d}.png"
        scene.image.save(root / rel, format="PNG", compress_level=3)
        lines.append(json.dumps(scene.meta(rel), sort_keys=True))
    return lines


def make_caption_scenes(
    out: Path,
    *,
    n_images: int = 1500,
    img_size: int = 64,
    seed: int = 0,
    max_objects: int = 3,
    progress: bool = True,
    style: str = "relations",
) -> Path:
    """Write captioned scenes in the Flickr8k Kaggle layout: ``out/Images/scene_<i:05d>.png``
    and ``out/captions.txt`` (CSV, header ``image,caption``, five captions per scene).

    ``style`` "relations" (``make_relation_captions``: objects left to right joined by
    spatial relations) or "varied" (``make_captions``: five templates with synonyms and
    background words). Scene ``i`` has 1..``max_objects`` shapes and its image depends only
    on ``(seed, i)``, whatever the style. Its objects (the ground truth of hallucination
    metrics) go to ``objects_path(out)``. Refuses a non-empty ``out`` or an existing metadata
    file; ``out`` appears only when complete.
    """
    import csv

    from rich.progress import track

    if max_objects < 1 or n_images < 1:
        raise ValueError("n_images and max_objects must be at least 1")
    if style not in CAPTION_STYLES:
        raise ValueError(f"unknown caption style {style!r}: use one of {', '.join(CAPTION_STYLES)}")
    out = Path(out)
    meta = objects_path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
    if meta.exists():
        raise FileExistsError(f"{meta} exists: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    lines: list[str] = []
    try:
        (work / "Images").mkdir()
        with open(work / "captions.txt", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["image", "caption"])
            jobs = track(range(n_images), "caption scenes", disable=not progress, transient=True)
            for i in jobs:
                rng = np.random.default_rng([seed, i])
                n_objects = int(rng.integers(1, max_objects + 1))
                scene = render_scene(rng, img_size=img_size, n_objects=n_objects)
                name = f"scene_{i:05d}.png"
                scene.image.save(work / "Images" / name, format="PNG", compress_level=3)
                captions = (
                    make_relation_captions(scene.objects)
                    if style == "relations"
                    else scene.captions
                )
                writer.writerows([name, caption] for caption in captions)
                record = {**scene.meta(name), "captions": list(captions)}
                lines.append(json.dumps(record, sort_keys=True))
        if out.exists():
            out.rmdir()
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    partial = meta.with_name(meta.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(meta)
    return out


def make_detection_scenes(
    out: Path,
    *,
    n_images: int = 600,
    img_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    progress: bool = True,
) -> Path:
    """Write detection scenes as a COCO dataset: ``out/images/scene_<i:05d>.png`` and
    ``out/annotations.json`` (categories 1..6 = ``SHAPES``, each object's exact box).

    Scene ``i`` has 1..``max_objects`` shapes and depends only on ``(seed, i)``. Refuses a
    non-empty ``out``; ``out`` appears only when complete.
    """
    from rich.progress import track

    if max_objects < 1 or n_images < 1:
        raise ValueError("n_images and max_objects must be at least 1")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    try:
        (work / "images").mkdir()
        jobs = track(range(n_images), "detection scenes", disable=not progress, transient=True)
        for i in jobs:
            rng = np.random.default_rng([seed, i])
            n_objects = int(rng.integers(1, max_objects + 1))
            scene = render_scene(rng, img_size=img_size, n_objects=n_objects)
            name = f"scene_{i:05d}.png"
            scene.image.save(work / "images" / name, format="PNG", compress_level=3)
            images.append({"id": i + 1, "file_name": name, "width": img_size, "height": img_size})
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.box  # exclusive max: already continuous pixel coordinates
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": SHAPES.index(obj.shape) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": f"pixtell demo detection scenes (seed {seed})"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)
            ],
        }
        text = json.dumps(coco, indent=1)
        (work / "annotations.json").write_text(text + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out
