"""An open_clip ViT turned into a dense segmenter backbone (ALGORITHM.md section 2).

``load_backbone`` is the one entry point: a model name plus a pretrained tag, a local checkpoint
file, or explicitly requested random weights. The returned ``ClipBackbone`` runs

* ``dense_forward``: all windows of an image in one batch; blocks 1..L-1 run as usual while their
  head-averaged attention is recorded, then the last block runs its modified path (a
  training-free variant's attention, residual and FFN per protocol) to give patch features;
* ``encode_crops``: the plain network on small crops, returning CLS embeddings (for AP);
* ``encode_texts``: the text tower, batched.
"""

from __future__ import annotations

import logging
import math
import socket
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F

from freecp.clip.errors import WeightsUnavailableError
from freecp.clip.keys import is_random, model_key
from freecp.resources import MODEL_CONFIGS, shipped

open_clip.add_model_config(shipped(MODEL_CONFIGS))

NACLIP_GAUSSIAN_STD = 5.0  # patches

# (residual, ffn) of the last block's modified path, per protocol and variant (ALGORITHM.md s.2).
LAST_BLOCK_PATHS: dict[str, dict[str, tuple[bool, bool]]] = {
    "freecp": {
        "maskclip": (False, True),
        "sclip": (False, True),
        "clearclip": (False, False),
        "naclip": (False, True),
        "vanilla": (False, True),
    },
    "original": {
        "maskclip": (True, False),
        "sclip": (True, False),
        "clearclip": (False, False),
        "naclip": (False, False),
        "vanilla": (True, True),
    },
}


@dataclass
class DenseOutput:
    """Patch features of each window and the affinity evidence from the attention maps."""

    features: torch.Tensor   # [B, h, w, D], L2-normalised
    attention: torch.Tensor  # [B, N, N], head-averaged, mean over blocks 1..L-1, CLS dropped


