"""Detection metrics: COCO numbers equal pycocotools', to_coco round-trips, confusion counts."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixtell.metrics.detection import (
    STAT_NAMES,
    coco_eval,
    detection_confusion_matrix,
    to_coco,
)

pycoco = pytest.importorskip("pycocotools.cocoeval")
from pycocotools.coco import COCO  # noqa: E402


def reference(
    gt: dict, results: list[dict], iou_type: str = "bbox"
) -> tuple[np.ndarray, dict, dict, dict]:
    """pycocotools' 12 stats (-1 as NaN), per-class AP, AP50 and precision at IoU .5 by name."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = pycoco.COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.where(ev.stats < 0, np.nan, ev.stats)
    prec = ev.eval["precision"]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    ap, ap50, curve = {}, {}, {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        ap[names[cid]] = p[p > -1].mean() if (p > -1).any() else math.nan
        ap50[names[cid]] = p[0][p[0] > -1].mean() if (p[0] > -1).any() else math.nan
        curve[names[cid]] = p[0]
    return stats, ap, ap50, curve


def random_dataset(
    seed: int, n_images: int = 60, round_scores: bool = False, crowd: bool = False
) -> tuple[dict, list[dict]]:
    """COCO GT and results with the awkward cases COCOeval must get right.

    Non-contiguous category ids with imbalanced counts; small/medium/large boxes; images without
    ground truth and images without detections; a class never detected ("never"); a class with
    no ground truth but false detections ("ghost"); a class with neither ("unused"); one image
    with more than 100 detections.
    """
    rng = np.random.default_rng(seed)
    ids = [3, 7, 11, 42, 99, 250, 1000, 5]
    names = ["car", "person", "dog", "bike", "never", "ghost", "unused", "cat"]
    categories = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
    gt_classes = [3, 7, 11, 42, 99, 5]
    weights = np.array([0.45, 0.25, 0.12, 0.08, 0.06, 0.04])
    images, anns, results = [], [], []
    for i in range(n_images):
        w, h = int(rng.integers(200, 800)), int(rng.integers(200, 800))
        image_id = 1 + 7 * i  # arbitrary, non-contiguous
        images.append({"id": image_id, "width": w, "height": h})
        n_gt = 0 if i % 7 == 0 else int(rng.integers(1, 12))
        no_dets = i % 11 == 3
        for _ in range(n_gt):
            bw, bh = np.exp(rng.uniform(np.log(3), np.log(min(w, h) * 0.9), size=2))
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.choice(gt_classes, p=weights))
            is_crowd = int(crowd and rng.random() < 0.05)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": is_crowd,
                }
            )
            if no_dets:
                continue
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per box, some duplicates
                jitter = rng.normal(0, 0.15, 4) * [bw, bh, bw, bh]
                det_cat = cat if rng.random() < 0.8 else int(rng.choice(gt_classes))
                if det_cat == 99:
                    continue  # "never" is never detected
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": det_cat,
                        "bbox": [x + jitter[0], y + jitter[1], bw + jitter[2], bh + jitter[3]],
                        "score": float(rng.random()),
                    }
                )
        if no_dets:
            continue
        n_fp = 130 if i == 5 else int(rng.integers(0, 4))
        for _ in range(n_fp):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice([3, 7, 11, 42, 250, 5])),
                    "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh],
                    "score": float(rng.random()),
                }
            )
    if round_scores:  # many ties: the order of equal scores must follow pycocotools'
        for r in results:
            r["score"] = round(r["score"], 1)
    return {"images": images, "annotations": anns, "categories": categories}, results


def assert_same(ours: float, ref: float) -> None:
    assert (math.isnan(ours) and math.isnan(ref)) or abs(ours - ref) <= 1e-6, (ours, ref)


