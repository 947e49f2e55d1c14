"""Tests for pixtell.data.folders: folder scan, seeded leak-free stratified split, manifests."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pixtell.data import folders
from pixtell.data.folders import (
    ImageFolderScan,
    Sample,
    find_duplicates,
    list_images,
    read_split,
    scan_image_folder,
    stratified_split,
    write_split,
)

# ----------------------------------------------------------------------------- helpers


def _image(path: Path) -> Path:
    """A tiny PNG/JPEG whose content depends only on its path relative to the test root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = zlib.crc32("/".join(path.parts[-3:]).encode())
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _tree(root: Path, sizes: dict[str, int], ext: str = "png") -> dict[str, list[Path]]:
    return {
        c: [_image(root / c / f"{c}_{i:03d}.{ext}") for i in range(n)] for c, n in sizes.items()
    }


def _scan(root: Path, **kwargs) -> ImageFolderScan:
    return scan_image_folder(root, progress=False, **kwargs)


def _paths(scan: ImageFolderScan, split: str) -> set[Path]:
    return {s.path for s in scan.splits[split]}


def _all_split_paths(scan: ImageFolderScan) -> list[Path]:
    return [s.path for split in ("train", "val", "test") for s in scan.splits[split]]


def _split_of(scan: ImageFolderScan) -> dict[Path, str]:
    return {s.path: name for name, items in scan.splits.items() for s in items}


def _class_counts(scan: ImageFolderScan, split: str) -> Counter[str]:
    return Counter(scan.classes[s.label] for s in scan.splits[split])


def _fake(sizes: list[int]) -> list[Sample]:
    return [Sample(Path(f"/d/c{c}/{i:03d}.png"), c) for c, n in enumerate(sizes) for i in range(n)]


# ----------------------------------------------------------------------------- scan basics


def test_scan_labels_partition_and_stratification(tmp_path: Path) -> None:
    files = _tree(tmp_path, {"dog": 6, "cat": 10, "bird": 3})
    scan = _scan(tmp_path)
    assert scan.classes == ["bird", "cat", "dog"]
    assert scan.root == tmp_path.resolve() and not scan.presplit
    assert scan.skipped == [] and scan.duplicates == []
    assert set(scan.splits) == {"train", "val", "test"}
    paths = _all_split_paths(scan)
    assert len(paths) == len(set(paths)) == 19  # a partition: no file twice
    assert set(paths) == {p.resolve() for ps in files.values() for p in ps}
    for split in ("train", "val", "test"):
        for s in scan.splits[split]:
            assert s.path.is_absolute() and scan.classes[s.label] == s.path.parent.name
    assert _class_counts(scan, "train") == {"cat": 8, "dog": 4, "bird": 1}
    assert _class_counts(scan, "val") == {"cat": 1, "dog": 1, "bird": 1}
    assert _class_counts(scan, "test") == {"cat": 1, "dog": 1, "bird": 1}


def test_nested_subfolders_belong_to_their_class(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 3, "b": 3})
    nested = _image(tmp_path / "a" / "deeper" / "more" / "n.jpg")
    scan = _scan(tmp_path)
    assert nested.resolve() in _split_of(scan)
    assert {
        s.label
        for s in scan.splits["train"] + scan.splits["val"] + scan.splits["test"]
        if s.path == nested.resolve()
    } == {0}


def test_split_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 30, "b": 25})
    first, again = _scan(tmp_path, seed=7), _scan(tmp_path, seed=7)
    assert first.splits == again.splits
    other = _scan(tmp_path, seed=8)
    assert other.splits != first.splits
    assert {k: len(v) for k, v in other.splits.items()} == {
        k: len(v) for k, v in first.splits.items()
    }


def test_split_reproducible_across_processes(tmp_path: Path) -> None:
    samples = _fake([12, 9, 4])
    here = stratified_split(samples, seed=3)
    code = (
        "import json; from pathlib import Path\n"
        "from pixtell.data.folders import Sample, stratified_split\n"
        f"s = [Sample(Path(p), l) for p, l in {[(str(s.path), s.label) for s in samples]!r}]\n"
        "out = stratified_split(s, seed=3)\n"
        "print(json.dumps({k: [str(x.path) for x in v] for k, v in out.items()}))\n"
    )
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        there = json.loads(result.stdout)
        assert there == {k: [str(x.path) for x in v] for k, v in here.items()}


