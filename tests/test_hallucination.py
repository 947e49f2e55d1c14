"""Class mentions in captions (whole words, plurals, multi-word names, synonyms) and CHAIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixtell.metrics.hallucination import (
    chair,
    find_mentions,
    load_synonyms,
    mention_rate,
    mentions,
    plural_forms,
    truth_from_boxes,
)

COCO_LIKE = ["dog", "ant", "bus", "box", "knife", "person", "traffic light", "light", "hot dog"]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("two dogs on a lawn", {"dog"}),
        ("buses parked in a row", {"bus"}),
        ("a pile of boxes", {"box"}),
        ("knives on a table", {"knife"}),
        ("people crossing the road", {"person"}),
        ("a person and an ant", {"person", "ant"}),
        ("a single dog", {"dog"}),
    ],
)
def test_plurals_and_irregulars(caption: str, expected: set[str]) -> None:
    assert mentions(caption, COCO_LIKE) == expected


@pytest.mark.parametrize(
    "caption",
    [
        "a substantial meal",  # "ant" inside a word
        "dogma of the church",  # "dog" at a word start
        "a boxer in the ring",
        "the busy street",
        "an antelope",
        "a delightful day",  # "light" inside a word
        "penknife",
    ],
)
def test_substrings_never_match(caption: str) -> None:
    assert mentions(caption, COCO_LIKE) == set()


def test_case_and_punctuation() -> None:
    assert mentions("A DOG! Next to a Bus, near the ANT.", COCO_LIKE) == {"dog", "bus", "ant"}
    assert mentions("the dog's bowl", COCO_LIKE) == {"dog"}
    assert mentions('"Dogs?" (yes: dogs)', COCO_LIKE) == {"dog"}


def test_multi_word_names_take_the_longest_match_once() -> None:
    found = find_mentions("a traffic light and two lights", COCO_LIKE)
    assert [(m.cls, m.text) for m in found] == [
        ("traffic light", "traffic light"),
        ("light", "lights"),
    ]
    assert mentions("red traffic lights", COCO_LIKE) == {"traffic light"}
    assert mentions("a hot dog stand", COCO_LIKE) == {"hot dog"}  # not also "dog"
    assert mentions("a hot-dog", COCO_LIKE) == {"hot dog"}
    assert mentions("a hot day with a dog", COCO_LIKE) == {"dog"}


def test_class_names_with_underscores_and_plural_folder_names() -> None:
    assert mentions("a traffic light", ["traffic_light"]) == {"traffic_light"}
    assert mentions("a cat and a dog", ["cats", "dogs"]) == {"cats", "dogs"}


def test_synonyms_map_phrases_to_their_class() -> None:
    syn = {"person": ["man", "woman", "young boy"], "dog": ["puppy"], "unknown": ["x"]}
    assert mentions("a man with two puppies", COCO_LIKE, syn) == {"person", "dog"}
    assert mentions("women and a young boy", COCO_LIKE, syn) == {"person"}
    assert mentions("a boy", COCO_LIKE, syn) == set()  # only the whole phrase counts
    assert mentions("a manager", COCO_LIKE, syn) == set()
    with pytest.raises(ValueError, match="names both"):
        mentions("a dog", ["dog", "cat"], {"cat": ["dog"]})


def test_plural_forms_rules() -> None:
    assert {"bus", "buses"} <= plural_forms("bus")
    assert {"leaf", "leaves"} <= plural_forms("leaf")
    assert {"berry", "berries"} <= plural_forms("berry")
    assert {"tomato", "tomatoes"} <= plural_forms("tomato")
    assert {"child", "children"} <= plural_forms("child")
    assert "dog" in plural_forms("dogs")
    assert "bu" not in plural_forms("bus")


def test_chair_on_a_hand_computed_example() -> None:
    vocab = ["dog", "cat", "sofa", "person"]
    captions = {
        "a": "a dog and a cat on a sofa",  # 3 mentions, cat hallucinated
        "b": "two people with a dog and another dog",  # 3 mentions, both dogs hallucinated
        "c": "a sofa",  # 1 mention, fine
        "d": "an empty room",  # nothing mentioned
    }
    truth = {"a": {"dog", "sofa"}, "b": {"person"}, "c": {"sofa"}, "d": set()}
    res = chair(captions, truth, vocab)
    assert res.mentions == 7 and res.hallucinated_mentions == 3
    assert res.chair_i == pytest.approx(3 / 7)
    assert res.chair_s == pytest.approx(2 / 4)
    assert res.hallucinated == {"a": ["cat"], "b": ["dog", "dog"], "c": [], "d": []}
    assert res.as_dict()["CHAIR_s"] == pytest.approx(0.5)


def test_chair_edge_cases() -> None:
    assert chair({1: "nothing here"}, {1: set()}, ["dog"]).chair_i == 0.0
    with pytest.raises(ValueError, match="ground-truth"):
        chair({1: "a dog"}, {}, ["dog"])
    with pytest.raises(ValueError, match="at least one"):
        chair({}, {}, ["dog"])


def test_mention_rate_and_truth_from_boxes() -> None:
    caps = {1: "a dog", 2: "a cat", 3: "two dogs", 4: "a dogma"}
    labels = {1: "dog", 2: "dog", 3: "dog", 4: "dog"}
    assert mention_rate(caps, labels, ["dog", "cat"]) == pytest.approx(2 / 4)
    truth = truth_from_boxes({"x": [0, 0, 2], "y": ["cat"], "z": []}, ["dog", "cat", "bus"])
    assert truth == {"x": {"dog", "bus"}, "y": {"cat"}, "z": set()}
    with pytest.raises(ValueError, match="class_names"):
        truth_from_boxes({"x": [1]})


def test_load_synonyms(tmp_path: Path) -> None:
    good = tmp_path / "syn.yaml"
    good.write_text("person: [man, woman]\ndog: puppy\ncat:\n", encoding="utf-8")
    assert load_synonyms(good) == {"person": ["man", "woman"], "dog": ["puppy"], "cat": []}
    bad = tmp_path / "bad.yaml"
    for text, pattern in [
        ("person: [man\n", "not valid YAML at line"),
        ("- man\n- woman\n", "must map each class"),
        ("person: [1, '']\n", "non-empty phrases"),
    ]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=pattern) as info:
            load_synonyms(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_synonyms(tmp_path / "missing.yaml")
