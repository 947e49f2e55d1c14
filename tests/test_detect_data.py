"""Detection data: VOC / COCO / YOLO reading, problems, splits, conversion, transforms, demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pixtell.data.demo import SHAPES, make_detection_scenes, render_scene
from pixtell.detect.data import (
    DatasetFormatError,
    DetDataset,
    DetectionDataset,
    DetImage,
    build_transforms,
    collate,
    convert,
    detect_format,
    load_dataset,
    read_split,
    split_dataset,
    to_coco_dict,
    write_split,
)

# ---------------------------------------------------------------------------- fixtures


def _image(path: Path, size: tuple[int, int], color: tuple[int, int, int] = (90, 120, 150)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult) in VOC's 1-based coordinates."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def make_voc(root: Path) -> Path:
    """a.jpg: 4 objects (normal, difficult, outside the image, zero width); b.jpg: none;
    c.jpg: bad XML; d.xml: image missing. ImageSets: a train, b val."""
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    _image(root / "JPEGImages" / "a.jpg", (100, 80))
    _image(root / "JPEGImages" / "b.jpg", (60, 60))
    _image(root / "JPEGImages" / "c.jpg", (50, 50))
    objects = [
        ("cat", 11, 11, 50, 40, 0),
        ("dog", 61, 21, 90, 70, 1),
        ("dog", 71, 31, 120, 60, 0),  # xmax 120 > width 100: clipped
        ("cat", 31, 5, 30, 20, 0),  # xmin - 1 == xmax: zero width, dropped
    ]
    (ann / "a.xml").write_text(_voc_xml("a.jpg", (100, 80), objects))
    (ann / "b.xml").write_text(_voc_xml("b.jpg", (60, 60), []))
    (ann / "c.xml").write_text("<annotation><filename>c.jpg</filename><object>")
    (ann / "d.xml").write_text(_voc_xml("d.jpg", (10, 10), [("cat", 1, 1, 5, 5, 0)]))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a\n")
    (main / "val.txt").write_text("b\n")
    return root


COCO_BOXES = {  # image file -> list of (category id, [x, y, w, h])
    "p.png": [(7, [10.25, 20.5, 30.125, 15.0625]), (3, [0.0, 0.0, 12.3456, 7.891])],
    "q.png": [(3, [40.0, 10.0, 25.5, 30.25])],
    "r.png": [],
}


def make_coco(root: Path, json_name: str = "annotations.json") -> Path:
    """Categories with arbitrary ids 7 ('zebra') and 3 ('ant'); r.png has no boxes."""
    images, anns = [], []
    for iid, (name, boxes) in enumerate(COCO_BOXES.items(), start=10):
        _image(root / "images" / name, (96, 64))
        images.append({"id": iid, "file_name": name, "width": 96, "height": 64})
        for cat, bbox in boxes:
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat, "bbox": bbox})
    anns.append({"id": 99, "image_id": 10, "category_id": 5, "bbox": [1, 1, 2, 2]})
    anns.append({"id": 100, "image_id": 11, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1})
    cats = [{"id": 7, "name": "zebra"}, {"id": 3, "name": "ant"}]
    file = root / json_name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def make_yolo(root: Path) -> Path:
    """images/train/{u,v}.png, images/val/w.png (no label file), bad files x and y."""
    for split, name in (("train", "u"), ("train", "v"), ("val", "w"), ("train", "x"), ("val", "y")):
        _image(root / "images" / split / f"{name}.png", (200, 100))
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir(parents=True)
    (labels / "train" / "u.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.1 0.2\n\n")
    (labels / "train" / "v.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # right edge at 1.05
    (labels / "train" / "x.txt").write_text("0 0.5 0.5 0.2\n")  # 4 fields
    (labels / "val" / "y.txt").write_text("2 0.5 0.5 0.2 0.2\n")  # unknown class id 2
    (labels / "val" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": {0: "person", 1: "car"}}))
    return root


def _problems(ds: DetDataset) -> str:
    return "\n".join(f"{p} :: {r}" for p, r in ds.problems)


def _by_name(ds: DetDataset) -> dict[str, DetImage]:
    return {img.path.name: img for img in ds.images}


# ---------------------------------------------------------------------------- VOC


def test_voc_boxes_clipping_dropping_difficult_and_splits(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    ds = load_dataset(root)
    assert ds.format == "voc" and ds.class_names == ["cat", "dog"]
    images = _by_name(ds)
    assert set(images) == {"a.jpg", "b.jpg"}
    a = images["a.jpg"]
    assert (a.width, a.height, a.split) == (100, 80, "train")
    # VOC 1-based inclusive -> continuous: [xmin - 1, ymin - 1, xmax, ymax]; 3rd box clipped
    np.testing.assert_allclose(a.boxes, [[10, 10, 50, 40], [60, 20, 90, 70], [70, 30, 100, 60]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert a.labels.tolist() == [0, 1, 1] and a.difficult.tolist() == [False, True, False]
    b = images["b.jpg"]
    assert b.boxes.shape == (0, 4) and b.split == "val"
    text = _problems(ds)
    assert "a.xml" in text and "outside the 100x80 image: clipped" in text
    assert "zero or negative size: dropped" in text
    assert "c.xml :: malformed VOC annotation (bad XML" in text
    assert "d.jpg :: file not found" in text
    assert all(isinstance(p, Path) and isinstance(r, str) for p, r in ds.problems)


def test_voc_drop_empty_and_classes_txt_order(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    (root / "classes.txt").write_text("dog\ncat\n")
    ds = load_dataset(root, drop_empty=True)
    assert [img.path.name for img in ds.images] == ["a.jpg"]
    assert ds.class_names == ["dog", "cat"]
    assert ds.images[0].labels.tolist() == [1, 0, 0]


def test_voc_image_without_annotation_is_reported(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    _image(root / "JPEGImages" / "lonely.jpg", (20, 20))
    assert "no annotation file" in _problems(load_dataset(root))


# ---------------------------------------------------------------------------- COCO


def test_coco_categories_become_contiguous_in_id_order(tmp_path: Path) -> None:
    ds = load_dataset(make_coco(tmp_path / "coco"))
    assert ds.format == "coco" and ds.class_names == ["ant", "zebra"]  # id 3, then id 7
    images = _by_name(ds)
    assert set(images) == {"p.png", "q.png", "r.png"}
    p = images["p.png"]
    np.testing.assert_allclose(
        p.boxes, [[10.25, 20.5, 40.375, 35.5625], [0, 0, 12.3456, 7.891]], rtol=0, atol=1e-5
    )
    assert p.labels.tolist() == [1, 0]
    q = images["q.png"]
    assert q.labels.tolist() == [0, 1] and q.difficult.tolist() == [False, True]  # iscrowd
    assert images["r.png"].boxes.shape == (0, 4)
    assert "annotation 99: unknown category_id 5: dropped" in _problems(ds)


def test_coco_json_file_or_annotations_folder(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "c2", json_name="annotations/instances_val.json")
    by_file = load_dataset(root / "annotations" / "instances_val.json")
    by_folder = load_dataset(root)
    for ds in (by_file, by_folder):
        assert len(ds.images) == 3 and all(img.path.is_file() for img in ds.images)
    assert by_file.root == root.absolute()


def test_coco_split_files_and_unreadable_image(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "c3", json_name="annotations/instances_train.json")
    val = json.loads((root / "annotations" / "instances_train.json").read_text())
    _image(root / "images" / "s.png", (96, 64))
    val["images"] = [{"id": 1, "file_name": "s.png", "width": 96, "height": 64}]
    val["annotations"] = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    (root / "images" / "p.png").write_bytes(b"not a png at all")
    ds = load_dataset(root)
    assert sorted((img.path.name, img.split) for img in ds.images) == [
        ("q.png", "train"),
        ("r.png", "train"),
        ("s.png", "val"),
    ]
    assert _by_name(ds)["s.png"].labels.tolist() == [1]  # categories shared by both files
    assert "p.png :: not an image Pillow can read" in _problems(ds)


def test_malformed_coco_json_is_named_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "annotations.json").write_text('{"images": [')
    ds = load_dataset(root)
    assert ds.images == []
    assert "annotations.json :: malformed COCO JSON" in _problems(ds)


# ---------------------------------------------------------------------------- YOLO


def test_yolo_normalised_boxes_splits_and_bad_files(tmp_path: Path) -> None:
    ds = load_dataset(make_yolo(tmp_path / "yolo"))
    assert ds.format == "yolo" and ds.class_names == ["person", "car"]
    images = _by_name(ds)
    assert set(images) == {"u.png", "v.png", "w.png"}
    u = images["u.png"]
    # 200x100 image: (0.5 0.5 0.2 0.4) -> [80, 30, 120, 70]; (0.1 0.2 0.1 0.2) -> [10, 10, 30, 30]
    np.testing.assert_allclose(u.boxes, [[80, 30, 120, 70], [10, 10, 30, 30]], atol=1e-4)
    assert u.labels.tolist() == [1, 0] and u.split == "train"
    np.testing.assert_allclose(images["v.png"].boxes, [[170, 40, 200, 60]], atol=1e-4)
    assert images["w.png"].boxes.shape == (0, 4) and images["w.png"].split == "val"
    text = _problems(ds)
    assert "x.txt :: malformed YOLO labels (line 1 has 4 fields" in text
    assert "y.txt :: malformed YOLO labels (line 1: unknown class id 2" in text
    assert "orphan.txt :: label file without an image" in text
    assert "v.txt" in text and "clipped" in text


def test_yolo_class_names_from_classes_txt(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo")
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("a\nb\nc\n")
    ds = load_dataset(root)
    assert ds.class_names == ["a", "b", "c"]
    assert "y.png" in _by_name(ds)  # class id 2 is known now


# ---------------------------------------------------------------------------- format detection


def test_format_detection_and_forcing(tmp_path: Path) -> None:
    assert detect_format(make_voc(tmp_path / "v")) == "voc"
    assert detect_format(make_coco(tmp_path / "c")) == "coco"
    assert detect_format(tmp_path / "c" / "annotations.json") == "coco"
    assert detect_format(make_yolo(tmp_path / "y")) == "yolo"
    empty = tmp_path / "nothing"
    (empty / "pics").mkdir(parents=True)
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(empty)
    for looked_for in ("Annotations/*.xml", "*.json", "images/ + labels/", "format="):
        assert looked_for in str(err.value)
    with pytest.raises(DatasetFormatError, match="not a VOC dataset"):
        load_dataset(tmp_path / "c", format="voc")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing")


# ---------------------------------------------------------------------------- splits


def _synthetic(n: int) -> DetDataset:
    images = [
        DetImage(
            Path(f"/data/img{i}.png"),
            10,
            10,
            np.array([[1, 1, 5, 5]], np.float32),
            np.array([i % 2]),
            np.zeros(1, bool),
        )
        for i in range(n)
    ]
    return DetDataset(Path("/data"), "coco", ["a", "b"], images, [])


def test_seeded_split_is_deterministic_disjoint_and_complete() -> None:
    ds = _synthetic(50)
    first, again = split_dataset(ds, seed=3), split_dataset(ds, seed=3)
    assert first == again
    assert [len(first[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    assert sorted(sum(first.values(), [])) == list(range(50))
    assert split_dataset(ds, seed=4) != first
    small = split_dataset(_synthetic(4), fractions=(0.8, 0.1, 0.1))
    assert len(small["val"]) == 1 and len(small["test"]) == 1 and len(small["train"]) == 2
    with pytest.raises(ValueError, match="summing to 1"):
        split_dataset(ds, fractions=(0.5, 0.1, 0.1))


def test_dataset_own_splits_win(tmp_path: Path) -> None:
    ds = load_dataset(make_voc(tmp_path / "voc"))
    splits = split_dataset(ds, seed=123)
    names = {s: [ds.images[i].path.name for i in idx] for s, idx in splits.items()}
    assert names == {"train": ["a.jpg"], "val": ["b.jpg"], "test": []}


def test_write_and_read_split_round_trip_with_relative_paths(tmp_path: Path) -> None:
    ds = load_dataset(make_coco(tmp_path / "proj" / "data"))
    splits = split_dataset(ds, fractions=(0.34, 0.33, 0.33), seed=1)
    file = write_split(tmp_path / "proj" / "runs" / "split.json", ds, splits)
    raw = json.loads(file.read_text())
    assert {e["file"] for e in raw["images"]} == {"images/p.png", "images/q.png", "images/r.png"}
    assert write_split(file, ds, splits) == file  # same content: fine
    with pytest.raises(FileExistsError):
        write_split(file, ds, {"train": [0], "val": [], "test": []})
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "proj", moved)
    shutil.rmtree(tmp_path / "proj")
    back, back_splits = read_split(moved / "runs" / "split.json")
    assert back_splits == splits and back.class_names == ds.class_names
    assert back.root == (moved / "data").resolve()
    for a, b in zip(ds.images, back.images, strict=True):
        assert b.path.is_file() and b.path.name == a.path.name
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)


# ---------------------------------------------------------------------------- conversion


def test_convert_round_trip_coco_voc_yolo_coco(tmp_path: Path) -> None:
    src = make_coco(tmp_path / "coco")
    original = load_dataset(src)
    voc = convert(src, tmp_path / "as_voc", to="voc")
    assert (voc / "Annotations" / "p.xml").is_file() and (voc / "JPEGImages" / "p.png").is_file()
    yolo = convert(voc, tmp_path / "as_yolo", to="yolo")
    assert (yolo / "data.yaml").is_file() and (yolo / "labels" / "p.txt").is_file()
    back_dir = convert(yolo, tmp_path / "back", to="coco")
    assert (back_dir / "annotations.json").is_file()
    for step in (voc, yolo, back_dir):
        ds = load_dataset(step)
        assert ds.class_names == original.class_names
        assert ds.problems == []
        got, want = _by_name(ds), _by_name(original)
        assert set(got) == set(want)
        for name, img in want.items():
            assert got[name].labels.tolist() == img.labels.tolist()
            np.testing.assert_allclose(got[name].boxes, img.boxes, rtol=0, atol=1e-3)
    assert load_dataset(voc).images[1].difficult.tolist() == [False, True]  # crowd kept in VOC


def test_convert_keeps_splits_and_refuses_non_empty_dest(tmp_path: Path) -> None:
    src = make_voc(tmp_path / "voc")
    yolo = convert(src, tmp_path / "y", to="yolo")
    assert (yolo / "images" / "train" / "a.jpg").is_file()
    assert yaml.safe_load((yolo / "data.yaml").read_text())["val"] == "images/val"
    assert {img.path.name: img.split for img in load_dataset(yolo).images} == {
        "a.jpg": "train",
        "b.jpg": "val",
    }
    coco = convert(yolo, tmp_path / "c", to="coco")
    voc = convert(coco, tmp_path / "v", to="voc")
    assert (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split() == ["a", "b"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert(src, busy, to="coco")
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1


def test_to_coco_dict_matches_pycocotools_evaluation(tmp_path: Path) -> None:
    ds = load_dataset(make_coco(tmp_path / "coco"))
    gt_dict = to_coco_dict(ds, indices=[2, 0])
    assert [im["id"] for im in gt_dict["images"]] == [1, 2]
    assert [c["id"] for c in gt_dict["categories"]] == [1, 2]
    for ann in gt_dict["annotations"]:
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=1e-3)
        assert ann["iscrowd"] == 0
    gt = COCO()
    gt.dataset = gt_dict
    gt.createIndex()
    # perfect detections built from the DetectionDataset targets of the same selection
    data = DetectionDataset([ds.images[2], ds.images[0]])
    dets = []
    for _, target in data:
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = box
            dets.append(
                {
                    "image_id": target["image_id"],
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": 0.9,
                }
            )
    evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- torch dataset


def test_detection_dataset_items_and_collate(tmp_path: Path) -> None:
    ds = load_dataset(make_coco(tmp_path / "coco"))
    data = DetectionDataset(ds.images)
    image, target = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 96)
    assert torch.allclose(image[:, 0, 0], torch.tensor([90, 120, 150]) / 255.0)
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert torch.equal(target["boxes"], torch.from_numpy(ds.images[0].boxes))
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == (ds.images[0].labels + 1).tolist()  # 0 is background
    assert target["image_id"] == 1
    images, targets = collate([data[0], data[2]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    assert targets[1]["boxes"].shape == (0, 4)


def _sample() -> tuple[torch.Tensor, dict]:
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.arange(3 * 50 * 100, dtype=torch.uint8).reshape(3, 50, 100))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 5.0, 30.0, 25.0]]), format="XYXY", canvas_size=(50, 100)
    )
    return img, {"boxes": boxes, "labels": torch.tensor([1])}


def test_horizontal_flip_moves_boxes() -> None:
    transform = build_transforms(True, img_size=None, hflip=True, multiscale=None)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        img, target = _sample()
        out, t = transform(img, target)
        box = tuple(t["boxes"][0].tolist())
        assert box in {(10.0, 5.0, 30.0, 25.0), (70.0, 5.0, 90.0, 25.0)}  # W=100: x -> 100 - x
        expected = img if box[0] == 10 else torch.flip(img, dims=[-1])
        assert torch.allclose(out, expected.float() / 255)
        seen.add(box)
    assert len(seen) == 2
    evaluation = build_transforms(False, img_size=None, hflip=True, multiscale=None)
    _, t = evaluation(*_sample())
    assert t["boxes"][0].tolist() == [10, 5, 30, 25]


def test_resize_and_multiscale_scale_boxes() -> None:
    out, t = build_transforms(False, img_size=200, hflip=False, multiscale=None)(*_sample())
    assert out.shape == (3, 100, 200) and out.dtype == torch.float32
    assert t["boxes"][0].tolist() == [20, 10, 60, 50]
    half = build_transforms(True, img_size=100, hflip=False, multiscale=(0.5, 0.5))
    out, t = half(*_sample())
    assert out.shape == (3, 25, 50) and t["boxes"][0].tolist() == [5, 2.5, 15, 12.5]
    torch.manual_seed(1)
    jitter = build_transforms(True, img_size=100, hflip=False, multiscale=(0.5, 1.5))
    longer = set()
    for _ in range(10):
        out, t = jitter(*_sample())
        h, w = out.shape[-2:]
        longer.add(w)
        assert 50 <= w <= 150
        sx, sy = w / 100, h / 50
        assert t["boxes"][0].tolist() == pytest.approx([10 * sx, 5 * sy, 30 * sx, 25 * sy])
    assert len(longer) > 1


# ---------------------------------------------------------------------------- demo scenes


def test_make_detection_scenes_loads_with_exact_boxes(tmp_path: Path) -> None:
    out = make_detection_scenes(
        tmp_path / "scenes", n_images=6, img_size=64, seed=5, max_objects=3, progress=False
    )
    ds = load_dataset(out)
    assert ds.format == "coco" and ds.class_names == list(SHAPES) and ds.problems == []
    assert len(ds.images) == 6
    for i, img in enumerate(ds.images):
        rng = np.random.default_rng([5, i])  # scene i: object count, then the scene
        n_objects = int(rng.integers(1, 4))
        scene = render_scene(rng, img_size=64, n_objects=n_objects)
        assert len(img.boxes) == n_objects
        np.testing.assert_array_equal(img.boxes, [o.box for o in scene.objects])
        assert [ds.class_names[k] for k in img.labels] == [o.shape for o in scene.objects]
        assert np.array_equal(np.asarray(Image.open(img.path)), np.asarray(scene.image))
    again = make_detection_scenes(
        tmp_path / "again", n_images=6, img_size=64, seed=5, max_objects=3, progress=False
    )
    assert (again / "annotations.json").read_bytes() == (out / "annotations.json").read_bytes()
    with pytest.raises(FileExistsError):
        make_detection_scenes(out, n_images=2, progress=False)
