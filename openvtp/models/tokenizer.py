"""The text tokenizer: OpenCLIP's BPE, as the released models were trained with."""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    import open_clip  # heavy import, deferred until text is tokenized

    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids (N, context_length): SOT, BPE ids, EOT, zero padding; over-long text keeps EOT last."""
    if isinstance(texts, str):
        texts = [texts]
    return _tokenizer(context_length)(list(texts)).long()
