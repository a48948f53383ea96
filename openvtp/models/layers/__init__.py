from .attention import Attention
from .block import Block, LayerScale
from .mlp import Mlp, SwiGLU, make_ffn
from .norm import RMSNorm, make_norm
from .rope import RopeEmbedding, apply_rope

__all__ = ["Attention", "Block", "LayerScale", "Mlp", "SwiGLU", "make_ffn", "RMSNorm", "make_norm",
           "RopeEmbedding", "apply_rope"]