@pytest.mark.parametrize(
    "seed,round_scores,crowd",
    [(0, False, False), (1, False, True), (2, True, False), (3, True, True)],
)
def test_coco_eval_equals_pycocotools(seed: int, round_scores: bool, crowd: bool) -> None:
    gt, results = random_dataset(seed, round_scores=round_scores, crowd=crowd)
    ours = coco_eval(gt, results)
    stats, ap, ap50, curve = reference(gt, results)
    for name, ref in zip(STAT_NAMES, stats, strict=True):
        assert_same(ours[name], ref)
    assert set(ours["per_class"]) == set(ap)
    for name in ap:
        assert_same(ours["per_class"][name], ap[name])
        assert_same(ours["per_class_ap50"][name], ap50[name])
    # the awkward classes behave as COCO defines them
    assert ours["per_class"]["never"] == 0.0
    assert math.isnan(ours["per_class"]["ghost"]) and math.isnan(ours["per_class"]["unused"])
    assert ours["precision_recall"]["ghost"] == {"recall": [], "precision": []}
    pr = ours["precision_recall"]["car"]
    assert pr["recall"] == pytest.approx(np.linspace(0, 1, 101))
    np.testing.assert_allclose(pr["precision"], curve["car"], atol=1e-12)


def test_segm_equals_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    gt, results = random_dataset(6, n_images=15)
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}

    def polygon(b: list[float]) -> list[list[float]]:
        x, y, w, h = b
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]

    for a in gt["annotations"]:
        a["segmentation"] = polygon(a["bbox"])
    masks = []
    for r in results:
        rle = mask_utils.merge(mask_utils.frPyObjects(polygon(r["bbox"]), *size[r["image_id"]]))
        rle["counts"] = rle["counts"].decode()
        masks.append(
            {**{k: r[k] for k in ("image_id", "category_id", "score")}, "segmentation": rle}
        )
    ours = coco_eval(gt, masks, iou_type="segm")
    stats, ap, *_ = reference(gt, masks, "segm")
    for name, ref in zip(STAT_NAMES, stats, strict=True):
        assert_same(ours[name], ref)
    for name in ap:
        assert_same(ours["per_class"][name], ap[name])


def test_coco_eval_does_not_modify_its_inputs() -> None:
    gt, results = random_dataset(4, n_images=10)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    coco_eval(gt, results)
    assert gt == gt_before and results == results_before


def test_empty_results_score_zero_where_there_is_ground_truth() -> None:
    gt = {
        "images": [{"id": 5, "width": 500, "height": 500}, {"id": 9, "width": 500, "height": 500}],
        "annotations": [
            # only large boxes (area >= 96**2), so small/medium ranges have no ground truth
            {"id": 1, "image_id": 5, "category_id": 2, "bbox": [0, 0, 200, 200], "area": 4e4},
            {"id": 2, "image_id": 9, "category_id": 2, "bbox": [10, 10, 100, 150], "area": 1.5e4},
        ],
        "categories": [{"id": 2, "name": "a"}, {"id": 8, "name": "b"}],
    }
    out = coco_eval(gt, [])
    for k in ("map", "map_50", "map_75", "map_large", "mar_1", "mar_10", "mar_100", "mar_large"):
        assert out[k] == 0.0
    for k in ("map_small", "map_medium", "mar_small", "mar_medium"):
        assert math.isnan(out[k])
    assert out["per_class"]["a"] == 0.0 and math.isnan(out["per_class"]["b"])
    assert out["precision_recall"]["a"]["precision"] == [0.0] * 101


def test_no_ground_truth_at_all_gives_nan() -> None:
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    out = coco_eval(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.5}])
    assert all(math.isnan(out[k]) for k in STAT_NAMES)
    assert math.isnan(out["per_class"]["a"])
    out = coco_eval({"images": [], "annotations": [], "categories": []}, [])
    assert math.isnan(out["map"]) and out["per_class"] == {}


def test_results_for_unknown_images_are_rejected() -> None:
    gt, _ = random_dataset(0, n_images=3)
    with pytest.raises(ValueError, match="not in gt"):
        coco_eval(gt, [{"image_id": 123456, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1}])
    with pytest.raises(ValueError, match="iou_type"):
        coco_eval(gt, [], iou_type="keypoints")


# --- to_coco ----------------------------------------------------------------------------------


