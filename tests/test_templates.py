"""The prompt templates come from open_clip and hash as they always have, so no store is invalidated."""

from freecp.templates import IMAGENET_TEMPLATES, TEMPLATE_SET_HASH

# The hash every existing embedding store was written with (freecp 0.1.0, hand-written list).
STORED_TEMPLATE_SET_HASH = "4f976686fb651bb5"


def test_template_hash_is_unchanged():
    assert TEMPLATE_SET_HASH == STORED_TEMPLATE_SET_HASH


def test_eighty_format_templates_each_taking_the_class_name_once():
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert IMAGENET_TEMPLATES[0].format("cat") == "a bad photo of a cat."