def test_listing_order_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, {"a": 12, "b": 7, "c": 4})
    shutil.copy(tmp_path / "a" / "a_000.png", tmp_path / "b" / "dup.png")
    expected = _scan(tmp_path, seed=5)
    real_listdir = folders._listdir
    for order in ("reversed", "shuffled"):
        rng = random.Random(order)

        def listdir(folder: Path, order: str = order, rng: random.Random = rng) -> list[Path]:
            entries = real_listdir(folder)
            return entries[::-1] if order == "reversed" else rng.sample(entries, len(entries))

        monkeypatch.setattr(folders, "_listdir", listdir)
        assert _scan(tmp_path, seed=5) == expected


def test_stratified_split_input_order_does_not_matter() -> None:
    samples = _fake([15, 8, 3])
    expected = stratified_split(samples, seed=11)
    for seed in range(3):
        shuffled = random.Random(seed).sample(samples, len(samples))
        assert stratified_split(shuffled, seed=11) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (10, (8, 1, 1)),
        (20, (16, 2, 2)),
        (35, (27, 4, 4)),
    ],
)
def test_split_sizes(n: int, expected: tuple[int, int, int]) -> None:
    out = stratified_split(_fake([n]), fractions=(0.8, 0.1, 0.1), seed=0)
    assert (len(out["train"]), len(out["val"]), len(out["test"])) == expected


