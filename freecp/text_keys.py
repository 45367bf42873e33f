"""Which text-tower path wrote a store's vectors, named in the key the store files them under.

The two float orders (``freecp.settings.FloatOrder``) give text vectors equal to float32
rounding, not bit for bit, so the embedding store keeps them apart: a backbone's *text key* is
its model key plus its float order. Stores written before float orders existed filed vectors
under the bare model key; those came from a tower nobody recorded (the reference path at the
time, the truncated one before it), so ``float_order_of`` says None for them and no reader
takes them for either order. Standard library only: the stores use it without the CLIP layer.
"""

from __future__ import annotations

MARK = "|text-"


def text_key(model_key: str, float_order: str) -> str:
    """The key a backbone's text vectors are stored under, e.g. ``ViT-B-16/openai|text-fast``."""
    return f"{model_key}{MARK}{float_order}"


def float_order_of(key: str) -> str | None:
    """The float order a stored key names, or None for a key written before they were recorded."""
    base, mark, order = key.rpartition(MARK)
    return order if mark and base else None


def model_key_of(key: str) -> str:
    """The model key a stored key belongs to (the key itself for an unrecorded one)."""
    return key.rpartition(MARK)[0] if float_order_of(key) else key