def _arrays(seed: int, n: int = 12, c: int = 4):
    rng = np.random.default_rng(seed)
    images = [{"width": 320, "height": 240, "file_name": f"{i}.jpg"} for i in range(n)]
    gb, gl, pb, pl, ps = [], [], [], [], []
    for i in range(n):
        k = 0 if i == 2 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 150, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(3, 90, (k, 2))], axis=1)
        labels = rng.integers(0, c, k)
        gb.append(boxes)
        gl.append(labels)
        keep = rng.random(k) < 0.8
        pb.append(boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4)))
        pl.append(np.where(rng.random(int(keep.sum())) < 0.85, labels[keep], rng.integers(0, c)))
        ps.append(rng.random(int(keep.sum())))
    return images, [f"class{j}" for j in range(c)], gb, gl, pb, pl, ps


def test_to_coco_round_trips_boxes_labels_and_images() -> None:
    images, names, gb, gl, pb, pl, ps = _arrays(0)
    gt, res = to_coco(images, names, gb, gl, pred_boxes=pb, pred_labels=pl, pred_scores=ps)
    assert [c["name"] for c in gt["categories"]] == names
    assert [im["file_name"] for im in gt["images"]] == [im["file_name"] for im in images]
    id_of = [im["id"] for im in gt["images"]]
    for kind, boxes, labels, items in (("gt", gb, gl, gt["annotations"]), ("pred", pb, pl, res)):
        for i, image_id in enumerate(id_of):
            mine = [a for a in items if a["image_id"] == image_id]
            xywh = np.array([a["bbox"] for a in mine]).reshape(-1, 4)
            back = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            np.testing.assert_allclose(back, boxes[i], err_msg=kind)
            assert [a["category_id"] - 1 for a in mine] == labels[i].tolist()
    assert [r["score"] for r in res] == pytest.approx(np.concatenate(ps))
    # torch tensors give the same dicts as numpy arrays
    as_t = [[torch.as_tensor(a) for a in seq] for seq in (gb, gl, pb, pl, ps)]
    gt_t, res_t = to_coco(
        images,
        names,
        as_t[0],
        as_t[1],
        pred_boxes=as_t[2],
        pred_labels=as_t[3],
        pred_scores=as_t[4],
    )
    assert gt_t == gt and res_t == res
    # half-precision tensors (mixed-precision validation) convert too
    gt_h, _ = to_coco(images, names, [t.to(torch.bfloat16) for t in as_t[0]], as_t[1])
    got = np.array([a["bbox"] for a in gt_h["annotations"]])
    np.testing.assert_allclose(got, [a["bbox"] for a in gt["annotations"]], rtol=0.02, atol=1)


def test_to_coco_perfect_predictions_score_one() -> None:
    images, names, gb, gl, *_ = _arrays(1)
    scores = [np.linspace(1, 0.5, len(b)) for b in gb]
    out = coco_eval(
        *to_coco(images, names, gb, gl, pred_boxes=gb, pred_labels=gl, pred_scores=scores)
    )
    assert out["map"] == out["map_50"] == out["mar_100"] == 1.0


