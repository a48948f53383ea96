"""Weighted k-nearest-neighbour classification on frozen features, DINO's protocol.

Cosine similarity; each of the k nearest training samples votes for its class with weight exp(sim / T)
(DINO: k = 20, T = 0.07). Memory is bounded by working on test x train blocks and merging running top-k lists.
"""

import torch
import torch.nn.functional as F

from openvtp.errors import OpenVTPError


def _topk_neighbours(
    train: torch.Tensor, test: torch.Tensor, k: int, train_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities and train indices for each test row, scanning the train set in blocks."""
    best_sim = test.new_full((len(test), 0), float("-inf"))
    best_idx = torch.zeros(len(test), 0, dtype=torch.long, device=test.device)
    for start in range(0, len(train), train_chunk):
        sim = test @ train[start : start + train_chunk].T  # (Bt, Bn)
        sim, idx = sim.topk(min(k, sim.shape[1]), dim=1)
        best_sim, order = torch.cat([best_sim, sim], 1).topk(min(k, best_sim.shape[1] + sim.shape[1]), dim=1)
        best_idx = torch.cat([best_idx, idx + start], 1).gather(1, order)
    return best_sim, best_idx


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    test_chunk: int = 256,
    train_chunk: int = 65536,
) -> dict:
    """Accuracy (percent) of a temperature-weighted k-NN vote: {"protocol": "knn", "top1", "top5", "k", "temperature"}.

    Features (N, D) need not be normalised; labels are class indices (num_classes defaults to the largest + 1).
    """
    if train_feats.shape[1] != test_feats.shape[1]:
        raise OpenVTPError(f"k-NN: train features are {train_feats.shape[1]}-d, test features {test_feats.shape[1]}-d")
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise OpenVTPError("k-NN: features and labels differ in length")
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1).to(train.device)
    train_labels, test_labels = train_labels.to(train.device).long(), test_labels.to(train.device).long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train))
    correct1 = correct5 = 0
    for start in range(0, len(test), test_chunk):
        sim, idx = _topk_neighbours(train, test[start : start + test_chunk], k, train_chunk)  # (Bt, k)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())  # (Bt, C)
        pred = votes.topk(min(5, num_classes), dim=1).indices  # (Bt, 5)
        hits = pred == test_labels[start : start + test_chunk, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
    n = len(test)
    top1, top5 = 100 * correct1 / n, 100 * correct5 / n
    return {"protocol": "knn", "top1": top1, "top5": top5, "k": k, "temperature": temperature}
