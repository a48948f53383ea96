"""Caption tokenisation with OpenCLIP's BPE tokenizer (the one the released VTP text tower uses)."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

VOCAB_SIZE = 49408
SOT_TOKEN, EOT_TOKEN = 49406, 49407


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77):
    """OpenCLIP's tokenizer for ViT-B-32 (built-in BPE vocabulary, nothing downloaded); cached."""
    import open_clip  # heavy import, deferred until text is first tokenised

    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """LongTensor (N, context_length): SOT, BPE ids, EOT, zero padding; over-long text is
    truncated with EOT kept last. Text is lower-cased and whitespace-collapsed."""
    if isinstance(texts, str):
        texts = [texts]
    return get_tokenizer(context_length)(list(texts)).long()
