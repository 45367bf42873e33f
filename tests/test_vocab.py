"""Vocabulary files: the shipped benchmarks, the format's rules, and the content hash."""

import pytest

from freecp.settings import SegmentSettings, settings_for
from freecp.vocab import VocabularyError, load_vocabulary, parse_vocabulary, shipped_vocabularies


def test_all_eight_benchmarks_and_the_sample_vocabulary_ship_with_their_sizes_and_background():
    expected = {"samples": (8, True), "voc21": (21, True), "voc20": (20, False), "context60": (60, True), "context59": (59, False),
                "coco_object": (81, True), "coco_stuff": (171, False), "ade150": (150, False),
                "cityscapes": (19, False)}
    assert set(shipped_vocabularies()) == set(expected)
    for name, (size, background) in expected.items():
        vocab = load_vocabulary(name)
        assert (len(vocab), vocab.has_background) == (size, background), name


def test_background_and_synonyms_are_parsed():
    vocab = load_vocabulary("voc21")
    assert len(vocab.classes[0].names) == 26 and vocab.class_names[0] == "background"
    assert vocab.foreground_indices[0] == 1
    coco = load_vocabulary("coco_object")
    person = coco.class_names.index("person")
    assert len(coco.classes[person].names) == 8
    assert [coco.query_class[i] for i, q in enumerate(coco.queries) if q == "body"] == [person]


def test_a_file_path_and_an_inline_list_load(tmp_path):
    path = tmp_path / "warehouse.txt"
    path.write_text("forklift\npallet, skid\nsafety vest\n\n")
    vocab = load_vocabulary(str(path))
    assert vocab.name == "warehouse" and vocab.class_names == ["forklift", "pallet", "safety vest"]
    assert load_vocabulary(["forklift", "pallet, skid", "safety vest"]).content_hash == vocab.content_hash


def test_content_hash_depends_on_names_only():
    a = parse_vocabulary("cat\ndog\n", name="a")
    b = parse_vocabulary("  cat \r\ndog", name="b")
    c = parse_vocabulary("dog\ncat\n", name="a")
    assert a.content_hash == b.content_hash != c.content_hash
    assert parse_vocabulary(a.to_text(), name="x") == parse_vocabulary(a.to_text(), name="x")
    assert parse_vocabulary(load_vocabulary("voc21").to_text(), "voc21") == load_vocabulary("voc21")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("\n\n", "empty"),
    ("cat\n\ndog\n", "line 2: blank line"),
    ("cat\ndog\nCat\n", "line 3: 'Cat' already appears on line 1"),
    ("cat\nbackground: sky\n", "line 2: only the first line"),
    ("cat, , dog\n", "line 1: empty name"),
    ("background: sky, wall\n", "no class besides the background"),
])
def test_malformed_vocabularies_name_the_line(text, message):
    with pytest.raises(VocabularyError, match=message):
        parse_vocabulary(text, name="bad", origin="bad.txt")


def test_non_utf8_and_missing_files_are_clear(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(VocabularyError, match="line 2: not valid UTF-8"):
        load_vocabulary(str(path))
    with pytest.raises(VocabularyError, match="neither a shipped name"):
        load_vocabulary("no-such-vocabulary")


def test_presets_carry_the_reference_thresholds_and_overrides_win():
    assert settings_for("voc21").rp_threshold == 0.15 and settings_for("voc21").ap_threshold == 0.8
    assert settings_for("ade150").rp_threshold == 0.05
    city = settings_for("cityscapes")
    assert (city.short_side, city.window, city.stride) == (560, 224, 112)
    assert settings_for("my-own").rp_threshold == SegmentSettings().rp_threshold
    assert settings_for("voc21", rp_threshold=0.3, ap_threshold=None).rp_threshold == 0.3
    assert settings_for("voc21").content_hash != settings_for("voc21", scope="image").content_hash
    assert settings_for("voc21").content_hash == settings_for("voc21", window_batch=4).content_hash
    with pytest.raises(ValueError, match="unknown variant"):
        SegmentSettings(variant="dino")
