"""GEM's self-self attention and its wiring into the backbone: properties that hold for any weights."""

from __future__ import annotations

import pytest
import torch

from freecp.clip import ClipBackbone
from freecp.clip.model import GEM_ITERATIONS, _interpolated_positions, self_self_attention

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _qkv_and_tokens(seed: int = 0, batch: int = 2, heads: int = 4, tokens: int = 10, dim: int = 8):
    draw = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=draw) for _ in range(3))
    return q, k, v, torch.randn(batch, tokens, heads * dim, generator=draw)


def _backbone(tiny_backbone: ClipBackbone, variant: str, protocol: str = "freecp") -> ClipBackbone:
    return ClipBackbone(tiny_backbone.model, tiny_backbone.tokenizer, "freecp-tiny", "k",
                        variant=variant, protocol=protocol)


def test_self_self_attention_ignores_the_length_of_query_and_key_vectors():
    q, k, v, tokens = _qkv_and_tokens()
    lengths = torch.rand(2, 4, 10, 1, generator=torch.Generator().manual_seed(1)) * 5 + 0.1
    plain = self_self_attention(q, k, v, tokens, GEM_ITERATIONS)
    assert torch.allclose(self_self_attention(q * lengths, k / lengths, v, tokens, GEM_ITERATIONS), plain, atol=1e-5)
    assert not torch.allclose(self_self_attention(q, k, v * lengths, tokens, GEM_ITERATIONS), plain, atol=1e-3)


def test_self_self_attention_follows_the_order_of_the_tokens():
    q, k, v, tokens = _qkv_and_tokens(seed=2)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    shuffled = self_self_attention(q[:, :, order], k[:, :, order], v[:, :, order], tokens[:, order], GEM_ITERATIONS)
    assert torch.allclose(shuffled, self_self_attention(q, k, v, tokens, GEM_ITERATIONS)[:, :, order], atol=1e-5)


def test_self_self_attention_mixes_values_so_equal_values_come_back_unchanged():
    q, k, _, tokens = _qkv_and_tokens(seed=4)
    v = torch.randn(2, 4, 1, 8).expand(2, 4, 10, 8)
    assert torch.allclose(self_self_attention(q, k, v, tokens, GEM_ITERATIONS), v, atol=1e-5)


def test_a_sharper_temperature_keeps_tokens_closer_to_their_own_cluster():
    # The inverse temperature grows with the input's token norm: a longer input, a sharper softmax,
    # so every output token moves towards its own value.
    q, k, v, tokens = _qkv_and_tokens(seed=5)
    soft = self_self_attention(q, k, v, tokens, GEM_ITERATIONS)
    sharp = self_self_attention(q, k, v, tokens * 50, GEM_ITERATIONS)
    assert (sharp - v).norm() < (soft - v).norm()


def _attention_by_torch(backbone: ClipBackbone, windows: torch.Tensor) -> torch.Tensor:
    """Per-head attention of blocks 1..L-1 from torch's own MultiheadAttention: [L-1, B, heads, N, N]."""
    visual = backbone.model.visual
    with torch.inference_mode():
        x = visual.conv1(windows).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        maps = []
        for block in visual.transformer.resblocks[:-1]:
            y = block.ln_1(x)
            maps.append(block.attn(y, y, y, need_weights=True, average_attn_weights=False)[1])
            x = block(x)
    return torch.stack(maps)


def test_gem_refines_with_head_zero_under_the_freecp_protocol_and_all_heads_otherwise(tiny_backbone):
    windows = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))  # the native grid
    per_head = _attention_by_torch(tiny_backbone, windows)[..., 1:, 1:]
    freecp = _backbone(tiny_backbone, "gem", "freecp").dense_forward(windows).attention
    original = _backbone(tiny_backbone, "gem", "original").dense_forward(windows).attention
    assert torch.allclose(freecp, per_head[:, :, 0].mean(dim=0), atol=1e-5)
    assert torch.allclose(original, per_head.mean(dim=2).mean(dim=0), atol=1e-5)
    assert torch.allclose(_backbone(tiny_backbone, "sclip").dense_forward(windows).attention, original, atol=1e-5)
    assert not torch.allclose(freecp, original, atol=1e-3)


def test_antialiased_positions_suppress_what_the_smaller_grid_cannot_hold():
    checkerboard = ((torch.arange(14)[:, None] + torch.arange(14)) % 2 * 2 - 1.0).reshape(-1, 1).repeat(1, 3)
    positions = torch.cat([torch.full((1, 3), 7.0), checkerboard])
    plain = _interpolated_positions(positions, 7, 7)
    smooth = _interpolated_positions(positions, 7, 7, antialias=True)
    assert smooth.shape == plain.shape == (1 + 49, 3)
    assert torch.equal(smooth[0], positions[0])
    assert smooth[1:].abs().max() * 10 < plain[1:].abs().max()


def test_only_gem_uses_antialiased_positions(tiny_backbone):
    positions = tiny_backbone.model.visual.positional_embedding
    smooth = _interpolated_positions(positions, 7, 9, antialias=True)
    assert torch.equal(_backbone(tiny_backbone, "gem")._positional_embedding(7, 9), smooth)
    assert torch.equal(_backbone(tiny_backbone, "sclip")._positional_embedding(7, 9),
                       _interpolated_positions(positions, 7, 9))
    assert not torch.allclose(smooth, _interpolated_positions(positions, 7, 9), atol=1e-4)