def test_to_coco_with_coco_eval_equals_torchmetrics_on_tensors() -> None:
    from torchmetrics.detection import MeanAveragePrecision

    images, names, gb, gl, pb, pl, ps = _arrays(2, n=20)
    ignore = [np.arange(len(b)) % 5 == 4 for b in gb]
    ours = coco_eval(
        *to_coco(
            images, names, gb, gl, pred_boxes=pb, pred_labels=pl, pred_scores=ps, gt_ignore=ignore
        )
    )
    # pycocotools' thresholds exactly (torchmetrics' defaults are float32 approximations)
    metric = MeanAveragePrecision(
        iou_type="bbox",
        backend="pycocotools",
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
    )
    t = torch.as_tensor
    metric.update(
        [
            dict(boxes=t(b).float(), scores=t(s).float(), labels=t(lab))
            for b, lab, s in zip(pb, pl, ps, strict=True)
        ],
        [
            dict(boxes=t(b).float(), labels=t(lab), iscrowd=t(g))
            for b, lab, g in zip(gb, gl, ignore, strict=True)
        ],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ref = metric.compute()
    for name in STAT_NAMES:
        r = float(ref[name])
        assert_same(ours[name], math.nan if r == -1 else r)


def test_ignored_boxes_are_neither_found_nor_missed() -> None:
    images, names = [{"width": 100, "height": 100}], ["a"]
    gb = [np.array([[10, 10, 40, 40], [60, 60, 90, 90]])]
    gl = [np.array([0, 0])]
    only_first = dict(pred_boxes=[gb[0][:1]], pred_labels=[np.array([0])], pred_scores=[[0.9]])
    # the undetected second box counts as missed, unless ignored: precision 1 up to recall 0.5,
    # i.e. on 51 of COCO's 101 recall thresholds
    assert coco_eval(*to_coco(images, names, gb, gl, **only_first))["map"] == pytest.approx(
        51 / 101
    )
    ignored = [np.array([False, True])]
    assert coco_eval(*to_coco(images, names, gb, gl, gt_ignore=ignored, **only_first))["map"] == 1.0
    # a detection on the ignored box, scored above the true positive, is not a false positive
    both = dict(pred_boxes=[gb[0][::-1]], pred_labels=[np.array([0, 0])], pred_scores=[[0.95, 0.9]])
    assert coco_eval(*to_coco(images, names, gb, gl, gt_ignore=ignored, **both))["map"] == 1.0


def test_to_coco_rejects_mismatched_input() -> None:
    images, names, gb, gl, pb, pl, ps = _arrays(3)
    with pytest.raises(ValueError, match="entries"):
        to_coco(images, names, gb[:-1], gl)
    with pytest.raises(ValueError, match="gt_labels"):
        to_coco(images, names, gb, [np.full(len(b), 9) for b in gb])
    with pytest.raises(ValueError, match="pred_labels and pred_scores"):
        to_coco(images, names, gb, gl, pred_boxes=pb)


# --- confusion matrix -------------------------------------------------------------------------


def cm(gt_boxes, gt_labels, pred_boxes, pred_labels, pred_scores, c, **kw) -> np.ndarray:
    """The matrix for a single image."""
    return detection_confusion_matrix(
        [np.array(gt_boxes, float).reshape(-1, 4)],
        [np.array(gt_labels, int)],
        [np.array(pred_boxes, float).reshape(-1, 4)],
        [np.array(pred_labels, int)],
        [np.array(pred_scores, float)],
        c,
        **kw,
    )


A, B = [0, 0, 10, 10], [50, 50, 70, 70]


def test_confusion_matrix_hand_cases() -> None:
    # right class, wrong class, missed (background column), false positive (background row)
    assert cm([A, B], [0, 1], [A, B], [0, 0], [0.9, 0.8], 2).tolist() == [
        [1, 0, 0],
        [1, 0, 0],
        [0, 0, 0],
    ]
    assert cm([A], [1], [B], [0], [0.9], 2).tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0]]
    # below the confidence threshold a detection does not exist; at it, it does
    assert cm([A], [0], [A], [0], [0.2], 2, conf=0.25).tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert cm([A], [0], [A], [0], [0.25], 2, conf=0.25)[0, 0] == 1
    # IoU exactly at the threshold matches: [0,0,20,10] covers A's 100 px of its 200 px
    assert cm([A], [0], [[0, 0, 20, 10]], [0], [0.9], 1, iou=0.5).tolist() == [[1, 0], [0, 0]]
    assert cm([A], [0], [[0, 0, 21, 10]], [0], [0.9], 1, iou=0.5).tolist() == [[0, 1], [1, 0]]
    # two detections on one box: one match, one false positive
    assert cm([A], [0], [A, A], [0, 0], [0.9, 0.8], 1).tolist() == [[1, 0], [1, 0]]
    # no ground truth / no detections
    assert cm([], [], [A], [1], [0.9], 2).tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert cm([A], [1], [], [], [], 2).tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_confusion_matrix_matching_is_greedy_one_to_one() -> None:
    # IoU(g1,d1)=1, IoU(g1,d2)=80/120, IoU(g2,d2)=70/130, IoU(g2,d1)=50/150. d2 prefers g1, which
    # d1 already took, so d2 pairs with g2. (Ultralytics' unique-per-side filtering would drop
    # the g2-d2 pair and count a miss and a false positive.)
    g1, g2 = [0, 0, 10, 10], [5, 0, 15, 10]
    d1, d2 = [0, 0, 10, 10], [2, 0, 12, 10]
    assert cm([g1, g2], [0, 1], [d1, d2], [0, 1], [0.5, 0.9], 2).tolist() == [
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 0],
    ]


