"""Caption datasets: Flickr8k (both layouts), COCO, Karpathy, demo; splits, vocabulary, loaders."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixtell.caption.data import (
    CaptionDataModule,
    CaptionDataset,
    CaptionTrainDataset,
    OneCaptionPerImageSampler,
    build_vocabulary,
    collate_captions,
    detect_format,
    load_captions,
    read_split,
    split_captions,
    write_split,
)
from pixtell.caption.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary
from pixtell.data.demo import make_caption_scenes, make_classification_folder
from pixtell.data.features import FeatureCache
from pixtell.data.images import file_sha256
from pixtell.data.transforms import build_eval_transform
from pixtell.metrics.caption import tokenize

GOOD = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]  # d.jpg has one empty caption
MISSING, BROKEN = "missing.jpg", "broken.jpg"


def _captions(name: str) -> list[str]:
    stem = name.split(".")[0]
    caps = [f"A dog number {stem} runs, fast.", f"the {stem} dog", "a dog on grass",
            f"dog {stem} jumps", f"one more caption for {stem}"]  # fmt: skip
    if name == "d.jpg":
        caps[2] = "   "
    return caps


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, name in enumerate(GOOD):
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(folder / name)
    (folder / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")


def _kaggle(root: Path) -> Path:
    _write_images(root / "Images")
    with open(root / "captions.txt", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for name in [*GOOD, MISSING, BROKEN]:
            w.writerows([name, c] for c in _captions(name))
    return root


def _official(root: Path, with_splits: bool = True) -> Path:
    _write_images(root / "Flicker8k_Dataset")
    text = root / "Flickr8k_text"
    text.mkdir()
    lines = [f"{n}#{k}\t{c}" for n in [*GOOD, MISSING, BROKEN] for k, c in enumerate(_captions(n))]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if with_splits:
        (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\nmissing.jpg\n")
        (text / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
        (text / "Flickr_8k.testImages.txt").write_text("d.jpg\nbroken.jpg\n")
    return root


def _problems(ds: CaptionDataset) -> dict[str, str]:
    return {p.name: reason for p, reason in ds.problems}


@pytest.fixture(params=["kaggle", "official"])
def flickr(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return _kaggle(tmp_path) if request.param == "kaggle" else _official(tmp_path)


# ----------------------------------------------------------------------------- Flickr8k


def test_flickr8k_layouts_parse_and_report_bad_entries(flickr: Path) -> None:
    ds = load_captions(flickr, progress=False)
    assert ds.format == "flickr8k"
    assert [im.path.name for im in ds.images] == GOOD
    for im in ds.images:
        expected = [" ".join(c.split()) for c in _captions(im.path.name) if c.strip()]
        assert im.captions == expected
    assert len(ds.images[3].captions) == 4
    problems = _problems(ds)
    assert set(problems) == {MISSING, BROKEN, "d.jpg"}
    assert "not found" in problems[MISSING]
    assert "corrupt" in problems[BROKEN] or "identify" in problems[BROKEN]
    assert "empty caption" in problems["d.jpg"]


def test_both_flickr8k_layouts_give_the_same_data(tmp_path: Path) -> None:
    kaggle = load_captions(_kaggle(tmp_path / "k"), progress=False)
    official = load_captions(_official(tmp_path / "o", with_splits=False), progress=False)
    assert [(im.path.name, im.captions) for im in kaggle.images] == [
        (im.path.name, im.captions) for im in official.images
    ]
    assert all(im.split is None for im in kaggle.images + official.images)


def test_official_split_lists_are_used(tmp_path: Path) -> None:
    ds = load_captions(_official(tmp_path), progress=False)
    assert {im.path.name: im.split for im in ds.images} == {
        "a.jpg": "train",
        "b.jpg": "train",
        "c.jpg": "val",
        "d.jpg": "test",
    }
    splits = split_captions(ds, seed=5)
    named = {k: [ds.images[i].path.name for i in v] for k, v in splits.items()}
    assert named == {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}


def test_the_token_file_itself_and_forced_format(tmp_path: Path) -> None:
    root = _official(tmp_path)
    ds = load_captions(root / "Flickr8k_text" / "Flickr8k.token.txt", progress=False)
    assert len(ds) == 4
    assert detect_format(root) == "flickr8k"
    with pytest.raises(ValueError, match="coco annotations"):
        load_captions(root, format="coco")
    with pytest.raises(ValueError, match="unknown caption format"):
        load_captions(root, format="flickr30k")


def test_unquoted_commas_and_malformed_lines(tmp_path: Path) -> None:
    _write_images(tmp_path / "images")
    (tmp_path / "captions.txt").write_text(
        'image,caption\na.jpg,a dog, a cat, and a bird\na.jpg,"quoted, comma"\nb.jpg\n\n',
        encoding="utf-8",
    )
    ds = load_captions(tmp_path, progress=False)
    assert ds.images[0].captions == ["a dog, a cat, and a bird", "quoted, comma"]
    assert [r for p, r in ds.problems if p.name == "captions.txt"][0].startswith(
        "captions.txt line 4"
    )


def test_captions_txt_without_header(tmp_path: Path) -> None:
    _write_images(tmp_path / "Images")
    (tmp_path / "captions.txt").write_text("a.jpg,first\nb.jpg,second\n", encoding="utf-8")
    ds = load_captions(tmp_path, progress=False)
    assert [(im.path.name, im.captions) for im in ds.images] == [
        ("a.jpg", ["first"]),
        ("b.jpg", ["second"]),
    ]
    (tmp_path / "captions.txt").write_text("name;text\na.jpg;x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header 'image,caption'"):
        load_captions(tmp_path, progress=False)


def test_check_images_false_only_checks_existence(tmp_path: Path) -> None:
    ds = load_captions(_kaggle(tmp_path), check_images=False, progress=False)
    assert BROKEN in [im.path.name for im in ds.images]
    assert MISSING in _problems(ds)


def test_nothing_usable_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("image,caption\nx.jpg,a dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no usable captioned images"):
        load_captions(tmp_path, progress=False)
    with pytest.raises(ValueError, match="no caption annotations"):
        load_captions(tmp_path / "Images", progress=False)


# ----------------------------------------------------------------------------- COCO, Karpathy, demo


def test_coco_captions_json(tmp_path: Path) -> None:
    _write_images(tmp_path / "val2017")
    (tmp_path / "annotations").mkdir()
    coco = {
        "images": [
            {"id": 7, "file_name": "a.jpg"},
            {"id": 9, "file_name": "b.jpg"},
            {"id": 11, "file_name": MISSING},
        ],  # fmt: skip
        "annotations": [
            {"id": 1, "image_id": 9, "caption": "B one"},
            {"id": 2, "image_id": 7, "caption": "A one"},
            {"id": 3, "image_id": 9, "caption": "B two"},
            {"id": 4, "image_id": 11, "caption": "gone"},
            {"id": 5, "image_id": 404, "caption": "no such image"},
            {"id": 6, "image_id": 7, "caption": ""},
        ],
    }
    ann = tmp_path / "annotations" / "captions_val2017.json"
    ann.write_text(json.dumps(coco), encoding="utf-8")
    for src in (tmp_path, ann):
        ds = load_captions(src, progress=False)
        assert ds.format == "coco" and ds.root == (tmp_path / "val2017").resolve()
        got = {im.image_id: (im.path.name, im.captions) for im in ds.images}
        assert got == {"9": ("b.jpg", ["B one", "B two"]), "7": ("a.jpg", ["A one"])}
        assert set(_problems(ds)) == {MISSING, "a.jpg", ann.name}
    moved = shutil.copytree(tmp_path / "val2017", tmp_path / "elsewhere")
    assert load_captions(ann, images=moved, progress=False).root == moved.resolve()


def test_karpathy_json_with_restval(tmp_path: Path) -> None:
    _write_images(tmp_path / "Flicker8k_Dataset")
    sent = [{"raw": "A dog.", "tokens": ["a", "dog"]}, {"raw": "Two dogs", "tokens": []}]
    data = {
        "dataset": "flickr8k",
        "images": [
            {"filename": "a.jpg", "split": "train", "sentences": sent},
            {"filename": "b.jpg", "split": "restval", "sentences": sent},
            {"filename": "c.jpg", "split": "val", "sentences": sent},
            {"filename": "d.jpg", "split": "test", "sentences": sent},
        ],
    }
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data), encoding="utf-8")
    ds = load_captions(tmp_path, progress=False)
    assert ds.format == "karpathy"
    assert [im.split for im in ds.images] == ["train", "train", "val", "test"]
    assert ds.images[0].captions == ["A dog.", "Two dogs"]
    assert split_captions(ds) == {"train": [0, 1], "val": [2], "test": [3]}


def test_demo_metadata_folder(tmp_path: Path) -> None:
    folder = make_classification_folder(tmp_path / "shapes", n_per_class=2, progress=False)
    ds = load_captions(folder, progress=False)
    assert ds.format == "demo" and len(ds) == 12 and ds.problems == []
    assert all(len(im.captions) == 5 for im in ds.images)


# ----------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "scenes"
    make_caption_scenes(out, n_images=40, img_size=32, seed=2, progress=False)
    for k in (3, 7, 11):  # byte-identical copies under new names
        shutil.copy(out / "Images" / f"scene_{k:05d}.png", out / "Images" / f"copy_{k}.png")
    with open(out / "captions.txt", "a", encoding="utf-8") as fh:
        fh.writelines(f"copy_{k}.png,another caption of copy {k}\n" for k in (3, 7, 11))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_seeded_split_is_by_image_and_never_leaks(scenes: Path, seed: int) -> None:
    ds = load_captions(scenes, progress=False)
    splits = split_captions(ds, (0.6, 0.2, 0.2), seed=seed)
    assert sorted(i for v in splits.values() for i in v) == list(range(len(ds)))
    sha = {name: {file_sha256(ds.images[i].path) for i in idx} for name, idx in splits.items()}
    assert not (sha["train"] & sha["val"] or sha["train"] & sha["test"] or sha["val"] & sha["test"])
    assert all(len(v) >= 1 for v in splits.values())
    assert splits == split_captions(ds, (0.6, 0.2, 0.2), seed=seed)
    assert splits != split_captions(ds, (0.6, 0.2, 0.2), seed=seed + 10)


def test_own_split_moves_duplicates_to_the_held_out_side(tmp_path: Path) -> None:
    root = _official(tmp_path)
    shutil.copy(root / "Flicker8k_Dataset" / "d.jpg", root / "Flicker8k_Dataset" / "a.jpg")
    ds = load_captions(root, progress=False)
    named = {k: [ds.images[i].path.name for i in v] for k, v in split_captions(ds).items()}
    assert named == {"train": ["b.jpg"], "val": ["c.jpg"], "test": ["a.jpg", "d.jpg"]}


def test_split_file_round_trip(scenes: Path, tmp_path: Path) -> None:
    ds = load_captions(scenes, progress=False)
    splits = split_captions(ds, seed=4)
    write_split(tmp_path / "split.json", ds, splits)
    again = load_captions(scenes, progress=False)
    assert read_split(tmp_path / "split.json", again) == splits
    # An image gone since the split was written is reported and left out, not fatal.
    data = json.loads((tmp_path / "split.json").read_text())
    data["splits"]["test"].append("Images/deleted.png")
    (tmp_path / "split.json").write_text(json.dumps(data))
    assert read_split(tmp_path / "split.json", again) == splits
    assert again.problems[-1][0].name == "deleted.png"
    with pytest.raises(ValueError, match="not a caption split file"):
        read_split(scenes / "captions.txt", again)


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_comes_from_the_training_split_only(tmp_path: Path) -> None:
    ds = load_captions(_official(tmp_path), progress=False)
    splits = split_captions(ds)  # train: a, b; val: c; test: d
    vocab = build_vocabulary(ds, splits, min_word_count=1)
    assert vocab.itos[:4] == list(SPECIALS)
    assert "a" in vocab and "b" in vocab and "c" not in vocab and "d" not in vocab
    assert vocab.encode("dog c jumps") == [START, vocab.stoi["dog"], UNK, vocab.stoi["jumps"], END]
    # By hand, over a's and b's captions: "a" 6 + 2 = 8, "dog" 4 + 4 = 8, "b" 4, "runs" 2.
    # Ties go alphabetically, so "a" comes before "dog".
    assert build_vocabulary(ds, splits, min_word_count=4).itos[4:] == ["a", "dog", "b"]
    assert build_vocabulary(ds, splits, min_word_count=5).itos[4:] == ["a", "dog"]


def test_encode_decode() -> None:
    vocab = Vocabulary.build(["A red circle.", "a blue circle", "a red square"], min_word_count=1)
    ids = vocab.encode("A red, circle!")
    assert ids[0] == START and ids[-1] == END
    assert vocab.decode(ids) == " ".join(tokenize("A red, circle!")) == "a red circle"
    assert vocab.decode([START, vocab.stoi["red"], UNK, PAD, vocab.stoi["square"], END, 5]) == (
        "red square"
    )
    assert vocab.encode("a red circle on blue", max_len=4) == [
        START, vocab.stoi["a"], vocab.stoi["red"], END]  # fmt: skip
    assert vocab.decode(torch.tensor(vocab.encode("blue square"))) == "blue square"
    with pytest.raises(ValueError, match="min_word_count"):
        Vocabulary.build([], min_word_count=0)


def test_vocab_json_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["a dog", "a cat", "a dog runs"], min_word_count=2)
    path = vocab.save(tmp_path)
    assert path == tmp_path / "vocab.json"
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, not a pickle
    assert data["words"] == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    loaded = Vocabulary.load(path)
    assert loaded == vocab and len(loaded) == 6 and loaded.min_word_count == 2
    (tmp_path / "bad.json").write_text('{"words": ["a", "b"]}')
    with pytest.raises(ValueError, match="not a usable vocab.json"):
        Vocabulary.load(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- torch side


def test_collate_pads_with_pad_id() -> None:
    batch = [
        (torch.zeros(3), torch.tensor([1, 5, 2]), 3),
        (torch.ones(3), torch.tensor([1, 6, 7, 8, 2]), 5),
        (torch.full((3,), 2.0), torch.tensor([1, 2]), 2),
    ]
    x, caps, lengths = collate_captions(batch)
    assert x.shape == (3, 3) and x[2, 0] == 2.0
    assert caps.tolist() == [[1, 5, 2, 0, 0], [1, 6, 7, 8, 2], [1, 2, 0, 0, 0]]
    assert lengths.tolist() == [3, 5, 2]


def test_sampler_cycles_through_every_caption(scenes: Path) -> None:
    ds = load_captions(scenes, progress=False)
    vocab = build_vocabulary(ds, {"train": list(range(len(ds)))}, min_word_count=1)
    train = CaptionTrainDataset(ds.images[:10], vocab, features=np.zeros((10, 4), np.float32))
    sampler = OneCaptionPerImageSampler(train, seed=3)
    epochs = [list(sampler) for _ in range(5)]  # 5 captions each: one full cycle
    for order in epochs:
        assert sorted(train.pairs[k][0] for k in order) == list(range(10))
    for image in range(10):
        used = sorted(train.pairs[k][1] for order in epochs for k in order
                      if train.pairs[k][0] == image)  # fmt: skip
        assert used == [0, 1, 2, 3, 4]
    sampler.set_epoch(2)
    assert list(sampler) == epochs[2]
    assert list(OneCaptionPerImageSampler(train, seed=3)) == epochs[0]


def test_datamodule_batches(scenes: Path) -> None:
    ds = load_captions(scenes, progress=False)
    splits = split_captions(ds)
    vocab = build_vocabulary(ds, splits, min_word_count=1)
    tf = build_eval_transform(24)
    dm = CaptionDataModule(ds, splits, vocab, tf, tf, batch_size=8, num_workers=0, seed=1)
    x, caps, lengths = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 24, 24) and caps.shape == (8, int(lengths.max()))
    assert (caps[:, 0] == START).all()
    assert all(caps[b, lengths[b] - 1] == END and (caps[b, lengths[b] :] == PAD).all()
               for b in range(8))  # fmt: skip
    assert len(dm.train_dataloader()) == len(splits["train"]) // 8
    x, idx = next(iter(dm.val_dataloader()))
    refs = dm.references("val")
    assert len(refs) == len(splits["val"]) and x.shape[0] == len(refs)
    assert refs[int(idx[1])] == ds.images[splits["val"][1]].captions


def test_datamodule_with_cached_features(scenes: Path) -> None:
    ds = load_captions(scenes, progress=False)
    splits = split_captions(ds)
    vocab = build_vocabulary(ds, splits, min_word_count=1)
    feats = np.arange(len(ds) * 3, dtype=np.float32).reshape(len(ds), 3)
    dm = CaptionDataModule(ds, splits, vocab, batch_size=4, num_workers=0, features=feats)
    x, _, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3)
    assert set(x[:, 0].tolist()) <= {feats[i, 0] for i in splits["train"]}
    x, idx = next(iter(dm.test_dataloader()))
    np.testing.assert_array_equal(x.numpy(), feats[[splits["test"][int(i)] for i in idx]])
    with pytest.raises(ValueError, match="transform"):
        CaptionDataModule(ds, splits, vocab).train_dataloader()


def test_feature_cache_feeds_the_datamodule(scenes: Path, tmp_path: Path) -> None:
    ds = load_captions(scenes, progress=False)
    splits = split_captions(ds, seed=1)
    vocab = build_vocabulary(ds, splits, min_word_count=1)
    gone = ds.images[splits["train"][0]].path
    work = shutil.copytree(scenes, tmp_path / "copy")
    ds = load_captions(work, progress=False)
    gone = work / gone.relative_to(scenes)
    gone.write_bytes(b"broken since the dataset was loaded")

    def mean_rgb(images: list[Image.Image]) -> np.ndarray:
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])

    cache = FeatureCache("mean-rgb", tmp_path / "cache")
    feats = cache.compute([im.path for im in ds.images], mean_rgb, progress=False)
    assert [p for p, _ in cache.problems] == [gone]
    dm = CaptionDataModule(ds, splits, vocab, batch_size=64, num_workers=0, features=feats)
    assert len(dm.splits["train"]) == len(splits["train"]) - 1
    assert ds.problems[-1][0] == gone
    x, _, _ = next(iter(dm.train_dataloader()))
    assert not torch.isnan(x).any() and x.shape[1] == 3


# ----------------------------------------------------------------------------- demo scenes


def test_caption_scenes_are_a_flickr8k_dataset(tmp_path: Path, scenes: Path) -> None:
    out = make_caption_scenes(tmp_path / "s", n_images=40, img_size=32, seed=2, progress=False)
    again = make_caption_scenes(tmp_path / "t", n_images=40, img_size=32, seed=2, progress=False)
    other = make_caption_scenes(tmp_path / "u", n_images=5, img_size=32, seed=3, progress=False)
    assert (out / "captions.txt").read_bytes() == (again / "captions.txt").read_bytes()
    for name in ("scene_00000.png", "scene_00039.png"):
        assert (out / "Images" / name).read_bytes() == (scenes / "Images" / name).read_bytes()
    assert (other / "Images/scene_00000.png").read_bytes() != (
        out / "Images/scene_00000.png"
    ).read_bytes()
    assert (out / "captions.txt").read_text().splitlines()[0] == "image,caption"
    ds = load_captions(out, progress=False)
    assert ds.format == "flickr8k" and len(ds) == 40 and ds.problems == []
    assert all(len(im.captions) == 5 for im in ds.images)
    # The third caption says how many objects there are: 1..3 of them, all counts present.
    counts = {"one" if c.startswith("there is") else c.split()[2]
              for c in (im.captions[2] for im in ds.images)}  # fmt: skip
    assert counts == {"one", "two", "three"}
    with pytest.raises(FileExistsError):
        make_caption_scenes(out, n_images=2, progress=False)
