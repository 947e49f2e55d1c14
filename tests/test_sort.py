"""Tests for pixtell.classify.sort: safe sorting by prediction, manifest and undo."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixtell.classify.sort import (
    Placement,
    PredictFn,
    Prediction,
    SortInterrupted,
    sort_folder,
    undo_sort,
)
from pixtell.data.images import ImageLoadError

# importlib, not ``from pixtell.classify import sort``: the package's ``sort`` function
# shadows the submodule attribute.
sort_mod = importlib.import_module("pixtell.classify.sort")
MANIFEST_SUFFIXES = (".jsonl", ".undone")


def write_files(folder: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    """Create files with random bytes; return name -> content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    contents = {}
    for name in names:
        data = rng.randbytes(64)
        (folder / name).write_bytes(data)
        contents[name] = data
    return contents


def fake_predict(table: dict[str, Prediction | Exception]) -> PredictFn:
    """A predict function that looks each file's name up in ``table``."""
    return lambda paths: [table[p.name] for p in paths]


def snapshot(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``, manifests excluded."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(MANIFEST_SUFFIXES)
    }


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


# --------------------------------------------------------------------------- routing


def test_threshold_routes_low_confidence_files_to_others(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png", "b.jpg", "c.PNG"])
    predict = fake_predict({"a.png": ("cat", 0.9), "b.jpg": ("cat", 0.5), "c.PNG": ("dog", 0.6)})
    res = sort_folder(inbox, predict, tmp_path / "out", progress=False)
    assert res.counts == {"cat": 1, "others": 1, "dog": 1}
    assert (tmp_path / "out/others/b.jpg").exists()
    assert (tmp_path / "out/dog/c.PNG").exists()

    res = sort_folder(
        inbox, predict, tmp_path / "out2", threshold=0.4, others="unsure", progress=False
    )
    assert res.counts == {"cat": 2, "dog": 1}
    res = sort_folder(
        inbox, predict, tmp_path / "out3", threshold=0.95, others="unsure", progress=False
    )
    assert res.counts == {"unsure": 3}


def test_copy_keeps_inbox_and_move_empties_it(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    predict = fake_predict({"a.png": ("cat", 0.9), "b.png": ("dog", 0.9)})
    res = sort_folder(inbox, predict, tmp_path / "copy", progress=False)
    assert not res.moved and snapshot(inbox) == files
    assert snapshot(tmp_path / "copy") == {"cat/a.png": files["a.png"], "dog/b.png": files["b.png"]}

    res = sort_folder(inbox, predict, tmp_path / "moved", move=True, progress=False)
    assert res.moved and snapshot(inbox) == {}
    assert snapshot(tmp_path / "moved") == {
        "cat/a.png": files["a.png"],
        "dog/b.png": files["b.png"],
    }


def test_collects_images_only_skipping_hidden_and_out(inbox: Path) -> None:
    write_files(inbox, ["a.png", "notes.txt", ".hidden.png", "b.JPG"])
    write_files(inbox / "sub", ["c.png"])
    write_files(inbox / ".cache", ["d.png"])
    out = inbox / "sorted"
    write_files(out / "cat", ["old.png"])
    predict = fake_predict(dict.fromkeys(["a.png", "b.JPG", "c.png"], ("cat", 0.9)))
    res = sort_folder(inbox, predict, out, progress=False)
    assert [p.source.name for p in res.placements] == ["a.png", "b.JPG"]
    assert res.not_searched == 1  # sub/c.png; not .cache/d.png, not sorted/cat/old.png
    res = sort_folder(inbox, predict, out, recursive=True, progress=False)
    assert sorted(p.source.name for p in res.placements) == ["a.png", "b.JPG", "c.png"]
    assert res.not_searched == 0


@pytest.mark.parametrize("move", [True, False])
def test_symlinks_in_the_inbox_are_reported_and_left(
    inbox: Path, tmp_path: Path, move: bool
) -> None:
    files = write_files(inbox, ["a.png"])
    elsewhere = write_files(tmp_path / "elsewhere", ["x.png"], seed=1)
    (inbox / "link.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    predict = fake_predict({"a.png": ("cat", 0.9), "link.png": ("cat", 0.9)})
    out = tmp_path / "out"
    res = sort_folder(inbox, predict, out, move=move, progress=False)
    assert [p.source.name for p in res.placements] == ["a.png"]
    assert [(p.name, "symbolic link" in why) for p, why in res.skipped] == [("link.png", True)]
    assert (inbox / "link.png").is_symlink()
    assert snapshot(tmp_path / "elsewhere") == elsewhere
    assert snapshot(out) == {"cat/a.png": files["a.png"]}
    entry = read_manifest(res.manifest)[1]
    assert entry["source"] == str(inbox / "link.png") and entry["status"] == "skipped"


def test_invalid_arguments_fail_clearly(inbox: Path, tmp_path: Path) -> None:
    predict = fake_predict({})
    with pytest.raises(ValueError, match="does not exist"):
        sort_folder(tmp_path / "nope", predict, tmp_path / "out", progress=False)
    inbox.mkdir()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            sort_folder(inbox, predict, tmp_path / "out", threshold=bad, progress=False)
    for bad in ("a/b", "..", ""):
        with pytest.raises(ValueError, match="plain folder name"):
            sort_folder(inbox, predict, tmp_path / "out", others=bad, progress=False)


@pytest.mark.parametrize("recursive", [False, True])
def test_out_equal_to_the_inbox_is_refused(inbox: Path, tmp_path: Path, recursive: bool) -> None:
    files = write_files(inbox, ["a.png"])
    (tmp_path / "link").symlink_to(inbox)
    predict = fake_predict({"a.png": ("cat", 0.9)})
    for out in (inbox, inbox / "sub" / "..", tmp_path / "link"):
        (inbox / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="is the inbox itself") as info:
            sort_folder(inbox, predict, out, move=True, recursive=recursive, progress=False)
        assert "Choose another output folder" in str(info.value)
        assert str(inbox / "sorted") in str(info.value)
    assert snapshot(inbox) == files and sorted(p.name for p in inbox.iterdir()) == ["a.png", "sub"]


def test_out_inside_the_inbox_is_left_out(inbox: Path) -> None:
    files = write_files(inbox, ["a.png"])
    predict = fake_predict({"a.png": ("cat", 0.9)})
    first = sort_folder(inbox, predict, inbox / "sorted", move=True, progress=False)
    assert first.not_searched == 0
    write_files(inbox, ["b.png"], seed=1)
    again = sort_folder(
        inbox,
        fake_predict({"b.png": ("dog", 0.9)}),
        inbox / "sorted",
        recursive=True,
        progress=False,
    )
    assert [p.source.name for p in again.placements] == ["b.png"]
    undo_sort(again.manifest, progress=False)
    undo_sort(first.manifest, progress=False)
    assert snapshot(inbox) == files | {"b.png": (inbox / "b.png").read_bytes()}


def test_a_failing_batch_is_retried_file_by_file(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png", "bad.png", "c.png"])

    def predict(paths: list[Path]) -> list[Prediction | Exception]:
        if any(p.name == "bad.png" for p in paths):
            raise ImageLoadError(paths[0], "truncated file")
        return [("cat", 0.9)] * len(paths)

    res = sort_folder(inbox, predict, tmp_path / "out", move=True, progress=False)
    assert res.counts == {"cat": 2}
    assert res.skipped == [(inbox / "bad.png", f"{inbox / 'bad.png'}: truncated file")]
    assert (inbox / "bad.png").exists()


def test_unsafe_class_name_is_skipped(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    res = sort_folder(
        inbox,
        fake_predict({"a.png": ("../evil", 0.9)}),
        tmp_path / "out",
        move=True,
        progress=False,
    )
    assert res.counts == {} and (inbox / "a.png").exists()
    assert "plain folder name" in res.skipped[0][1]
    assert not (tmp_path / "evil").exists()


# --------------------------------------------------------------------------- no overwrite


def test_name_clashes_get_suffixes_and_nothing_is_overwritten(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = write_files(out / "cat", ["a.png", "a_1.png"], seed=1)
    write_files(inbox, ["a.png"], seed=2)
    write_files(inbox / "sub", ["a.png"], seed=3)
    predict = fake_predict({"a.png": ("cat", 0.9)})
    res = sort_folder(inbox, predict, out, move=True, recursive=True, progress=False)
    assert sorted(p.destination.name for p in res.placements) == ["a_2.png", "a_3.png"]
    for name, data in old.items():
        assert (out / "cat" / name).read_bytes() == data


def test_move_falls_back_to_verified_copy_across_devices(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    out = tmp_path / "out"
    old = write_files(out / "cat", ["a.png"], seed=9)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(sort_mod.os, "link", no_link)
    res = sort_folder(
        inbox, fake_predict(dict.fromkeys(files, ("cat", 0.9))), out, move=True, progress=False
    )
    assert snapshot(inbox) == {}
    assert snapshot(out) == {
        "cat/a.png": old["a.png"],
        "cat/a_1.png": files["a.png"],
        "cat/b.png": files["b.png"],
    }
    undo = undo_sort(res.manifest, progress=False)
    assert undo.restored == 2 and not undo.problems
    assert snapshot(inbox) == files


# --------------------------------------------------------------------------- skipped / dry run


def test_unreadable_files_stay_in_place_and_are_reported(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["bad.png", "good.png"])
    predict = fake_predict(
        {"bad.png": ImageLoadError("bad.png", "truncated"), "good.png": ("cat", 0.9)}
    )
    res = sort_folder(inbox, predict, tmp_path / "out", move=True, progress=False)
    assert res.skipped == [(inbox / "bad.png", "bad.png: truncated")]
    assert (inbox / "bad.png").read_bytes() == files["bad.png"]
    entries = read_manifest(res.manifest)[1:]
    bad = next(e for e in entries if e["source"].endswith("bad.png"))
    assert bad["status"] == "skipped" and bad["action"] == "skip" and bad["destination"] is None
    assert bad["reason"] == "bad.png: truncated"
    assert bad["sha256"] == sha(files["bad.png"])


def test_dry_run_changes_nothing(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png", "b.png", "c.png"])
    write_files(tmp_path / "out" / "cat", ["a.png"], seed=5)
    before = snapshot(tmp_path)
    predict = fake_predict(
        {"a.png": ("cat", 0.9), "b.png": ("cat", 0.1), "c.png": OSError("unreadable")}
    )
    res = sort_folder(inbox, predict, tmp_path / "out", move=True, dry_run=True, progress=False)
    assert res.dry_run and res.counts == {"cat": 1, "others": 1} and res.verb == "would sort"
    assert res.placements == [
        Placement(inbox / "a.png", tmp_path / "out/cat/a_1.png", "cat", 0.9),
        Placement(inbox / "b.png", tmp_path / "out/others/b.png", "cat", 0.1),
    ]
    assert res.skipped == [(inbox / "c.png", "unreadable")]
    assert res.manifest == tmp_path / "out" / "sort-manifest.jsonl"
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat"]


def test_dry_run_shows_no_progress_bar(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_files(inbox, ["a.png"])
    shown = []
    real = sort_mod._progress

    def spy(enabled: bool) -> object:
        shown.append(enabled)
        return real(enabled)

    monkeypatch.setattr(sort_mod, "_progress", spy)
    predict = fake_predict({"a.png": ("cat", 0.9)})
    sort_folder(inbox, predict, tmp_path / "out", dry_run=True)
    sort_folder(inbox, predict, tmp_path / "out")
    assert shown == [False, True]


def test_verb_says_what_happened(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    predict = fake_predict({"a.png": ("cat", 0.9)})
    assert sort_folder(inbox, predict, tmp_path / "c", progress=False).verb == "copied"
    assert sort_folder(inbox, predict, tmp_path / "m", move=True, progress=False).verb == "moved"


def test_progress_bar_works_without_a_terminal(
    inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_files(inbox, ["a.png"])
    res = sort_folder(inbox, fake_predict({"a.png": ("cat", 0.9)}), tmp_path / "out")
    assert res.counts == {"cat": 1}
    assert undo_sort(res.manifest).removed_copies == 1


# --------------------------------------------------------------------------- manifest and undo


def test_manifest_format(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png"])
    res = sort_folder(
        inbox, fake_predict({"a.png": ("cat", 0.75)}), tmp_path / "out", move=True, progress=False
    )
    header, entry = read_manifest(res.manifest)
    assert header["type"] == "header" and header["version"] == 2 and header["recursive"] is False
    assert header["inbox"] == str(inbox.resolve()) and header["move"] is True
    assert header["threshold"] == 0.6 and header["others"] == "others" and header["created"]
    assert entry == {
        "type": "entry",
        "source": str(inbox.resolve() / "a.png"),
        "destination": str((tmp_path / "out/cat/a.png").resolve()),
        "class": "cat",
        "probability": 0.75,
        "sha256": sha(files["a.png"]),
        "action": "move",
        "status": "done",
        "reason": None,
    }


def test_undo_after_move_restores_files_and_removes_empty_folders(
    inbox: Path, tmp_path: Path
) -> None:
    files = write_files(inbox, ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    keep = write_files(out / "dog", ["old.png"], seed=4)
    predict = fake_predict({"a.png": ("cat", 0.9), "b.png": ("dog", 0.9), "c.png": ("x", 0.1)})
    res = sort_folder(inbox, predict, out, move=True, progress=False)
    assert snapshot(inbox) == {}
    undo = undo_sort(res.manifest, progress=False)
    assert undo.restored == 3 and undo.removed_copies == 0 and not undo.problems
    assert {n: sha(d) for n, d in snapshot(inbox).items()} == {n: sha(d) for n, d in files.items()}
    assert snapshot(out) == {"dog/old.png": keep["old.png"]}
    assert not (out / "cat").exists() and not (out / "others").exists()
    assert not res.manifest.exists()
    assert res.manifest.with_name("sort-manifest.jsonl.undone").exists()


def test_undo_after_copy_removes_copies_and_keeps_originals(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    out = tmp_path / "out"
    res = sort_folder(inbox, fake_predict(dict.fromkeys(files, ("cat", 0.9))), out, progress=False)
    undo = undo_sort(res.manifest, progress=False)
    assert undo.removed_copies == 2 and undo.restored == 0 and not undo.problems
    assert snapshot(inbox) == files and snapshot(out) == {}
    assert not (out / "cat").exists()


def test_undo_twice_or_missing_manifest_fails_clearly(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    res = sort_folder(
        inbox, fake_predict({"a.png": ("cat", 0.9)}), tmp_path / "out", move=True, progress=False
    )
    undo_sort(res.manifest, progress=False)
    with pytest.raises(ValueError, match="already been undone"):
        undo_sort(res.manifest, progress=False)
    with pytest.raises(ValueError, match="already been undone"):
        undo_sort(res.manifest.with_name(res.manifest.name + ".undone"), progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        undo_sort(tmp_path / "out" / "nothing.jsonl", progress=False)
    assert (inbox / "a.png").exists()


def test_undo_never_overwrites_an_occupied_source(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    res = sort_folder(
        inbox, fake_predict({"a.png": ("cat", 0.9)}), tmp_path / "out", move=True, progress=False
    )
    (inbox / "a.png").write_bytes(b"a new file the user made")
    undo = undo_sort(res.manifest, progress=False)
    assert undo.restored == 0 and undo.problems and "occupied" in undo.problems[0][1]
    assert (inbox / "a.png").read_bytes() == b"a new file the user made"
    assert (tmp_path / "out/cat/a.png").exists()
    assert res.manifest.exists()  # not marked undone: problems remain


def test_undo_keeps_a_modified_copy(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    res = sort_folder(
        inbox, fake_predict({"a.png": ("cat", 0.9)}), tmp_path / "out", progress=False
    )
    (tmp_path / "out/cat/a.png").write_bytes(b"edited")
    undo = undo_sort(res.manifest, progress=False)
    assert undo.removed_copies == 0 and "modified" in undo.problems[0][1]
    assert (tmp_path / "out/cat/a.png").read_bytes() == b"edited"


def test_second_sort_does_not_overwrite_first_manifest(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png"])
    predict = fake_predict({"a.png": ("cat", 0.9)})
    out = tmp_path / "out"
    first = sort_folder(inbox, predict, out, progress=False).manifest
    text = first.read_text()
    second = sort_folder(inbox, predict, out, progress=False).manifest
    assert first.name == "sort-manifest.jsonl" and second.name == "sort-manifest-1.jsonl"
    assert first.read_text() == text
    assert read_manifest(second)[1]["destination"] == read_manifest(first)[1]["destination"]
    undo_sort(first, progress=False)
    third = sort_folder(inbox, predict, out, progress=False).manifest
    assert third.name == "sort-manifest-2.jsonl"  # free, and its .undone twin too


@pytest.mark.parametrize("move", [True, False])
@pytest.mark.parametrize("link", ["file", "folder"])
def test_undo_deletes_nothing_when_the_source_is_a_symlink_to_the_sorted_file(
    inbox: Path, tmp_path: Path, move: bool, link: str
) -> None:
    files = write_files(inbox, ["a.png"])
    out = tmp_path / "out"
    res = sort_folder(inbox, fake_predict({"a.png": ("cat", 0.9)}), out, move=move, progress=False)
    sorted_file = out / "cat" / "a.png"
    if link == "file":  # e.g. a tool that leaves a link behind for each file it moves
        (inbox / "a.png").unlink(missing_ok=True)
        (inbox / "a.png").symlink_to(sorted_file)
    else:  # the inbox itself replaced by a link to the class folder
        shutil.rmtree(inbox)
        inbox.symlink_to(out / "cat", target_is_directory=True)
    assert (inbox / "a.png").read_bytes() == files["a.png"]
    undo = undo_sort(res.manifest, progress=False)
    assert undo.restored == undo.removed_copies == 0
    assert [(p.name, "symlink" in why) for p, why in undo.problems] == [("a.png", True)]
    assert sorted_file.read_bytes() == files["a.png"] and not sorted_file.is_symlink()
    assert res.manifest.exists()


def test_undo_of_a_copy_whose_original_is_gone_keeps_the_copy(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    out = tmp_path / "out"
    res = sort_folder(inbox, fake_predict(dict.fromkeys(files, ("cat", 0.9))), out, progress=False)
    (inbox / "a.png").unlink()  # the user tidies the inbox after copying
    undo = undo_sort(res.manifest, progress=False)
    assert undo.removed_copies == 1
    assert undo.problems == [
        (
            out / "cat" / "a.png",
            f"original {inbox / 'a.png'} is gone, so this copy is now the only one; copy kept",
        )
    ]
    assert snapshot(out) == {"cat/a.png": files["a.png"]}
    assert res.manifest.exists()  # not marked undone: the user should see this


# --------------------------------------------------------------------------- sorting again


def test_sorting_twice_in_copy_mode_makes_no_identical_copies(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    out = tmp_path / "out"
    predict = fake_predict({"a.png": ("cat", 0.9), "b.png": ("dog", 0.2)})
    first = sort_folder(inbox, predict, out, progress=False)
    after_first = snapshot(out)
    assert after_first == {"cat/a.png": files["a.png"], "others/b.png": files["b.png"]}

    again = sort_folder(inbox, predict, out, progress=False)
    assert snapshot(out) == after_first  # no a_1.png, b_1.png
    assert again.counts == {"cat": 1, "others": 1}
    assert [(p.destination, p.already_sorted) for p in again.placements] == [
        (out / "cat" / "a.png", True),
        (out / "others" / "b.png", True),
    ]
    entries = read_manifest(again.manifest)[1:]
    assert [(e["action"], e["status"], e["sha256"]) for e in entries] == [
        ("already-sorted", "done", sha(files["a.png"])),
        ("already-sorted", "done", sha(files["b.png"])),
    ]
    assert_manifest_matches_disk(again.manifest)

    undo = undo_sort(again.manifest, progress=False)  # must not take the first sort's files
    assert (undo.already_sorted, undo.removed_copies, undo.problems) == (2, 0, [])
    assert snapshot(out) == after_first and snapshot(inbox) == files
    undo = undo_sort(first.manifest, progress=False)
    assert (undo.removed_copies, undo.problems) == (2, [])
    assert snapshot(out) == {} and snapshot(inbox) == files


def test_already_sorted_under_a_suffixed_name(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = write_files(out / "cat", ["a.png"], seed=1)  # a different photo with the same name
    files = write_files(inbox, ["a.png"], seed=2)
    predict = fake_predict({"a.png": ("cat", 0.9)})
    sort_folder(inbox, predict, out, progress=False)
    assert snapshot(out) == {"cat/a.png": old["a.png"], "cat/a_1.png": files["a.png"]}
    plan = sort_folder(inbox, predict, out, dry_run=True, progress=False)
    assert [(p.destination.name, p.already_sorted) for p in plan.placements] == [("a_1.png", True)]
    again = sort_folder(inbox, predict, out, progress=False)
    assert [(p.destination.name, p.already_sorted) for p in again.placements] == [("a_1.png", True)]
    assert len(snapshot(out)) == 2


def test_identical_files_in_one_sort_are_copied_once(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png"])
    (inbox / "sub").mkdir()
    (inbox / "sub" / "a.png").write_bytes(files["a.png"])
    out = tmp_path / "out"
    predict = fake_predict({"a.png": ("cat", 0.9)})
    plan = sort_folder(inbox, predict, out, recursive=True, dry_run=True, progress=False)
    res = sort_folder(inbox, predict, out, recursive=True, progress=False)
    for r in (plan, res):
        assert [(p.destination.name, p.already_sorted) for p in r.placements] == [
            ("a.png", False),
            ("a.png", True),
        ]
    assert snapshot(out) == {"cat/a.png": files["a.png"]}
    undo = undo_sort(res.manifest, progress=False)
    assert (undo.removed_copies, undo.already_sorted, undo.problems) == (1, 1, [])
    assert snapshot(out) == {}


def test_a_symlink_at_the_destination_is_not_already_sorted(inbox: Path, tmp_path: Path) -> None:
    files = write_files(inbox, ["a.png"])
    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "a.png").symlink_to(inbox / "a.png")
    res = sort_folder(inbox, fake_predict({"a.png": ("cat", 0.9)}), out, progress=False)
    assert [(p.destination.name, p.already_sorted) for p in res.placements] == [("a_1.png", False)]
    assert (out / "cat" / "a_1.png").read_bytes() == files["a.png"]


def test_version_1_manifests_can_still_be_undone(inbox: Path, tmp_path: Path) -> None:
    data = b"photo bytes"
    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "a.png").write_bytes(data)
    inbox.mkdir()
    header = {"type": "header", "version": 1, "inbox": str(inbox), "out": str(out)}
    header |= {"threshold": 0.6, "others": "others", "move": True, "created": "2024-01-01"}
    entry = {"type": "entry", "source": str(inbox / "a.png"), "destination": str(out / "cat/a.png")}
    entry |= {"class": "cat", "probability": 0.9, "sha256": sha(data), "action": "move"}
    entry |= {"status": "done", "reason": None}
    manifest = out / "sort-manifest.jsonl"
    manifest.write_text(json.dumps(header) + "\n" + json.dumps(entry) + "\n")
    undo = undo_sort(manifest, progress=False)
    assert undo.restored == 1 and not undo.problems
    assert (inbox / "a.png").read_bytes() == data and not (out / "cat").exists()
    header["version"] = 99
    (out / "future.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(ValueError, match="unsupported version 99"):
        undo_sort(out / "future.jsonl", progress=False)


# --------------------------------------------------------------------------- interruption


def assert_manifest_matches_disk(manifest: Path) -> None:
    for entry in read_manifest(manifest)[1:]:
        if entry["status"] == "done":
            assert (
                hashlib.sha256(Path(entry["destination"]).read_bytes()).hexdigest()
                == entry["sha256"]
            )
            assert Path(entry["source"]).exists() == (entry["action"] != "move")


@pytest.mark.parametrize("move", [True, False])
def test_interrupted_sort_leaves_a_consistent_manifest(
    inbox: Path, tmp_path: Path, move: bool
) -> None:
    files = write_files(inbox, [f"{i}.png" for i in range(6)])
    calls = []

    def predict(paths: list[Path]) -> list[Prediction | Exception]:
        calls.append(paths)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [("cat", 0.9)] * len(paths)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as info:
        sort_folder(inbox, predict, out, move=move, batch_size=2, progress=False)
    assert isinstance(info.value, SortInterrupted)
    partial = info.value.result
    assert [p.source.name for p in partial.placements] == ["0.png", "1.png"]
    assert partial.counts == {"cat": 2} and partial.verb == ("moved" if move else "copied")
    manifest = out / "sort-manifest.jsonl"
    assert partial.manifest == manifest
    assert len(read_manifest(manifest)) == 1 + 2
    assert_manifest_matches_disk(manifest)
    undo_sort(manifest, progress=False)
    assert snapshot(inbox) == files and snapshot(out) == {}


def test_interrupted_dry_run_reports_its_plan_so_far(inbox: Path, tmp_path: Path) -> None:
    write_files(inbox, ["a.png", "b.png", "c.png"])

    def predict(paths: list[Path]) -> list[Prediction | Exception]:
        if paths[0].name == "b.png":
            raise KeyboardInterrupt
        return [("cat", 0.9)] * len(paths)

    with pytest.raises(KeyboardInterrupt) as info:
        sort_folder(inbox, predict, tmp_path / "out", dry_run=True, batch_size=1, progress=False)
    assert isinstance(info.value, SortInterrupted)
    assert info.value.result.verb == "would sort"
    assert [p.source.name for p in info.value.result.placements] == ["a.png"]
    assert not (tmp_path / "out").exists()


def test_interrupt_between_link_and_unlink_loses_nothing(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_files(inbox, ["a.png", "b.png", "c.png"])
    real = sort_mod._unlink_source
    calls = []

    def flaky_unlink(src: Path, dest: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dest)

    monkeypatch.setattr(sort_mod, "_unlink_source", flaky_unlink)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        sort_folder(
            inbox, fake_predict(dict.fromkeys(files, ("cat", 0.9))), out, move=True, progress=False
        )
    manifest = out / "sort-manifest.jsonl"
    assert_manifest_matches_disk(manifest)
    everything = Counter(snapshot(inbox).values()) + Counter(snapshot(out).values())
    assert set(everything) == set(files.values())  # at worst a duplicate, never a loss
    monkeypatch.undo()
    undo_sort(manifest, progress=False)
    assert snapshot(inbox) == files


def test_ctrl_c_during_a_file_operation_waits_for_its_manifest_line(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_files(inbox, ["a.png", "b.png"])
    real = sort_mod._transfer

    def transfer_then_ctrl_c(*args: object, **kwargs: object) -> tuple[Path, str]:
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-operation
        return real(*args, **kwargs)

    monkeypatch.setattr(sort_mod, "_transfer", transfer_then_ctrl_c)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as info:
        sort_folder(
            inbox, fake_predict(dict.fromkeys(files, ("cat", 0.9))), out, move=True, progress=False
        )
    assert isinstance(info.value, SortInterrupted)
    manifest = out / "sort-manifest.jsonl"
    assert [e["source"][-5:] for e in read_manifest(manifest)[1:]] == ["a.png"]
    assert [p.source.name for p in info.value.result.placements] == ["a.png"]
    assert (out / "cat" / "a.png").exists() and (inbox / "b.png").exists()
    assert_manifest_matches_disk(manifest)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- property


NAMES = st.tuples(
    st.sampled_from(["a", "b", "a_1", "b_2"]), st.sampled_from([".png", ".jpg", ".PNG"])
).map("".join)
CLASSES = ["cat", "dog"]


@st.composite
def sort_cases(draw: st.DrawFn) -> dict:
    names = draw(st.lists(NAMES, max_size=8, unique=True))
    inbox = {n: draw(st.binary(max_size=6)) for n in names}
    preds = {
        n: draw(
            st.one_of(
                st.tuples(st.sampled_from(CLASSES), st.floats(0, 1)),
                st.just(ValueError("unreadable")),
            )
        )
        for n in names
    }
    folders = st.sampled_from([*CLASSES, "others"])
    pre = draw(
        st.dictionaries(st.tuples(folders, NAMES).map("/".join), st.binary(max_size=6), max_size=6)
    )
    return {"inbox": inbox, "preds": preds, "pre": pre, "move": draw(st.booleans())}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sort_cases())
def test_property_nothing_lost_or_overwritten_and_undo_restores(case: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox, out = Path(tmp) / "inbox", Path(tmp) / "out"
        inbox.mkdir()
        for name, data in case["inbox"].items():
            (inbox / name).write_bytes(data)
        for rel, data in case["pre"].items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        start = snapshot(inbox)

        res = sort_folder(
            inbox, fake_predict(case["preds"]), out, move=case["move"], batch_size=3, progress=False
        )

        placed = [inbox / n for n, p in case["preds"].items() if not isinstance(p, Exception)]
        made = [p for p in res.placements if not p.already_sorted]
        copied = Counter() if case["move"] else Counter(p.source.read_bytes() for p in made)
        after = Counter(snapshot(inbox).values()) + Counter(snapshot(out).values())
        assert after == Counter(start.values()) + Counter(case["pre"].values()) + copied
        assert all((out / rel).read_bytes() == data for rel, data in case["pre"].items())
        for p in res.placements:
            cls, prob = case["preds"][p.source.name]
            assert (p.label, p.probability) == (cls, prob)
            assert p.destination.parent.name == (cls if prob >= 0.6 else "others")
            assert p.destination.read_bytes() == (case["inbox"][p.source.name])
            if case["move"]:
                assert not p.already_sorted
            elif not p.already_sorted:  # copied: no earlier name of its chain held the bytes
                stem, ext = p.source.stem, p.source.suffix
                names = [f"{stem}{ext}"] + [f"{stem}_{i}{ext}" for i in range(1, 20)]
                earlier = names[: names.index(p.destination.name)]
                content = case["inbox"][p.source.name]
                assert all((p.destination.parent / n).read_bytes() != content for n in earlier)
        assert len(res.skipped) == len(case["inbox"]) - len(placed)
        assert_manifest_matches_disk(res.manifest)

        undo = undo_sort(res.manifest, progress=False)
        assert not undo.problems
        assert snapshot(inbox) == start
        assert snapshot(out) == case["pre"]
