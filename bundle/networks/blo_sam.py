"""BLO-SAM: a prompt-free SAM for semantic segmentation, adapted by bi-level optimisation.

- image encoder: frozen (and always in eval mode: LiteMedSAM's TinyViT has BatchNorm);
- mask decoder: frozen SAM weights + LoRA on q/v of every attention (both two-way blocks and the
  final token-to-image attention), trainable output upscaling and the hypernetwork heads in use:
  the lower-level parameters W;
- a learnt prompt, the upper-level parameters phi, of one or more kinds (``prompt``, joined by ``+``):
  ``dense``: the 256-value dense embedding broadcast over the grid (the paper's; initialised from
  the prompt encoder's ``no_mask_embed``); ``tokens``: ``prompt_tokens`` sparse prompt tokens
  initialised from the prompt encoder's embedding of a whole-image box, so training starts near a
  box-prompted segmentation instead of SAM's "no object"; ``map``: a dense prompt map, one
  256-vector per embedding-grid cell (added to ``dense`` when both are used, else initialised from
  ``no_mask_embed``). A kind that is not learnt keeps SAM's own value (no sparse token, the frozen
  ``no_mask_embed``);
- output: ``num_classes + 1`` logits at the model input size: a constant 0 for background, then one
  mask token per class (class 1 is SAM's single-mask token, so one class uses one head).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import Tensor, nn

from bundle.networks.backbones import Backbone, build_backbone, sam_state_dict, state_digest
from bundle.networks.embedding_cache import EmbeddingCache
from bundle.networks.lora import apply_lora, lora_modules

CLASS_COUNT_KEY = "class_count"


class BLOSAM(nn.Module):
    """BLO-SAM network: ``forward(image B x 3 x S x S) -> logits B x (C+1) x S x S``.

    Args:
        backbone: registry name (``litemedsam``, ``vit_b``, ``vit_l``, ``vit_h``, ``sam_tiny``)
            or built parts.
        num_classes: foreground classes C.
        checkpoint: released backbone weights (``None``: the backbone's default).
        input_size: model input side (``None``: the backbone's native size).
        lora_rank: rank of the LoRA updates; ``lora_alpha`` their scaling numerator.
        pretrained: ``False`` builds random weights, to be replaced by a trained ``model.pt``.
        embedding_cache: cache of encoder outputs (``None``: encode every call).
        prompt: the learnt prompt's kinds, e.g. ``dense``, ``tokens``, ``map``, ``tokens+dense``.
        prompt_tokens: number of sparse prompt tokens of the ``tokens`` kind.
        train_upscaling: train the decoder's output upscaling (transposed convolutions, per token);
            ``False`` keeps SAM's pretrained sub-token detail frozen.
    """

    PROMPT_KINDS = ("dense", "tokens", "map")

    def __init__(
        self,
        backbone: str | Backbone = "litemedsam",
        num_classes: int = 1,
        checkpoint: str | None = None,
        input_size: int | None = None,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        pretrained: bool = True,
        embedding_cache: EmbeddingCache | None = None,
        prompt: str = "dense",
        prompt_tokens: int = 2,
        train_upscaling: bool = True,
    ) -> None:
        super().__init__()
        self.prompt_kinds = parse_prompt(prompt)
        self.train_upscaling = bool(train_upscaling)
        parts = (
            backbone
            if isinstance(backbone, Backbone)
            else build_backbone(backbone, checkpoint, input_size, pretrained=pretrained)
        )
        self.backbone_name = parts.name
        self.input_size = parts.input_size
        self.num_classes = int(num_classes)
        self.image_encoder = parts.image_encoder
        self.prompt_encoder = parts.prompt_encoder
        self.mask_decoder = parts.mask_decoder
        self.mask_decoder.set_num_outputs(self.num_classes)
        for p in self.parameters():
            p.requires_grad_(False)
        self.lora_layers = apply_lora(self.mask_decoder.transformer, rank=lora_rank, alpha=lora_alpha)
        # 1 x C, broadcast to the dense prompt B x C x h x w (SAM's "no mask" embedding; learnt if "dense")
        self.prompt_embedding = nn.Parameter(
            self.prompt_encoder.no_mask_embed.weight.detach().clone(), requires_grad=False
        )
        if "tokens" in self.prompt_kinds:  # N x C, initialised from a whole-image box's two corner tokens
            self.prompt_tokens = nn.Parameter(self._whole_image_box_tokens(int(prompt_tokens)))
        if "map" in self.prompt_kinds:  # 1 x C x h x w, added to the dense prompt
            grid = self.prompt_encoder.image_embedding_size
            start = torch.zeros if "dense" in self.prompt_kinds else self._no_mask_map
            self.prompt_map = nn.Parameter(start((1, self.prompt_embedding.shape[1], *grid)))
        for p in self.lower_parameters() + self.upper_parameters():
            p.requires_grad_(True)
        # SAM's dense positional encoding of the embedding grid is a constant of the frozen prompt
        # encoder: computed once (SAM builds it in float32 at every call, which also breaks float64)
        self.register_buffer("image_pe", self.prompt_encoder.get_dense_pe().detach(), persistent=False)
        # ... and it derives from the prompt encoder's (persistent) random Fourier matrix: recompute
        # it whenever weights are loaded, or a network built with pretrained=False keeps the
        # encoding of its random initial matrix instead of the checkpoint's
        self.register_load_state_dict_post_hook(BLOSAM._refresh_image_pe)
        # The class count, saved with the weights: up to 3 classes the decoder's tensors have the same
        # shapes whatever the count (SAM's 4 mask tokens), so only this tells a 2-class checkpoint
        # from a 1-class one (checked by bundle.handlers.check_checkpoint). Checkpoints written before
        # it existed load as before.
        self.register_buffer(CLASS_COUNT_KEY, torch.tensor(self.num_classes, dtype=torch.int64))
        self.register_load_state_dict_pre_hook(BLOSAM._default_class_count)
        self.embedding_cache = embedding_cache
        self._encoder_id: str | None = None
        self.image_encoder.eval()

    def _default_class_count(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + CLASS_COUNT_KEY, getattr(self, CLASS_COUNT_KEY).clone())

    # ---- parameter groups -------------------------------------------------------------------
    def lower_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """W by group: ``lora`` factors, output ``upscaling`` (unless frozen), hypernetwork ``heads`` in use."""
        groups = {"lora": [p for m in lora_modules(self.mask_decoder) for p in (m.lora_a.weight, m.lora_b.weight)]}
        if self.train_upscaling:
            groups["upscaling"] = list(self.mask_decoder.output_upscaling.parameters())
        groups["heads"] = list(self.mask_decoder.used_heads().parameters())
        return groups

    def lower_parameters(self) -> list[nn.Parameter]:
        """W: LoRA factors, output upscaling (unless frozen) and the hypernetwork heads in use."""
        return [p for group in self.lower_parameter_groups().values() for p in group]

    def optimizer_groups(self, lrs: dict[str, float | None], default_lr: float, upper: bool = False) -> list[dict]:
        """Optimiser parameter groups with their own learning rates.

        Args:
            lrs: group name (``lora``, ``upscaling``, ``heads``; ``prompt`` for the upper level) -> lr;
                a missing or ``None`` lr is ``default_lr``.
            default_lr: the lr of groups without their own.
            upper: the upper level's group (the learnt prompt) instead of the lower level's.
        """
        groups = {"prompt": self.upper_parameters()} if upper else self.lower_parameter_groups()
        return [
            {"params": params, "lr": default_lr if lrs.get(name) is None else float(lrs[name]), "name": name}
            for name, params in groups.items()
            if params
        ]

    def upper_parameters(self) -> list[nn.Parameter]:
        """phi: the learnt prompt (dense embedding, sparse tokens and/or dense map)."""
        names = {"dense": "prompt_embedding", "tokens": "prompt_tokens", "map": "prompt_map"}
        return [getattr(self, names[kind]) for kind in self.PROMPT_KINDS if kind in self.prompt_kinds]

    @torch.no_grad()
    def _whole_image_box_tokens(self, count: int) -> Tensor:
        if count < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {count}")
        side = float(self.input_size - 1)
        box = torch.tensor([[0.0, 0.0, side, side]])  # inclusive pixel bounds, as SAM's box prompts
        sparse, _ = self.prompt_encoder(points=None, boxes=box, masks=None)  # 1 x 2 x C: the two corners
        return sparse[0, torch.arange(count) % sparse.shape[1]].detach().clone().float()

    def _no_mask_map(self, shape: tuple[int, ...]) -> Tensor:
        return self.prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).expand(shape).clone()

    def learnt_prompt(self, batch: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The learnt prompt as SAM's (sparse B x N x C, dense 1 x C x h x w or 1 x C x 1 x 1)."""
        dense = self.prompt_embedding.to(dtype).reshape(1, -1, 1, 1)
        if "map" in self.prompt_kinds:
            dense = dense + self.prompt_map.to(dtype) if "dense" in self.prompt_kinds else self.prompt_map.to(dtype)
        if "tokens" in self.prompt_kinds:
            sparse = self.prompt_tokens.to(dtype).unsqueeze(0).expand(batch, -1, -1)
        else:
            sparse = self.prompt_embedding.new_zeros((batch, 0, self.prompt_embedding.shape[1]), dtype=dtype)
        return sparse, dense

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: total, lower (W), upper (phi), trainable and frozen."""
        total = sum(p.numel() for p in self.parameters())
        lower = sum(p.numel() for p in self.lower_parameters())
        upper = sum(p.numel() for p in self.upper_parameters())
        return {
            "total": total,
            "lower": lower,
            "upper": upper,
            "trainable": lower + upper,
            "frozen": total - lower - upper,
        }

    # ---- modes --------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> BLOSAM:
        super().train(mode)
        self.image_encoder.eval()  # frozen BatchNorm statistics must never move
        return self

    @staticmethod
    def _refresh_image_pe(module: BLOSAM, _incompatible_keys) -> None:
        encoder = module.prompt_encoder
        with torch.no_grad():  # SAM's layer builds its grid in float32: evaluate a float32 copy
            pe = copy.deepcopy(encoder.pe_layer).float()(encoder.image_embedding_size).unsqueeze(0)
            module.image_pe = pe.to(module.image_pe.device, module.image_pe.dtype)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._encoder_id = None  # new encoder weights invalidate cached embeddings
        super()._load_from_state_dict(*args, **kwargs)

    # ---- forward ------------------------------------------------------------------------------
    @property
    def encoder_id(self) -> str:
        """Identifies the encoder's weights and input size in embedding-cache keys."""
        if self._encoder_id is None:
            self._encoder_id = f"{self.backbone_name}-{self.input_size}-{state_digest(self.image_encoder)}"
        return self._encoder_id

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Image embeddings B x 256 x h x w of preprocessed images B x 3 x S x S (cached if possible)."""
        self.image_encoder.eval()
        if self.embedding_cache is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.image_encoder(images)
        # embeddings computed under autocast differ from float32 ones: keep them apart
        encoder_id = self.encoder_id + ("-autocast" if torch.is_autocast_enabled(images.device.type) else "")
        keys = [self.embedding_cache.key(img, encoder_id) for img in images]
        found = [self.embedding_cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = self.image_encoder(images[missing])
            for i, emb in zip(missing, computed, strict=True):
                self.embedding_cache.put(keys[i], emb)
                found[i] = emb
        return torch.stack([f.to(images.device, images.dtype) for f in found])

    def decode(self, embeddings: Tensor, sparse: Tensor | None = None, dense: Tensor | None = None) -> Tensor:
        """Logits B x (C+1) x S x S from image embeddings B x 256 x h x w.

        The prompt is the learnt one unless ``sparse`` (B x N x 256) and ``dense`` (B x 256 x h x w)
        prompt embeddings are given (e.g. from ``prompt_encoder`` for a box, see ``box_prompt.py``).
        """
        batch = embeddings.shape[0]
        if sparse is None and dense is None:
            sparse, dense = self.learnt_prompt(batch, embeddings.dtype)
        elif sparse is None or dense is None:
            raise ValueError("decode: give both sparse and dense prompts, or neither (the learnt prompt)")
        masks = self.mask_decoder.predict_logits(
            embeddings, self.image_pe.to(embeddings.dtype), sparse, dense
        )  # B x C x 4h x 4w
        # Background is a constant 0 logit, so softmax over [0, m] is sigmoid(m) for one class and
        # SAM's own mask semantics (logit > 0: object) carry over unchanged from the pretrained
        # single-mask token; a learnt background head starts with an arbitrary, confident guess.
        logits = torch.cat([masks.new_zeros((batch, 1, *masks.shape[-2:])), masks], dim=1)
        if logits.shape[-1] != self.input_size:
            logits = F.interpolate(
                logits, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return logits

    def forward(self, images: Tensor, encoded: bool = False) -> Tensor:
        """Logits B x (C+1) x S x S for preprocessed images B x 3 x S x S; no prompt needed.

        ``encoded=True`` takes image embeddings (``encode``'s output) instead of images: for code
        that transforms the model functionally (``torch.func``), where the cache cannot hash, and for
        code that uses the embeddings too (the token prior of ``SliceWiseInferer``).
        """
        # MONAI's MetaTensor dispatches every op through Python (__torch_function__): the decoder runs
        # on plain tensors (measured: about a third of a training step went to that dispatch), and an
        # evaluation output gets the input's meta back, which Invertd reads.
        meta = images if isinstance(images, MetaTensor) else None
        plain = images.as_tensor() if meta is not None else images
        if encoded:
            return self.decode(plain)
        if plain.ndim != 4 or plain.shape[1] != 3 or tuple(plain.shape[-2:]) != (self.input_size,) * 2:
            raise ValueError(
                f"BLOSAM expects images B x 3 x {self.input_size} x {self.input_size}, got {tuple(plain.shape)}."
            )
        logits = self.decode(self.encode(plain))
        if meta is None or torch.is_grad_enabled():
            return logits
        # the input's meta attributes, shared (what the constructor's meta= would do, but a batch's meta
        # holds one value per image, which MONAI 1.6's constructor cannot read: batch > 1 failed)
        return MetaTensor(logits).copy_meta_from(meta, copy_attr=False)

    # ---- export -------------------------------------------------------------------------------
    @torch.no_grad()
    def sam_state_dict(self) -> dict[str, Tensor]:
        """Weights in SAM's release format: LoRA merged into q/v, the learnt prompt as ``no_mask_embed``.

        Loading the result as the backbone checkpoint of a new BLOSAM reproduces this model's output.
        Only valid while ``num_classes + 1`` fits SAM's 4 mask tokens (otherwise shapes differ), and
        for the ``dense`` prompt alone: SAM's format has no place for learnt tokens or a prompt map.
        """
        if self.prompt_kinds != ("dense",):
            raise ValueError(
                f"sam_state_dict: a {'+'.join(self.prompt_kinds)} prompt has no place in SAM's release format "
                "(only 'dense' does); export the bundle's own model.pt instead"
            )
        state = {}
        for name, value in sam_state_dict(
            Backbone(
                self.backbone_name, self.image_encoder, self.prompt_encoder, self.mask_decoder, self.input_size, ""
            )
        ).items():
            if ".lora_" in name:
                continue
            state[name.replace(".base.", ".")] = value.clone()
        for name in self.lora_layers:
            module = self.mask_decoder.transformer.get_submodule(name)
            state[f"mask_decoder.transformer.{name}.weight"] = module.merged_weight().clone()
        state["prompt_encoder.no_mask_embed.weight"] = self.prompt_embedding.detach().clone()
        return state


def parse_prompt(prompt: str) -> tuple[str, ...]:
    """The kinds in a prompt spec such as ``"tokens+dense"``, in canonical order.

    Raises:
        ValueError: an unknown or empty kind (the message lists the known ones).
    """
    kinds = [k.strip() for k in str(prompt).split("+")]
    unknown = [k for k in kinds if k not in BLOSAM.PROMPT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown prompt {prompt!r}: use one of {', '.join(BLOSAM.PROMPT_KINDS)} or a '+' combination")
    return tuple(k for k in BLOSAM.PROMPT_KINDS if k in kinds)
