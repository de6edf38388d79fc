"""BLO-SAM network: SAM-family backbones, LoRA, the semantic mask decoder and the embedding cache."""

from bundle.networks.backbones import BACKBONES, build_backbone, default_input_size
from bundle.networks.blo_sam import BLOSAM
from bundle.networks.embedding_cache import EmbeddingCache, shared_embedding_cache

__all__ = ["BACKBONES", "BLOSAM", "EmbeddingCache", "build_backbone", "default_input_size", "shared_embedding_cache"]