def test_zero_fraction_gets_nothing() -> None:
    out = stratified_split(_fake([10, 3]), fractions=(0.7, 0.3, 0.0), seed=0)
    assert out["test"] == []
    assert Counter(s.label for s in out["val"]) == {0: 3, 1: 1}


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.1, -0.1, 0.0)])
def test_bad_fractions_rejected(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(_fake([5]), fractions=fractions)


def test_same_path_twice_rejected() -> None:
    sample = Sample(Path("/d/a/x.png"), 0)
    with pytest.raises(ValueError, match="listed twice"):
        stratified_split([sample, sample])


# ----------------------------------------------------------------------------- leaks


def test_identical_files_share_a_split_and_are_reported(tmp_path: Path) -> None:
    files = _tree(tmp_path, {"a": 30, "b": 30})
    groups = []
    for i in range(6):
        src = files["a"][i]
        copies = [tmp_path / "a" / f"copy_{i}.png", tmp_path / "b" / f"copy_{i}.png"]
        for c in copies:
            shutil.copy(src, c)
        groups.append(sorted(p.resolve() for p in [src, *copies]))
    scan = _scan(tmp_path, seed=1)
    assert sorted(scan.duplicates) == sorted(groups)
    where = _split_of(scan)
    for group in groups:
        assert len({where[p] for p in group}) == 1, group
    paths = _all_split_paths(scan)
    assert len(paths) == len(set(paths)) == 72


def test_same_content_in_two_classes_is_a_label_conflict(tmp_path: Path) -> None:
    files = _tree(tmp_path, {"cat": 5, "dog": 5})
    same_class = shutil.copy(files["cat"][1], tmp_path / "cat" / "again.png")
    other_class = shutil.copy(files["cat"][0], tmp_path / "dog" / "mislabelled.png")
    third = shutil.copy(files["cat"][0], tmp_path / "cat" / "third.png")
    scan = _scan(tmp_path)
    conflict = sorted(p.resolve() for p in (files["cat"][0], other_class, third))
    assert scan.conflicts == [conflict]
    twins = sorted([files["cat"][1].resolve(), same_class.resolve()])
    assert sorted(scan.duplicates) == sorted([conflict, twins])
    where = _split_of(scan)  # kept, in one split, with each file's own folder as its label
    assert len({where[p] for p in conflict}) == 1
    labels = {s.path: scan.classes[s.label] for items in scan.splits.values() for s in items}
    assert [labels[p] for p in conflict] == ["cat", "cat", "dog"]


def test_presplit_conflict_across_splits_is_reported(tmp_path: Path) -> None:
    train = _tree(tmp_path / "train", {"a": 3, "b": 3})
    _tree(tmp_path / "val", {"a": 1, "b": 1})
    moved = shutil.copy(train["a"][0], tmp_path / "val" / "b" / "x.png")
    leak = shutil.copy(train["b"][0], tmp_path / "val" / "b" / "y.png")  # same class: no conflict
    scan = _scan(tmp_path)
    assert scan.conflicts == [[train["a"][0].resolve(), moved.resolve()]]
    assert [train["b"][0].resolve(), leak.resolve()] in scan.duplicates


def test_find_duplicates(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a.bin", "b.bin", "c.bin"))
    a.write_bytes(b"same")
    b.write_bytes(b"other")
    c.write_bytes(b"same")
    groups, hashes = find_duplicates([c, b, a])
    assert groups == [[a, c]]
    assert set(hashes) == {a, b, c} and hashes[a] == hashes[c] != hashes[b]


@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
    group_of=st.lists(st.integers(0, 5), min_size=100, max_size=100),
)
@settings(max_examples=60, deadline=None)
def test_property_groups_never_split(sizes: list[int], seed: int, group_of: list[int]) -> None:
    samples = _fake(sizes)
    # Group some samples (possibly across classes) as if they had identical content.
    groups = {s.path: f"g{group_of[i % 100]}" for i, s in enumerate(samples) if i % 3 == 0}
    out = stratified_split(samples, seed=seed, groups=groups)
    where = {s.path: name for name, items in out.items() for s in items}
    assert sorted(where) == sorted(s.path for s in samples)
    for key in set(groups.values()):
        assert len({where[p] for p, g in groups.items() if g == key}) == 1


# ----------------------------------------------------------------------------- bad files


def test_bad_files_skipped_reported_and_never_split(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 5, "b": 5})
    empty = tmp_path / "a" / "empty.png"
    empty.touch()
    truncated = _image(tmp_path / "a" / "cut.jpg")
    truncated.write_bytes(truncated.read_bytes()[:100])
    text_jpg = tmp_path / "b" / "fake.JPG"
    text_jpg.write_text("hello")
    notes = tmp_path / "b" / "notes.txt"
    notes.write_text("hello")
    stray = _image(tmp_path / "stray.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    _image(tmp_path / "a" / ".thumbs" / "hidden.png")
    _image(tmp_path / ".cache" / "x" / "y.png")

    scan = _scan(tmp_path)
    reasons = {p: r for p, r in scan.skipped}
    expected = {p.resolve() for p in (empty, truncated, text_jpg, notes, stray)}
    assert set(reasons) == expected
    assert reasons[empty.resolve()].startswith("file is empty (0 bytes)")
    assert "truncated or corrupt" in reasons[truncated.resolve()]
    assert "cannot identify image file" in reasons[text_jpg.resolve()]
    assert reasons[notes.resolve()] == (
        "not an image file extension (.txt); move it out of the data folder"
    )
    assert "class folder" in reasons[stray.resolve()]
    assert scan.classes == ["a", "b"]
    in_splits = set(_all_split_paths(scan))
    assert len(in_splits) == 10 and not in_splits & expected
    assert not any(".thumbs" in str(p) or ".cache" in str(p) for p in in_splits)


def test_verify_false_skips_only_by_extension(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 3})
    broken = tmp_path / "a" / "broken.png"
    broken.write_text("nope")
    (tmp_path / "a" / "readme.md").write_text("x")
    scan = _scan(tmp_path, verify=False)
    assert broken.resolve() in _split_of(scan)
    assert [p.name for p, _ in scan.skipped] == ["readme.md"]


def test_pixel_limit_skips_large_images(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 3})
    Image.new("RGB", (30, 30)).save(tmp_path / "a" / "big.png")
    scan = _scan(tmp_path, max_pixels=100)
    assert [(p.name, "900 pixels" in r) for p, r in scan.skipped] == [("big.png", True)]


@pytest.mark.parametrize("content", ["none", "corrupt", "hidden-only"])
def test_class_folder_without_usable_images_is_an_error(tmp_path: Path, content: str) -> None:
    _tree(tmp_path, {"good": 3})
    bad = tmp_path / "empty_class"
    bad.mkdir()
    if content == "corrupt":
        (bad / "x.png").write_bytes(b"garbage")
    elif content == "hidden-only":
        _image(bad / ".hidden.png")
    with pytest.raises(ValueError, match="empty_class") as info:
        _scan(tmp_path)
    assert "no usable images" in str(info.value)