def test_confusion_matrix_counts_imbalanced_data() -> None:
    """Boxes on a grid far apart, so every outcome we plant is the one to be counted."""
    rng = np.random.default_rng(0)
    c, conf = 5, 0.25
    probs = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
    expected = np.zeros((c + 1, c + 1), int)
    gb, gl, pb, pl, ps = [], [], [], [], []
    for _ in range(200):
        cells = rng.permutation(64)[: int(rng.integers(0, 20))]
        g_boxes, g_labels, p_boxes, p_labels, p_scores = [], [], [], [], []
        for cell in cells:
            r, col = divmod(int(cell), 8)
            box = np.array([50 * col + 5, 50 * r + 5, 50 * col + 45, 50 * r + 45], float)
            jittered = box + rng.uniform(-2, 2, 4)
            score = rng.uniform(conf, 1)
            if rng.random() < 0.15:  # background cell: maybe a detection there
                label = int(rng.integers(0, c))
                if rng.random() < 0.5:
                    p_boxes.append(jittered), p_labels.append(label), p_scores.append(score)
                    expected[c, label] += 1
                continue
            true = int(rng.choice(c, p=probs))
            g_boxes.append(box), g_labels.append(true)
            outcome = rng.random()
            if outcome < 0.6:
                pred = true
            elif outcome < 0.8:
                pred = int(rng.choice([k for k in range(c) if k != true]))
            elif outcome < 0.9:  # detected below the confidence threshold: missed
                p_boxes.append(jittered), p_labels.append(true), p_scores.append(conf / 2)
                expected[true, c] += 1
                continue
            else:
                expected[true, c] += 1
                continue
            p_boxes.append(jittered), p_labels.append(pred), p_scores.append(score)
            expected[true, pred] += 1
        gb.append(np.array(g_boxes).reshape(-1, 4))
        gl.append(np.array(g_labels, int))
        pb.append(torch.tensor(np.array(p_boxes).reshape(-1, 4)))
        pl.append(torch.tensor(p_labels, dtype=torch.long))
        ps.append(torch.tensor(p_scores))
    got = detection_confusion_matrix(gb, gl, pb, pl, ps, c, conf=conf)
    np.testing.assert_array_equal(got, expected)
    assert expected[0].sum() > 20 * expected[4].sum() > 0  # really imbalanced


boxes_st = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(1, 30),
        st.integers(1, 30),
        st.integers(0, 2),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(gt=boxes_st, pred=boxes_st, scores=st.lists(st.floats(0, 1), min_size=8, max_size=8))
def test_confusion_matrix_margins_count_boxes_and_detections(gt, pred, scores) -> None:
    """Every box lands once in its true row, every kept detection once in its predicted column."""
    c = 3

    def arrays(items):
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in items], float).reshape(-1, 4)
        return boxes, np.array([k for *_, k in items], int)

    gb, gl = arrays(gt)
    pb, pl = arrays(pred)
    ps = np.array(scores[: len(pred)])
    m = detection_confusion_matrix([gb], [gl], [pb], [pl], [ps], c, iou=0.3, conf=0.5)
    np.testing.assert_array_equal(m[:c].sum(axis=1), np.bincount(gl, minlength=c))
    np.testing.assert_array_equal(m[:, :c].sum(axis=0), np.bincount(pl[ps >= 0.5], minlength=c))
    assert m[c, c] == 0


def test_coco_eval_is_quiet_and_keeps_duplicate_names_apart(capsys: pytest.CaptureFixture) -> None:
    gt, results = random_dataset(5, n_images=8)
    gt["categories"][1]["name"] = gt["categories"][0]["name"]  # ids 3 and 7 both "car"
    out = coco_eval(gt, results)
    assert capsys.readouterr() == ("", "")
    assert {"car (3)", "car (7)"} <= set(out["per_class"]) and "car" not in out["per_class"]
