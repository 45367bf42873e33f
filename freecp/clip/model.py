"""An open_clip ViT turned into a dense segmenter backbone (ALGORITHM.md section 2).

``freecp.build.create_backbone`` builds one from a ``ClipModel`` (a model name plus a pretrained
tag, a local checkpoint file, or explicitly requested random weights). A ``ClipBackbone`` runs

* ``dense_forward``: all windows of an image in one batch; blocks 1..L-1 run as usual while their
  attention is recorded (head-averaged; head 0 only for GEM under the freecp protocol), and a
  modified path (a training-free variant's attention, residual and FFN per protocol) beside the
  last block, or beside the last ``GEM_BLOCKS`` blocks for GEM, gives the patch features;
* ``encode_crops``: the plain network on small crops, returning CLS embeddings (for AP);
* ``encode_texts``: the text tower, batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import open_clip
import torch
import torch.nn.functional as F

from freecp.resources import MODEL_CONFIGS, shipped
from freecp.settings import SegmentSettings, check_float_order
from freecp.text_keys import text_key

open_clip.add_model_config(shipped(MODEL_CONFIGS))

NACLIP_GAUSSIAN_STD = 5.0  # patches
GEM_BLOCKS = 6             # GEM's self-self attention path runs beside the last 6 blocks (its depth 7)
GEM_ITERATIONS = 1         # GEM's self-self clustering steps before the final assignment to values

# (residual, ffn) of the last block's modified path, per protocol and variant (ALGORITHM.md s.2).
LAST_BLOCK_PATHS: dict[str, dict[str, tuple[bool, bool]]] = {
    "freecp": {
        "maskclip": (False, True),
        "sclip": (False, True),
        "clearclip": (False, False),
        "naclip": (False, True),
        "vanilla": (False, True),
        "gem": (True, False),
    },
    "original": {
        "maskclip": (True, False),
        "sclip": (True, False),
        "clearclip": (False, False),
        "naclip": (False, False),
        "vanilla": (True, True),
        "gem": (True, False),
    },
}
# Variants whose modified path spans several blocks (GEM); the others modify the last block only.
MODIFIED_BLOCKS: dict[str, int] = {"gem": GEM_BLOCKS}
# Variants that resample positions as their own code does: bicubic with antialiasing to the exact
# grid (GEM, via timm's rule), instead of the reference's scale factor without antialiasing.
ANTIALIASED_POSITIONS = frozenset({"gem"})
# (protocol, variant) whose refinement uses ONE head's attention instead of the head average:
# the reference's GEM refines with head 0 (ALGORITHM.md section 10).
REFINEMENT_HEAD: dict[tuple[str, str], int] = {("freecp", "gem"): 0}


@dataclass
class DenseOutput:
    """Patch features of each window and the affinity evidence from the attention maps."""

    features: torch.Tensor   # [B, h, w, D], L2-normalised
    attention: torch.Tensor  # [B, N, N], head-averaged (or one head), mean over blocks 1..L-1, CLS dropped


class ClipBackbone:
    """A CLIP model with the dense and crop forwards FreeCP needs. Build once, call many times."""

    def __init__(self, model: open_clip.CLIP, tokenizer, model_name: str, model_key: str,
                 variant: str = "sclip", protocol: str = "freecp", device: str = "cpu",
                 architecture: str | None = None, float_order: str = SegmentSettings.float_order) -> None:
        if protocol not in LAST_BLOCK_PATHS or variant not in LAST_BLOCK_PATHS[protocol]:
            raise ValueError(f"unknown variant/protocol {variant!r}/{protocol!r}")
        check_float_order(float_order)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.architecture = architecture or model_name  # the open_clip config built, e.g. ViT-B-16-quickgelu
        self.model_key = model_key
        self.float_order = float_order  # the text tower's path (the image side has one order)
        self.text_key = text_key(model_key, float_order)  # what the embedding store files text vectors under
        self.variant = variant
        self.protocol = protocol
        self.device = torch.device(device)
        visual = model.visual
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.embed_dim = int(visual.proj.shape[1])
        self.logit_scale = float(model.logit_scale.exp().item())
        self.residual, self.ffn = LAST_BLOCK_PATHS[protocol][variant]
        self.modified_blocks = MODIFIED_BLOCKS.get(variant, 1)
        self.refinement_head = REFINEMENT_HEAD.get((protocol, variant))

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
        """The text tower in the backbone's float order (``freecp.settings.FloatOrder``).

        For OpenAI-style towers, ``reference`` runs it as the reference does, so its float32
        embeddings come out bit for bit: the full 77-token context, sequence-first, each block's
        attention through ``F.multi_head_attention_forward`` (not the fused kernel a batch-first
        ``nn.MultiheadAttention`` takes at inference). ``fast`` cuts the tokens to the batch's
        longest text and runs open_clip's blocks (fused attention): the causal mask keeps the
        padding after the end token from reaching it, and the end token (the largest id) is what
        gets pooled, so this is the same function, about 2.5x faster, equal to float32 rounding
        (an attention softmax sums in an order its length sets). Other towers use open_clip's forward.
        """
        model = self.model
        if not (isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax"
                and model.attn_mask is not None):
            return model.encode_text(tokens)
        cast = model.transformer.get_cast_dtype()
        length = tokens.shape[1] if self.float_order == "reference" else int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        mask = model.attn_mask[:length, :length].to(cast)
        if self.float_order == "reference":
            x = _reference_text_blocks(model.transformer.resblocks, x, mask)
        else:
            x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        pooled = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
        return model.text_projection(pooled) if isinstance(model.text_projection, torch.nn.Linear) \
            else pooled @ model.text_projection

    # ----------------------------------------------------------------- image
    @torch.inference_mode()
    def dense_forward(self, windows: torch.Tensor) -> DenseOutput:
        """Windows [B, 3, H, W] (CLIP-normalised, H and W multiples of the patch size)."""
        grid_h, grid_w = windows.shape[-2] // self.patch_size, windows.shape[-1] // self.patch_size
        x, attention, path = self._trunk(windows.to(self.device), dense=True)
        last = self.model.visual.transformer.resblocks[-1]
        if path is None:
            path = self._path_start(x)
        y = last.ln_1(x)
        out = path + self._variant_attention(last, y, _split_heads(last, y), grid_h, grid_w)
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
        x, _, _ = self._trunk(crops.to(self.device), dense=False)
        last = self.model.visual.transformer.resblocks[-1]
        x, _ = _block_with_attention(last, x, _split_heads(last, last.ln_1(x)))
        # Every token is projected, as the reference does, and the CLS rows kept: a CPU matmul
        # picks its kernel by the row count, and over all tokens of all crops (dozens of rows
        # per crop) a row's result no longer depends on how many crops share the call.
        tokens = self.model.visual.ln_post(x) @ self.model.visual.proj
        return F.normalize(tokens[:, 0].float(), dim=-1).cpu()

    def _trunk(self, images: torch.Tensor, dense: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Patch embedding and blocks 1..L-1: the last block's input and, with ``dense``, the mean
        refinement attention and the modified path so far (None unless it spans several blocks)."""
        visual = self.model.visual
        grid_h, grid_w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(len(x), 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid_h, grid_w).to(x.dtype)
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        first_modified = len(blocks) - self.modified_blocks
        attention_sum = path = None
        for index, block in enumerate(blocks[:-1]):
            y = block.ln_1(x)
            qkv = _split_heads(block, y)
            if dense and index >= first_modified:
                path = self._path_start(x) if path is None else path
                path = path + self._variant_attention(block, y, qkv, grid_h, grid_w)
            x, attn = _block_with_attention(block, x, qkv)
            if dense:
                attn = attn.mean(dim=1) if self.refinement_head is None else attn[:, self.refinement_head]
                attention_sum = attn if attention_sum is None else attention_sum + attn
        mean_attention = attention_sum / (len(blocks) - 1) if attention_sum is not None else None
        return x, mean_attention, path

    def _path_start(self, x: torch.Tensor) -> torch.Tensor:
        """What the modified path adds its attention outputs to: the residual, or nothing."""
        return x if self.residual else torch.zeros_like(x)

    def _positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        return _interpolated_positions(self.model.visual.positional_embedding, grid_h, grid_w,
                                       antialias=self.variant in ANTIALIASED_POSITIONS)

    def _variant_attention(self, block, y: torch.Tensor, qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                           grid_h: int, grid_w: int) -> torch.Tensor:
        """A block's attention output under the chosen training-free variant; ``qkv`` from ``y``."""
        q, k, v = qkv
        scale = q.shape[-1] ** -0.5
        if self.variant == "maskclip":
            mixed = v
        elif self.variant == "gem":
            mixed = self_self_attention(q, k, v, y, GEM_ITERATIONS)
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