class ClipBackbone:
    """A CLIP model with the dense and crop forwards FreeCP needs. Build once, call many times."""

    def __init__(self, model: open_clip.CLIP, tokenizer, model_name: str, model_key: str,
                 variant: str = "sclip", protocol: str = "freecp", device: str = "cpu") -> None:
        if protocol not in LAST_BLOCK_PATHS or variant not in LAST_BLOCK_PATHS[protocol]:
            raise ValueError(f"unknown variant/protocol {variant!r}/{protocol!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_key = model_key
        self.variant = variant
        self.protocol = protocol
        self.device = torch.device(device)
        visual = model.visual
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.embed_dim = int(visual.proj.shape[1])
        self.logit_scale = float(model.logit_scale.exp().item())
        self.residual, self.ffn = LAST_BLOCK_PATHS[protocol][variant]

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Raw texts (no template) to L2-normalised embeddings [n, D], float32 on the CPU."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            chunks.append(F.normalize(self._text_forward(tokens).float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    def _text_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower on tokens cut to the batch's longest text instead of the full context.

        Exact for OpenAI-style towers: the causal mask keeps padding after the end token from
        influencing it, and the end token (the largest id) is what gets pooled. Prompts are far
        shorter than the 77-token context, so this is several times faster. Other towers use
        open_clip's own forward.
        """
        model = self.model
        if not (isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax"
                and model.attn_mask is not None):
            return model.encode_text(tokens)
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        pooled = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
        return model.text_projection(pooled) if isinstance(model.text_projection, torch.nn.Linear) \
            else pooled @ model.text_projection

    # ----------------------------------------------------------------- image
    @torch.inference_mode()
    def dense_forward(self, windows: torch.Tensor) -> DenseOutput:
        """Windows [B, 3, H, W] (CLIP-normalised, H and W multiples of the patch size)."""
        grid_h, grid_w = windows.shape[-2] // self.patch_size, windows.shape[-1] // self.patch_size
        x, attention = self._trunk(windows.to(self.device), record_attention=True)
        last = self.model.visual.transformer.resblocks[-1]
        y = last.ln_1(x)
        out = self._variant_attention(last, y, grid_h, grid_w)
        if self.residual:
            out = x + out
        if self.ffn:
            out = out + last.mlp(last.ln_2(out))
        feats = self.model.visual.ln_post(out[:, 1:]) @ self.model.visual.proj
        feats = F.normalize(feats.float(), dim=-1)
        return DenseOutput(
            features=feats.reshape(len(windows), grid_h, grid_w, -1).cpu(),
            attention=attention[:, 1:, 1:].float().cpu(),
        )

    @torch.inference_mode()
    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops [B, 3, S, S] (CLIP-normalised) to L2-normalised CLS embeddings [B, D] (plain path)."""
        x, _ = self._trunk(crops.to(self.device), record_attention=False)
        x = self.model.visual.transformer.resblocks[-1](x)
        cls = self.model.visual.ln_post(x[:, 0])
        # One [1, width] @ proj per crop: a plain matmul over a few rows picks its CPU kernel by the
        # row count, so a crop's embedding would depend on how many crops share the call.
        projected = torch.bmm(cls[:, None], self.model.visual.proj.expand(len(cls), -1, -1))[:, 0]
        return F.normalize(projected.float(), dim=-1).cpu()

    def _trunk(self, images: torch.Tensor, record_attention: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch embedding and blocks 1..L-1; optionally the mean head-averaged attention."""
        visual = self.model.visual
        grid_h, grid_w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(len(x), 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid_h, grid_w).to(x.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        attention_sum = None
        for block in blocks[:-1]:
            x, attn = _block_with_attention(block, x)
            if record_attention:
                attention_sum = attn if attention_sum is None else attention_sum + attn
        mean_attention = attention_sum / (len(blocks) - 1) if attention_sum is not None else None
        return x, mean_attention

    def _positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        return _interpolated_positions(self.model.visual.positional_embedding, grid_h, grid_w)

    def _variant_attention(self, block, y: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """The last block's attention output under the chosen training-free variant."""
        q, k, v = _split_heads(block, y)
        scale = q.shape[-1] ** -0.5
        if self.variant == "maskclip":
            mixed = v
        else:
            if self.variant == "sclip":
                weights = (q @ q.transpose(-1, -2) * scale).softmax(-1) + (k @ k.transpose(-1, -2) * scale).softmax(-1)
            elif self.variant == "clearclip":
                weights = (q @ q.transpose(-1, -2) * scale).softmax(-1)
            elif self.variant == "naclip":
                bias = _neighbourhood_bias(grid_h, grid_w, NACLIP_GAUSSIAN_STD).to(q)
                weights = (k @ k.transpose(-1, -2) * scale + bias).softmax(-1)
            else:  # vanilla
                weights = (q @ k.transpose(-1, -2) * scale).softmax(-1)
            mixed = weights @ v
        merged = mixed.transpose(1, 2).reshape(y.shape)
        return block.ls_1(block.attn.out_proj(merged))


def _split_heads(block, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a MultiheadAttention, each [B, heads, T, head_dim]."""
    attn = block.attn
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    batch, tokens, _ = y.shape
    qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _block_with_attention(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ordinary residual block, computed by hand so its attention map comes for free."""
    q, k, v = _split_heads(block, block.ln_1(x))
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    merged = (weights @ v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(block.attn.out_proj(merged))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights.mean(dim=1)


def _interpolated_positions(positions: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize the square position grid bicubically with scale ((g + 0.1) / g0), as the reference."""
    side = int(math.isqrt(positions.shape[0] - 1))
    if (grid_h, grid_w) == (side, side):
        return positions
    grid = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid.float(), scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
                            mode="bicubic", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1).to(positions.dtype)
    return torch.cat([positions[:1], resized])


@lru_cache(maxsize=16)
def _neighbourhood_bias(grid_h: int, grid_w: int, std: float) -> torch.Tensor:
    """Gaussian of the patch distance added to NACLIP's attention logits; CLS rows get none."""
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    gauss = torch.exp(-torch.cdist(coords, coords).pow(2) / (2 * std**2))
    bias = torch.zeros(grid_h * grid_w + 1, grid_h * grid_w + 1)
    bias[1:, 1:] = gauss
    return bias


def load_backbone(model_name: str = "ViT-B-16", pretrained: str | None = "openai",
                  checkpoint: str | Path | None = None, device: str = "cpu",
                  variant: str = "sclip", protocol: str = "freecp", seed: int = 0) -> ClipBackbone:
    """Build the backbone from a pretrained tag, a local checkpoint file, or random weights.

    Random weights are used only when asked for (``pretrained=None`` or ``"none"``) and give
    meaningless segmentations; they exist for tests and plumbing checks.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model_name!r}; see open_clip.list_models()")
    if checkpoint is not None:
        key = model_key(model_name, checkpoint=checkpoint)  # refuses a missing file
        model = _create(model_name, str(Path(checkpoint).expanduser()))
    elif is_random(pretrained):
        warnings.warn("CLIP weights are RANDOM (--pretrained none): segmentations are meaningless; "
                      "use this only for tests and plumbing checks", stacklevel=2)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = open_clip.create_model(model_name, pretrained=None)
        key = model_key(model_name, pretrained, seed=seed)
    else:
        model = _create(model_name, pretrained)
        key = model_key(model_name, pretrained)
    return ClipBackbone(model, open_clip.get_tokenizer(model_name), model_name, key,
                        variant=variant, protocol=protocol, device=device)


def _create(model_name: str, pretrained: str) -> open_clip.CLIP:
    try:
        with _offline_aware_loading():
            # OpenAI's weights were trained with QuickGELU; the reference builds them that way too.
            return open_clip.create_model(model_name, pretrained=pretrained,
                                          force_quick_gelu=pretrained == "openai")
    except Exception as err:  # open_clip wraps download and file errors in RuntimeError or raises OSError
        raise WeightsUnavailableError(
            f"could not load CLIP weights {model_name}/{pretrained} "
            f"({textwrap.shorten(str(err), 160, placeholder=' ...')}).",
            f"Offline? Download the checkpoint on a machine with internet (for example "
            f"open_clip.create_model('{model_name}', pretrained='{pretrained}') fills the Hugging Face cache, "
            f"or fetch the .bin/.pt file) and pass it with {{checkpoint}}; "
            f"or use {{random}} for random weights (tests only).",
        ) from None


@contextmanager
def _offline_aware_loading() -> Iterator[None]:
    """Load quietly, and from the local cache only when the hub's host does not even resolve.

    Without this, a machine with no network retries the download for about a minute and prints
    a page of warnings before our one message. ``HF_HUB_OFFLINE`` is read by huggingface_hub at
    import time, so the switch is made on its constants module, for this call only.
    """
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    try:
        socket.getaddrinfo(urlparse(hub.ENDPOINT).hostname, 443)
    except OSError:
        hub.HF_HUB_OFFLINE = True
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        hub.HF_HUB_OFFLINE = previous