def test_bad_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist") as info:
        _scan(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value) and "DATA/<class>/<image>" in str(
        info.value
    )
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a folder"):
        _scan(a_file)
    flat = tmp_path / "flat"
    _image(flat / "one.png")
    with pytest.raises(ValueError, match="no class sub-folders") as info:
        _scan(flat)
    assert str(flat) in str(info.value) and "DATA/<class>/<image>" in str(info.value)


# ----------------------------------------------------------------------------- pre-split layout


def test_presplit_layout_honoured(tmp_path: Path) -> None:
    train = _tree(tmp_path / "train", {"a": 4, "b": 3})
    val = _tree(tmp_path / "val", {"a": 2, "c": 1})
    test = _tree(tmp_path / "test", {"b": 2})
    scan = _scan(tmp_path, seed=3)
    assert scan.presplit and scan.classes == ["a", "b", "c"]
    for split, files in (("train", train), ("val", val), ("test", test)):
        assert _paths(scan, split) == {p.resolve() for ps in files.values() for p in ps}
        for s in scan.splits[split]:
            assert scan.classes[s.label] == s.path.parent.name


def test_presplit_without_val_carves_it_from_train(tmp_path: Path) -> None:
    train = _tree(tmp_path / "train", {"a": 20, "b": 5})
    scan = _scan(tmp_path, fractions=(0.8, 0.1, 0.1), seed=0)
    assert scan.presplit and scan.splits["test"] == []
    assert _paths(scan, "train") | _paths(scan, "val") == {
        p.resolve() for ps in train.values() for p in ps
    }
    assert not _paths(scan, "train") & _paths(scan, "val")
    assert _class_counts(scan, "val") == {"a": 2, "b": 1}
    assert _scan(tmp_path, seed=0).splits == scan.splits


def test_presplit_cross_split_duplicate_kept_only_in_held_out_split(tmp_path: Path) -> None:
    _tree(tmp_path / "train", {"a": 4})
    test = _tree(tmp_path / "test", {"a": 2})
    leaked = tmp_path / "train" / "a" / "leak.png"
    shutil.copy(test["a"][0], leaked)
    scan = _scan(tmp_path)
    assert leaked.resolve() not in _split_of(scan)
    assert test["a"][0].resolve() in _paths(scan, "test")
    reasons = dict(scan.skipped)
    assert "same content as" in reasons[leaked.resolve()]
    assert [sorted(p.name for p in g) for g in scan.duplicates] == [["a_000.png", "leak.png"]]


