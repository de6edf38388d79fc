"""BLO-SAM network: SAM-family backbones, LoRA, the semantic mask decoder, the embedding cache and the token bank."""

from bundle.networks.backbones import BACKBONES, build_backbone, default_input_size
from bundle.networks.blo_sam import BLOSAM
from bundle.networks.embedding_cache import EmbeddingCache, shared_embedding_cache
from bundle.networks.token_bank import TokenBank, load_token_bank

__all__ = [
    "BACKBONES",
    "BLOSAM",
    "EmbeddingCache",
    "TokenBank",
    "build_backbone",
    "default_input_size",
    "load_token_bank",
    "shared_embedding_cache",
]
