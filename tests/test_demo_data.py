"""Procedural demo data: determinism, folder layout, exact boxes, captions, metadata."""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixtell.data.demo import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLORS,
    SHAPE_WORDS,
    SHAPES,
    SIZES,
    DemoObject,
    DemoScene,
    make_caption_scenes,
    make_classification_folder,
    make_relation_captions,
    meta_path,
    objects_path,
    render_background,
    render_scene,
)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _scene(seed: int, **kwargs: object) -> DemoScene:
    return render_scene(np.random.default_rng(seed), **kwargs)  # type: ignore[arg-type]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.png")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "shapes"
    return make_classification_folder(out, n_per_class=4, img_size=48, seed=3, progress=False)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_folder(tmp_path: Path, folder: Path) -> None:
    again = make_classification_folder(
        tmp_path / "shapes", n_per_class=4, img_size=48, seed=3, progress=False
    )
    assert _files(again) == _files(folder)
    assert meta_path(again).read_bytes() == meta_path(folder).read_bytes()


def test_different_seed_gives_different_images(tmp_path: Path, folder: Path) -> None:
    other = make_classification_folder(
        tmp_path / "shapes", n_per_class=4, img_size=48, seed=4, progress=False
    )
    a, b = _files(folder), _files(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_render_scene_is_deterministic_and_leaves_global_rng_alone() -> None:
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    one, two = _scene(11, n_objects=3), _scene(11, n_objects=3)
    assert one.image.tobytes() == two.image.tobytes()
    assert (one.objects, one.captions, one.background) == (two.objects, two.captions,
                                                            two.background)  # fmt: skip
    assert _scene(12, n_objects=3).image.tobytes() != one.image.tobytes()
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state


def test_smaller_folder_is_a_prefix_of_a_larger_one(tmp_path: Path, folder: Path) -> None:
    small = make_classification_folder(
        tmp_path / "shapes", n_per_class=2, img_size=48, seed=3, progress=False
    )
    big = _files(folder)
    assert all(big[k] == v for k, v in _files(small).items())


# ---------------------------------------------------------------------------- folder layout


def test_balanced_class_folders(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(SHAPES)
    assert all(p.is_dir() for p in folder.iterdir()), "no top-level files among the classes"
    for shape in SHAPES:
        names = sorted(p.name for p in (folder / shape).iterdir())
        assert names == [f"{shape}_{i:04d}.png" for i in range(4)]
        with Image.open(folder / shape / names[0]) as im:
            assert (im.mode, im.size) == ("RGB", (48, 48))


def test_meta_jsonl_matches_files(folder: Path) -> None:
    path = meta_path(folder)
    assert path == folder.parent / "shapes-meta.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(_files(folder))
    for row in rows:
        assert row["file"].split("/")[0] == row["objects"][0]["shape"]
        assert len(row["objects"]) == 1 and len(row["captions"]) == 5
        assert row["background"] in BACKGROUNDS
        obj = row["objects"][0]
        assert obj["color"] in COLORS and obj["size"] in SIZES
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48


def test_refuses_to_overwrite_user_files(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_classification_folder(tmp_path, n_per_class=1, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    meta_path(tmp_path / "new").write_text("mine")
    with pytest.raises(FileExistsError):
        make_classification_folder(tmp_path / "new", n_per_class=1, progress=False)
    assert meta_path(tmp_path / "new").read_text() == "mine"
    assert not (tmp_path / "new").exists()


def test_overwrite_regenerates_in_place(tmp_path: Path, folder: Path) -> None:
    out = tmp_path / "shapes"
    make_classification_folder(out, n_per_class=4, img_size=48, seed=9, progress=False)
    make_classification_folder(
        out, n_per_class=4, img_size=48, seed=3, progress=False, overwrite=True
    )
    assert _files(out) == _files(folder)
    assert meta_path(out).read_bytes() == meta_path(folder).read_bytes()


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixtell.data.demo as demo

    calls = iter(range(5))

    def failing(*args: object, **kwargs: object) -> DemoScene:
        if next(calls, None) is None:
            raise KeyboardInterrupt
        return render_scene(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        make_classification_folder(tmp_path / "shapes", n_per_class=2, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- boxes


def _assert_tight(scene: DemoScene) -> None:
    """On a plain background: nothing outside the boxes, object pixels on every box edge."""
    arr = np.asarray(scene.image).astype(int)
    inside = np.zeros(arr.shape[:2], bool)
    for obj in scene.objects:
        x0, y0, x1, y1 = (int(v) for v in obj.box)
        assert obj.box == (x0, y0, x1, y1), "boxes lie on pixel edges"
        inside[y0:y1, x0:x1] = True
    outside = arr[~inside]
    bg = outside[0]
    assert (outside == bg).all(), "pixels outside the boxes are background"
    differs = (arr != bg).any(axis=2)
    for obj in scene.objects:
        x0, y0, x1, y1 = (int(v) for v in obj.box)
        edges = [differs[y0, x0:x1], differs[y1 - 1, x0:x1],
                 differs[y0:y1, x0], differs[y0:y1, x1 - 1]]  # fmt: skip
        assert all(e.any() for e in edges), f"box {obj.box} is not tight"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("img_size", [32, 64, 97])
def test_single_object_box_is_tight(shape: str, img_size: int) -> None:
    for seed in range(15):
        _assert_tight(_scene(seed, img_size=img_size, shape=shape, background="plain"))


def test_multi_object_boxes_are_tight() -> None:
    for seed in range(30):
        _assert_tight(_scene(seed, n_objects=2 + seed % 3, background="plain"))


@pytest.mark.parametrize("n_objects", [1, 2, 3, 4])
def test_boxes_inside_image(n_objects: int) -> None:
    for seed in range(25):
        size = (32, 64, 80)[seed % 3]
        for obj in _scene(seed, img_size=size, n_objects=n_objects).objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def test_objects_are_not_cut_off_by_the_border() -> None:
    for seed in range(80):
        obj = _scene(seed, img_size=(32, 64)[seed % 2], shape="circle").objects[0]
        w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
        assert abs(w - h) <= 1, f"clipped circle {obj.box}"


@pytest.mark.parametrize("n_objects", [2, 3, 4])
def test_multi_object_boxes_overlap_little(n_objects: int) -> None:
    for seed in range(40):
        scene = _scene(seed, n_objects=n_objects)
        assert len(scene.objects) == n_objects
        for a, b in combinations(scene.objects, 2):
            assert _iou(a.box, b.box) < 0.3


def test_size_label_matches_box() -> None:
    for seed in range(60):
        obj = _scene(seed, img_size=64).objects[0]
        lo, hi = SIZES[obj.size]
        side = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1])
        assert lo * 64 - 2 <= side <= hi * 64 + 2
        assert side >= 0.25 * 64


# ---------------------------------------------------------------------------- content


def test_shape_argument_sets_label_and_all_shapes_appear() -> None:
    for shape in SHAPES:
        scene = _scene(0, shape=shape, n_objects=2)
        assert scene.label == scene.objects[0].shape == shape
    seen = {_scene(seed).label for seed in range(60)}
    assert seen == set(SHAPES)


def _mentions(text: str, words: tuple[str, ...] | list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


@pytest.mark.parametrize("n_objects", [1, 2, 3])
def test_captions_mention_shape_and_colour_of_each_object(n_objects: int) -> None:
    for seed in range(20):
        scene = _scene(seed, n_objects=n_objects)
        assert len(scene.captions) == 5 and len(set(scene.captions)) == 5
        for cap in scene.captions:
            assert cap == cap.lower() and cap.strip() == cap
            for obj in scene.objects:
                assert _mentions(cap, [obj.color]), (cap, obj)
                assert _mentions(cap, SHAPE_WORDS[obj.shape]), (cap, obj)
        for obj in scene.objects:
            assert _mentions(scene.captions[0], [f"{obj.size} {obj.color} {obj.shape}"])


def test_caption_grammar() -> None:
    scene = render_scene(np.random.default_rng(5), n_objects=1, shape="circle")
    assert scene.captions[1] == f"a {scene.objects[0].color} circle".replace(
        "a orange", "an orange"
    )
    pair = _scene(1, n_objects=2)
    assert " and " in pair.captions[1] and pair.captions[2].startswith("there are two shapes")
    assert not any(re.search(r"\ba [aeiou]", c) for s in (scene, pair) for c in s.captions)


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds_are_muted_textures(kind: str) -> None:
    arr = np.asarray(render_background(np.random.default_rng(0), kind, 64)).astype(int)
    assert arr.shape == (64, 64, 3)
    spread = arr.max(axis=(0, 1)) - arr.min(axis=(0, 1))
    assert (spread == 0).all() if kind == "plain" else spread.max() > 5
    assert spread.max() <= 90, "background contrast stays below the objects'"
    assert int(arr.max(axis=2).mean() - arr.min(axis=2).mean()) < 60, "low saturation"


def test_rejects_unknown_names() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown shape"):
        render_scene(rng, shape="blob")
    with pytest.raises(ValueError, match="unknown background"):
        render_scene(rng, background="lava")


def test_demo_object_is_frozen() -> None:
    obj = DemoObject("circle", "red", "small", (0.0, 0.0, 1.0, 1.0))
    with pytest.raises(AttributeError):
        obj.shape = "star"  # type: ignore[misc]


# ---------------------------------------------------------------------------- relation captions

_REL = r"to the left of|to the right of|left of|right of|above|below|over|under|next to"
_OBJ = rf"an? (?:(?:{'|'.join(SIZES)}) )?(?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)})"


def _parse(caption: str) -> tuple[list[str], list[str]]:
    """(object phrases, relation phrases) of a relation caption, its lead-in dropped."""
    body = re.sub(r"^(?:there (?:is|are \w+ shapes:)|a picture of) ", "", caption)
    body = re.sub(r"^one ", "a ", body)
    match = re.fullmatch(rf"({_OBJ})((?: (?:{_REL}) {_OBJ})*)", body)
    assert match, caption
    rels = re.findall(rf" ({_REL}) (?={_OBJ})", match.group(2))
    objs = re.findall(_OBJ, body)
    return objs, rels


def _holds(word: str, a: DemoObject, b: DemoObject) -> bool:
    """Whether "a <word> b" is true of the box centres (y grows downwards)."""
    dx = (b.box[0] + b.box[2] - a.box[0] - a.box[2]) / 2
    dy = (b.box[1] + b.box[3] - a.box[1] - a.box[3]) / 2
    horizontal = abs(dx) >= abs(dy)
    return {
        "left of": horizontal and dx >= 0,
        "to the left of": horizontal and dx >= 0,
        "right of": horizontal and dx <= 0,
        "to the right of": horizontal and dx <= 0,
        "next to": horizontal,
        "above": not horizontal and dy > 0,
        "over": not horizontal and dy > 0,
        "below": not horizontal and dy < 0,
        "under": not horizontal and dy < 0,
    }[word]


def _obj(color: str, shape: str, size: str, cx: float, cy: float) -> DemoObject:
    return DemoObject(shape, color, size, (cx - 4, cy - 4, cx + 4, cy + 4))


def test_relation_captions_by_hand() -> None:
    circle = _obj("red", "circle", "small", 10, 30)
    square = _obj("blue", "square", "large", 50, 35)
    star = _obj("orange", "star", "medium", 55, 5)
    expected = [
        "a small red circle left of a large blue square",
        "a small red circle to the left of a large blue square",
        "there are two shapes: a small red circle left of a large blue square",
        "a large blue square right of a small red circle",
        "a red circle next to a blue square",
    ]
    assert make_relation_captions([square, circle]) == expected
    assert make_relation_captions([circle, square]) == expected  # named left to right
    # The star is right of the square but much higher: the vertical offset decides.
    assert make_relation_captions([star, circle, square]) == [
        "a small red circle left of a large blue square below a medium orange star",
        "a small red circle to the left of a large blue square under a medium orange star",
        "there are three shapes: a small red circle left of a large blue square below "
        "a medium orange star",
        "a medium orange star above a large blue square right of a small red circle",
        "a red circle next to a blue square below an orange star",
    ]
    assert make_relation_captions([star]) == [
        "a medium orange star",
        "one medium orange star",
        "there is a medium orange star",
        "a picture of a medium orange star",
        "an orange star",
    ]
    with pytest.raises(ValueError):
        make_relation_captions([])


@pytest.mark.parametrize("n_objects", [1, 2, 3])
def test_relation_captions_agree_with_the_boxes(n_objects: int) -> None:
    for seed in range(40):
        scene = _scene(seed, n_objects=n_objects)
        captions = make_relation_captions(scene.objects)
        assert captions == make_relation_captions(list(reversed(scene.objects)))
        assert len(captions) == 5 and len(set(captions)) == 5
        by_colour = {o.color: o for o in scene.objects}  # colours differ within a scene
        xs = [(o.box[0] + o.box[2]) / 2 for o in scene.objects]
        for k, cap in enumerate(captions):
            assert cap == cap.lower() and cap.strip() == cap
            phrases, rels = _parse(cap)
            assert len(phrases) == n_objects and len(rels) == n_objects - 1
            named = [by_colour[p.split()[-2]] for p in phrases]
            assert sorted(map(id, named)) == sorted(map(id, scene.objects))
            for p, o in zip(phrases, named, strict=True):
                assert p.endswith(f"{o.color} {o.shape}")
                assert k == 4 or p.split()[1] == o.size  # only the last omits sizes
            for word, a, b in zip(rels, named, named[1:], strict=False):
                assert _holds(word, a, b), (cap, a, b)
            centres = [(o.box[0] + o.box[2]) / 2 for o in named]
            order = centres if k != 3 else centres[::-1]  # the fourth names right to left
            assert order == sorted(xs)


def test_relation_captions_have_a_small_fixed_vocabulary() -> None:
    words = {w for s in range(100) for c in make_relation_captions(_scene(s, n_objects=3).objects)
             for w in c.replace(":", "").split()}  # fmt: skip
    allowed = {*SIZES, *COLORS, *SHAPES, "a", "an", "one", "two", "three", "there", "is", "are",
               "shapes", "picture", "of", "to", "the", "left", "right", "above", "below", "over",
               "under", "next"}  # fmt: skip
    assert words <= allowed
    assert not words & {w for ws in BACKGROUND_WORDS.values() for w in ws}


def test_caption_scenes_style(tmp_path: Path) -> None:
    kw = {"n_images": 8, "img_size": 32, "seed": 4, "progress": False}
    rel = make_caption_scenes(tmp_path / "rel", **kw)  # type: ignore[arg-type]
    old = make_caption_scenes(tmp_path / "old", style="varied", **kw)  # type: ignore[arg-type]
    assert _files(rel) == _files(old)  # the style changes the captions only
    rows = {
        d: list(csv.reader((d / "captions.txt").open(encoding="utf-8")))[1:] for d in (rel, old)
    }
    lines = objects_path(rel).read_text(encoding="utf-8").splitlines()
    meta = {r["file"]: r for r in map(json.loads, lines)}
    assert len(meta) == 8
    for i in range(8):
        rng = np.random.default_rng([4, i])
        scene = render_scene(rng, img_size=32, n_objects=int(rng.integers(1, 4)))
        name = f"scene_{i:05d}.png"
        assert [c for f, c in rows[old] if f == name] == scene.captions
        assert [c for f, c in rows[rel] if f == name] == make_relation_captions(scene.objects)
        # the objects, the ground truth of hallucination metrics, beside the folder
        record = meta[name]
        assert [o["shape"] for o in record["objects"]] == [o.shape for o in scene.objects]
        assert record["captions"] == [c for f, c in rows[rel] if f == name]
    with pytest.raises(FileExistsError, match="objects"):
        shutil.rmtree(rel)
        make_caption_scenes(rel, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="caption style"):
        make_caption_scenes(tmp_path / "x", style="poetic", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