def test_train_folder_without_class_folders_is_a_class(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": 3, "zebra": 3})
    scan = _scan(tmp_path)
    assert not scan.presplit and scan.classes == ["train", "zebra"]


@pytest.mark.parametrize("splits", [["train"], ["train", "val"], ["train", "val", "test"]])
def test_class_named_train_never_flips_to_presplit(tmp_path: Path, splits: list[str]) -> None:
    # A class folder named like a split, with sub-folders (e.g. photo sessions) inside it.
    nested = {s: _image(tmp_path / s / "session1" / f"{s}.png") for s in splits}
    _tree(tmp_path, {"zebra": 3})
    for s in splits:
        _tree(tmp_path / s, {"session2": 2})
    scan = _scan(tmp_path)
    assert not scan.presplit and scan.classes == sorted([*splits, "zebra"])
    where = {s.path: scan.classes[s.label] for items in scan.splits.values() for s in items}
    for name, path in nested.items():
        assert where[path.resolve()] == name
    assert len(where) == 3 + 3 * len(splits)


def test_presplit_with_hidden_folders_and_top_level_files(tmp_path: Path) -> None:
    _tree(tmp_path / "train", {"a": 3, "b": 3})
    _tree(tmp_path / "test", {"a": 1})
    _image(tmp_path / ".thumbnails" / "x" / "t.png")
    readme = tmp_path / "README.txt"
    readme.write_text("about this data")
    scan = _scan(tmp_path)
    assert scan.presplit and scan.classes == ["a", "b"]
    assert [p for p, _ in scan.skipped] == [readme.resolve()]


# ----------------------------------------------------------------------------- subsets


def test_max_samples_per_class(tmp_path: Path) -> None:
    files = _tree(tmp_path, {"a": 20, "b": 5})
    scan = _scan(tmp_path, max_samples_per_class=7, seed=2)
    counts = Counter(
        scan.classes[s.label]
        for s in (scan.splits["train"] + scan.splits["val"] + scan.splits["test"])
    )
    assert counts == {"a": 7, "b": 5}
    assert _scan(tmp_path, max_samples_per_class=7, seed=2).splits == scan.splits
    chosen = {p for p in _split_of(scan) if p.parent.name == "a"}
    other = {
        p
        for p in _split_of(_scan(tmp_path, max_samples_per_class=7, seed=3))
        if p.parent.name == "a"
    }
    assert chosen != other and chosen <= {p.resolve() for p in files["a"]}
    with pytest.raises(ValueError, match="max_samples_per_class"):
        _scan(tmp_path, max_samples_per_class=0)


# ----------------------------------------------------------------------------- listing


def _touch(folder: Path, *names: str) -> list[Path]:
    """Empty files: listing looks at names only, never at content."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / n for n in names]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """inbox/{b.JPG, a.png, notes.txt, .hidden.png}, sub/{c.png, d/e.jpg}, .cache/, out/cat/."""
    root = tmp_path / "inbox"
    _touch(root, "b.JPG", "a.png", "notes.txt", ".hidden.png")
    _touch(root / "sub", "c.png", "readme.md")
    _touch(root / "sub" / "d", "e.jpg")
    _touch(root / ".cache", "f.png")
    _touch(root / "out" / "cat", "g.png")
    return root


def test_list_images_top_level_counts_what_it_did_not_search(inbox: Path) -> None:
    listing = list_images(inbox, exclude=inbox / "out")
    assert listing.paths == [inbox / "a.png", inbox / "b.JPG"]
    assert listing.not_searched == 2  # c.png and e.jpg; not .cache, not the excluded out
    assert listing.symlinks == listing.missing == listing.unreadable == []
    assert list_images(str(inbox)).not_searched == 3  # nothing excluded: out/cat/g.png too


def test_list_images_recursive(inbox: Path) -> None:
    listing = list_images(inbox, recursive=True, exclude=inbox / "out")
    names = ["a.png", "b.JPG", "sub/c.png", "sub/d/e.jpg"]
    assert listing.paths == sorted(inbox / n for n in names)
    assert listing.not_searched == 0


def test_list_images_exclude_by_any_name(inbox: Path, tmp_path: Path) -> None:
    (tmp_path / "link-to-out").symlink_to(inbox / "out")
    for exclude in (tmp_path / "link-to-out", inbox / "sub" / ".." / "out"):
        listing = list_images(inbox, recursive=True, exclude=exclude)
        assert inbox / "out" / "cat" / "g.png" not in listing.paths
    assert list_images(inbox, exclude=tmp_path / "not-made-yet").not_searched == 3


def test_list_images_reports_symlinks_and_never_follows_them(inbox: Path, tmp_path: Path) -> None:
    elsewhere = _touch(tmp_path / "elsewhere", "x.png")[0]
    (inbox / "link.png").symlink_to(elsewhere)
    (inbox / "broken.png").symlink_to(tmp_path / "gone.png")
    (inbox / "link.txt").symlink_to(elsewhere)  # not an image name: not reported
    (inbox / "sub" / "linked-folder").symlink_to(tmp_path / "elsewhere")
    flat = list_images(inbox)
    assert flat.symlinks == [inbox / "broken.png", inbox / "link.png"]
    assert flat.not_searched == 3  # c.png, e.jpg, out/cat/g.png; not the linked folder's x.png
    deep = list_images(inbox, recursive=True)
    assert deep.symlinks == [
        inbox / "broken.png",
        inbox / "link.png",
        inbox / "sub" / "linked-folder",
    ]
    assert not any("elsewhere" in str(p) or "link" in p.name for p in deep.paths)


def test_list_images_explicit_files_missing_inputs_and_no_repeats(
    inbox: Path, tmp_path: Path
) -> None:
    hidden = inbox / ".hidden.png"
    listing = list_images([inbox / "b.JPG", hidden, inbox, tmp_path / "nope.png", "nope-dir"])
    assert listing.paths == [hidden, inbox / "a.png", inbox / "b.JPG"]
    assert listing.missing == [tmp_path / "nope.png", Path("nope-dir")]
    assert list_images([]).paths == []


def test_list_images_unreadable_folder_is_reported(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = inbox / "sub" / "d"
    real_scandir = os.scandir

    def scandir(path: Path) -> object:  # chmod 0 does not stop root, so fake the refusal
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folders.os, "scandir", scandir)
    listing = list_images(inbox, recursive=True)
    assert listing.unreadable == [
        (locked, "cannot list folder (Permission denied); check its permissions")
    ]
    assert inbox / "sub" / "c.png" in listing.paths


# ----------------------------------------------------------------------------- manifests


def test_write_read_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data, {"a": 6, "b": 4})
    shutil.copy(files["a"][0], data / "b" / "dup.png")
    (data / "a" / "junk.txt").write_text("x")
    scan = _scan(data, seed=4, fractions=(0.6, 0.2, 0.2))
    assert len(scan.conflicts) == 1
    out = tmp_path / "manifests" / "split.json"
    write_split(out, scan)
    back = read_split(out)
    assert back == scan
    raw = json.loads(out.read_text())
    assert raw["root"] == str(data.resolve())
    assert raw["seed"] == 4 and raw["fractions"] == [0.6, 0.2, 0.2] and raw["presplit"] is False
    assert raw["classes"] == ["a", "b"]
    assert raw["skipped"] == [["a/junk.txt", scan.skipped[0][1]]]
    assert raw["duplicates"] == [["a/a_000.png", "b/dup.png"]]
    assert raw["conflicts"] == [["a/a_000.png", "b/dup.png"]]
    for rows in raw["splits"].values():
        assert rows == sorted(rows)
        assert all(not Path(rel).is_absolute() and "\\" not in rel for rel, _ in rows)
    first = out.read_bytes()
    write_split(out, back)
    assert out.read_bytes() == first
    assert first.startswith(b"{\n  ") and first.endswith(b"\n")


def test_read_split_without_conflicts_key(tmp_path: Path) -> None:
    _tree(tmp_path / "data", {"a": 3, "b": 3})
    out = tmp_path / "split.json"
    write_split(out, _scan(tmp_path / "data"))
    raw = json.loads(out.read_text())
    del raw["conflicts"]  # written before label conflicts were recorded
    out.write_text(json.dumps(raw))
    assert read_split(out).conflicts == []


def test_read_split_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"classes": []}')
    with pytest.raises(ValueError, match="not a valid split file"):
        read_split(path)


# ----------------------------------------------------------------------------- properties


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    seed=st.integers(0, 2**63),
    fractions=st.sampled_from(
        [
            (0.8, 0.1, 0.1),
            (0.7, 0.15, 0.15),
            (0.5, 0.5, 0.0),
            (0.34, 0.33, 0.33),
            (1.0, 0.0, 0.0),
            (0.0, 0.5, 0.5),
        ]
    ),
)
@settings(max_examples=150, deadline=None)
def test_property_stratified_split_is_an_exact_partition(
    sizes: list[int], seed: int, fractions: tuple[float, float, float]
) -> None:
    samples = _fake(sizes)
    out = stratified_split(samples, fractions=fractions, seed=seed)
    assert set(out) == {"train", "val", "test"}
    placed = [s for split in out.values() for s in split]
    assert sorted(placed, key=lambda s: str(s.path)) == sorted(samples, key=lambda s: str(s.path))
    assert out == stratified_split(list(reversed(samples)), fractions=fractions, seed=seed)
    for label, n in enumerate(sizes):
        count = {k: sum(s.label == label for s in v) for k, v in out.items()}
        assert count["train"] >= 1
        for split, frac in (("val", fractions[1]), ("test", fractions[2])):
            if frac == 0:
                assert count[split] == 0
            elif n >= 3:
                assert count[split] >= 1
