"""Image-text retrieval recall@K with several captions per image (COCO / Flickr30k style).

Text -> image: a caption's query succeeds if its own image is in the top K. Image -> text: an image's query succeeds
if any of its captions is in the top K. Similarity is cosine. Recalls are in percent.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError


@torch.no_grad()
def retrieval_recall(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_for_text: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict:
    """{"i2t_R@k", "t2i_R@k"} for each k.

    Args:
        image_feats: (Ni, D); text_feats: (Nt, D).
        image_for_text: (Nt,) long, the index of the image each caption describes.
    """
    if image_feats.shape[1] != text_feats.shape[1]:
        raise OpenVTPError(f"image features are {image_feats.shape[1]}-d, text features {text_feats.shape[1]}-d")
    if image_for_text.shape != (len(text_feats),):
        raise OpenVTPError(f"image_for_text must be ({len(text_feats)},), got {tuple(image_for_text.shape)}")
    img = F.normalize(image_feats.float(), dim=-1)
    txt = F.normalize(text_feats.float(), dim=-1).to(img.device)
    owner = image_for_text.to(img.device).long()
    ni, nt = len(img), len(txt)
    out = {}

    # text -> image: rank of the caption's own image
    hits_t2i = dict.fromkeys(ks, 0)
    for start in range(0, nt, chunk):
        top = (txt[start : start + chunk] @ img.T).topk(min(max(ks), ni), dim=1).indices  # (B, K)
        match = top == owner[start : start + chunk, None]
        for k in ks:
            hits_t2i[k] += match[:, :k].any(1).sum().item()

    # image -> text: best rank among the image's captions
    hits_i2t = dict.fromkeys(ks, 0)
    for start in range(0, ni, chunk):
        top = (img[start : start + chunk] @ txt.T).topk(min(max(ks), nt), dim=1).indices  # (B, K)
        match = owner[top] == torch.arange(start, start + len(top), device=img.device)[:, None]
        for k in ks:
            hits_i2t[k] += match[:, :k].any(1).sum().item()

    for k in ks:
        out[f"i2t_R@{k}"] = 100 * hits_i2t[k] / ni
    for k in ks:
        out[f"t2i_R@{k}"] = 100 * hits_t2i[k] / nt
    return out