def self_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens: torch.Tensor,
                        iterations: int) -> torch.Tensor:
    """GEM's self-self attention [B, heads, T, head_dim]: the mean over q, k and v of clustering
    each with itself, then assigning values.

    Each projection is L2-normalised and attends to itself ``iterations`` times (a soft k-means
    step), then normalised once more to weigh the values. The inverse temperature adapts to the
    input: the mean token norm of ``tokens`` (the block's normalised input) over sqrt(head_dim).
    """
    inverse_temperature = tokens.norm(dim=-1).mean(dim=-1)[:, None, None, None] * q.shape[-1] ** -0.5
    assigned = []
    for projection in (v, k, q):  # the reference's order: float sums depend on it
        z = projection
        for _ in range(iterations):
            z = F.normalize(z, dim=-1)
            z = (z @ z.transpose(-1, -2) * inverse_temperature).softmax(-1) @ z
        z = F.normalize(z, dim=-1)
        assigned.append((z @ z.transpose(-1, -2) * inverse_temperature).softmax(-1) @ v)
    return (assigned[0] + assigned[1] + assigned[2]) / 3


def _split_heads(block, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a MultiheadAttention, each [B, heads, T, head_dim]."""
    attn = block.attn
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    batch, tokens, _ = y.shape
    qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _block_with_attention(block, x: torch.Tensor, qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One ordinary residual block on ``qkv`` of ``ln_1(x)``, computed by hand so its attention
    maps [B, heads, T, T] come for free."""
    q, k, v = qkv
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    merged = (weights @ v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(block.attn.out_proj(merged))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def _reference_text_blocks(blocks, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The text blocks on x [B, T, width] as the reference runs them (``ClipBackbone._text_forward``):
    sequence-first, attention through ``F.multi_head_attention_forward``, unfused."""
    x = x.permute(1, 0, 2)  # [T, B, width]
    for block in blocks:
        y, attn = block.ln_1(x), block.attn
        mixed = F.multi_head_attention_forward(
            y, y, y, y.shape[-1], attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False,
            0.0, attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False, attn_mask=mask)[0]
        x = x + block.ls_1(mixed)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x.permute(1, 0, 2)


def _interpolated_positions(positions: torch.Tensor, grid_h: int, grid_w: int,
                            antialias: bool = False) -> torch.Tensor:
    """Resize the square position grid bicubically; the CLS position is kept as is.

    Without antialiasing as the reference's SCLIP-derived code does: scale factor
    ((g + 0.1) / g0) per axis. With antialiasing as GEM's code does: to exactly (grid_h, grid_w).
    """
    side = int(math.isqrt(positions.shape[0] - 1))
    if (grid_h, grid_w) == (side, side):
        return positions
    grid = positions[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if antialias:
        resized = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=True)
    else:
        resized = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
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
