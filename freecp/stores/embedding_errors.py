"""The embedding store's errors, and the check every reader makes before it trusts a file: were
these vectors written by the model that asks?"""

from __future__ import annotations

from freecp.stores.fs import StoreError


class EmbeddingStoreError(StoreError):
    """The store cannot serve the request; the message says what to do."""


class MissingEmbeddingsError(EmbeddingStoreError):
    """Texts a vocabulary needs are not in the store yet (run ``freecp encode``)."""


class ModelMismatchError(EmbeddingStoreError):
    """The stored vectors were written by another CLIP model than the one asking."""


def check_model(origin: str, found_key: str, found_dim: int, key: str, dim: int | None) -> None:
    """Refuse ``origin`` unless it was written for model ``key`` (and dimension ``dim``, if given)."""
    if found_key != key or (dim is not None and found_dim != dim):
        raise ModelMismatchError(
            f"{origin} holds vectors of {found_key} (dim {found_dim}), but the running model is {key}"
            f"{f' (dim {dim})' if dim is not None else ''}: vectors of different models cannot be mixed")
