"""`VTPModel`: the VTP tokenizer with the released checkpoint layout and inference API.

Parameter names equal the released state dict (no prefix): `trunk.*`, `pixel_decoder.*`,
`visual_proj`, and the OpenCLIP text tower flattened onto the root (`token_embedding`,
`positional_embedding`, `text_transformer.*`, `ln_final`, `text_projection`, `logit_scale`).
The released methods (`get_*`, `forward(forward_type=...)`) take ImageNet-normalised
images; `encode`/`decode` take and return pixels in [0, 1].
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openvtp.constants import IMAGENET_MEAN, IMAGENET_STD
from openvtp.data.text import tokenize
from openvtp.errors import MissingPartError, OpenVTPError

from .config import VTPConfig
from .io import CONFIG_NAME, check_state_dict, read_state_dict, resolve_model_dir, write_model_dir
from .pixel_decoder import PixelDecoder
from .text import TextTransformer
from .vit import VisionTrunk

# Parts of the model, by state-dict prefix, for parameter counts and freezing.
TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "text_transformer.", "ln_final.", "text_projection")
# Everything only the contrastive objective trains.
CLIP_PREFIXES = TEXT_PREFIXES + ("visual_proj.", "logit_scale", "logit_bias")


class VTPModel(nn.Module):
    """ViT auto-encoder with a CLIP text tower: encoder `trunk`, `pixel_decoder`, `visual_proj`, text tower."""

    def __init__(self, config: VTPConfig):
        super().__init__()
        self.config = cfg = config
        self.trunk = VisionTrunk(cfg)
        self.pixel_decoder = PixelDecoder(cfg) if cfg.train_reconstruction else None
        self.logit_bias = None
        if cfg.train_clip:
            clip_in = cfg.vision_embed_dim if cfg.vision_bottleneck_ae_only else cfg.vision_feature_bottleneck
            T = cfg.text_embed_dim
            self.visual_proj = nn.Linear(clip_in, T, bias=False)
            self.token_embedding = nn.Embedding(cfg.text_vocab_size, T)
            self.positional_embedding = nn.Parameter(torch.empty(cfg.text_context_length, T))
            self.text_transformer = TextTransformer(T, cfg.text_depth, cfg.text_num_heads, cfg.text_mlp_ratio,
                                                    cfg.text_quick_gelu)
            self.ln_final = nn.LayerNorm(T, eps=1e-5)
            if cfg.text_proj_bias:
                self.text_projection = nn.Linear(T, T)
            else:
                self.text_projection = nn.Parameter(torch.empty(T, T))  # applied as x @ P, not a Linear weight
            scale = cfg.init_logit_scale if cfg.init_logit_scale is not None else math.log(1 / 0.07)
            self.logit_scale = nn.Parameter(torch.full((1,) if cfg.nonscalar_logit_scale else (), float(scale)))
            self.logit_bias = (nn.Parameter(torch.full((1,) if cfg.nonscalar_logit_scale else (), float(cfg.init_logit_bias)))
                               if cfg.init_logit_bias is not None else None)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init as the released code does: trunc-normal 0.02 linears, unit norms, N(0, 0.02) embeddings."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.trunk.cls_token, std=0.02)
        nn.init.zeros_(self.trunk.mask_token)
        if self.config.train_clip:
            nn.init.normal_(self.positional_embedding, std=0.01)
            if isinstance(self.text_projection, nn.Parameter):
                nn.init.normal_(self.text_projection, std=self.config.text_embed_dim ** -0.5)

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: torch.Tensor) -> None:
        p = self.config.vision_patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise OpenVTPError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % p or images.shape[-1] % p:
            raise OpenVTPError(f"image size {images.shape[-2]}x{images.shape[-1]} is not a multiple of the patch size {p}")

    def _need(self, part: str) -> None:
        if part == "clip" and not self.config.train_clip:
            raise MissingPartError("this model has no text tower / CLIP head (train_clip is false)")
        if part == "rec" and not self.config.train_reconstruction:
            raise MissingPartError("this model has no pixel decoder (train_reconstruction is false)")

    # ------------------------------------------------------------------ vision
    def get_last_layer_feature(self, image: torch.Tensor, use_bottleneck: bool = False) -> dict[str, torch.Tensor]:
        """Final-normed class token (B, D) and patch tokens (B, N, D); bottlenecked to C if asked."""
        self._check_images(image)
        x = self.trunk(image)
        if use_bottleneck:
            x = self.trunk.bottleneck(x)
        return {"cls_token": x[:, 0], "patch_tokens": x[:, 1:]}

    def get_intermediate_layers_feature(self, image: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                        return_class_token: bool = False, norm: bool = True):
        """Outputs of the last n blocks, or of the blocks listed, in block order (as the released
        code returns them, whatever the order asked); never bottlenecked.

        Returns a tuple of patch tokens (B, N, D), or of (patch tokens, class token) pairs;
        with reshape, patch tokens are (B, D, h, w).
        """
        self._check_images(image)
        depth = len(self.trunk.blocks)
        asked = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if not asked or any(not 0 <= i < depth for i in asked) or len(set(asked)) != len(asked):
            raise OpenVTPError(f"intermediate layers {n}: need distinct block indices in [0, {depth}) "
                               f"for a depth-{depth} trunk")
        wanted = sorted(asked)
        _, kept = self.trunk.forward_blocks(image, keep=set(wanted))
        h, w = image.shape[-2] // self.trunk.patch_size, image.shape[-1] // self.trunk.patch_size
        out = []
        for i in wanted:
            x = self.trunk.norm(kept[i]) if norm else kept[i]
            cls, patches = x[:, 0], x[:, 1:]
            if reshape:
                patches = patches.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
            out.append((patches, cls) if return_class_token else patches)
        return tuple(out)

    def get_reconstruction_latents(self, image: torch.Tensor) -> torch.Tensor:
        """Bottlenecked patch tokens as a latent grid (B, C, H/p, W/p)."""
        self._check_images(image)
        return self.trunk.latents(image)

    def get_latents_decoded_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel decoder output (B, 3, H, W) in ImageNet-normalised space."""
        self._need("rec")
        if latents.ndim != 4 or latents.shape[1] != self.config.vision_feature_bottleneck:
            raise OpenVTPError(f"expected latents (B, {self.config.vision_feature_bottleneck}, h, w), "
                               f"got {tuple(latents.shape)}")
        return self.pixel_decoder(latents)

    # ------------------------------------------------------------------ CLIP
    def clip_image_embedding(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """CLIP image features from final-normed trunk tokens (B, 1+N, D) (shared by inference and training)."""
        if not self.config.vision_bottleneck_ae_only:
            tokens = self.trunk.bottleneck(tokens)
        feat = tokens[:, 0] if self.config.vision_clip_feat == "cls" else tokens[:, 1:].mean(dim=1)
        feat = self.visual_proj(feat)
        return F.normalize(feat, dim=-1) if normalize else feat

    def get_clip_image_feature(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        self._need("clip")
        self._check_images(image)
        return self.clip_image_embedding(self.trunk(image), normalize)

    def get_clip_text_feature(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features (B, T) from token ids (B, text_context_length), pooled at the first EOT (argmax id)."""
        self._need("clip")
        L = self.config.text_context_length
        if text.ndim != 2 or text.shape[1] != L:
            raise OpenVTPError(f"expected token ids of shape (B, {L}), got {tuple(text.shape)}")
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.text_transformer(x, causal=not self.config.text_no_causal_mask))
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def get_clip_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B_img, B_txt), logits_per_text) = exp(logit_scale) * img @ txt.T (+ bias)."""
        img = self.get_clip_image_feature(image, normalize=True)
        txt = self.get_clip_text_feature(text, normalize=True)
        logits = self.logit_scale.exp() * img @ txt.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None,
                forward_type: str = "clip") -> dict[str, torch.Tensor]:
        """Released entry point: 'clip' (normalised features, exp(logit_scale), logit_bias if the
        model has one), 'rec' (latents, reconstructed_image, target_image = the input) or
        'feature' (bottlenecked last-layer features)."""
        if forward_type == "clip":
            self._need("clip")
            out = {}
            if image is not None:
                out["image_features"] = self.get_clip_image_feature(image, normalize=True)
            if text is not None:
                out["text_features"] = self.get_clip_text_feature(text, normalize=True)
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if forward_type in ("rec", "feature") and image is None:
            raise OpenVTPError(f"forward_type='{forward_type}' needs an image")
        if forward_type == "rec":
            latents = self.get_reconstruction_latents(image)
            return {"latents": latents, "reconstructed_image": self.get_latents_decoded_images(latents),
                    "target_image": image}
        if forward_type == "feature":
            return self.get_last_layer_feature(image, use_bottleneck=True)
        raise OpenVTPError(f"unknown forward_type '{forward_type}' (clip, rec, feature)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: vision trunk, pixel decoder, text tower."""
        for tower in (self.trunk, self.pixel_decoder, getattr(self, "text_transformer", None)):
            if tower is not None:
                tower.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ pixel-space API
    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.pixel_mean.to(images01.dtype)) / self.pixel_std.to(images01.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pixel_std.to(x.dtype) + self.pixel_mean.to(x.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> latents (B, C, H/p, W/p)."""
        return self.get_reconstruction_latents(self.normalize(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]."""
        return self.denormalize(self.get_latents_decoded_images(latents)).clamp(0, 1)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        return tokenize(texts, self.config.text_context_length).to(self.trunk.cls_token.device)

    def encode_text(self, texts: str | list[str], normalize: bool = True) -> torch.Tensor:
        return self.get_clip_text_feature(self.tokenize(texts), normalize)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """CLIP features of images in [0, 1]."""
        return self.get_clip_image_feature(self.normalize(images), normalize)

    # ------------------------------------------------------------------ parts and io
    def param_counts(self) -> dict[str, int]:
        """Parameters per part, as the released README and manifests count them."""
        counts = {"trunk": 0, "pixel_decoder": 0, "text": 0, "other": 0}
        for name, p in self.named_parameters():
            part = ("trunk" if name.startswith("trunk.") else "pixel_decoder" if name.startswith("pixel_decoder.")
                    else "text" if name.startswith(TEXT_PREFIXES) else "other")
            counts[part] += p.numel()
        counts["total"] = sum(counts.values())
        return counts

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The released checkpoint's tensors: float32 weights, bf16 RoPE periods, no buffers beyond those."""
        return {k: v for k, v in self.state_dict().items()}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write `config.json` + `model.safetensors` (released layout) atomically."""
        return write_model_dir(path, self.config.to_dict(), self.export_state_dict())

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False,
                        map_location: str | torch.device = "cpu") -> "VTPModel":
        """Load a released or openvtp checkpoint: a local folder or a hub id (e.g. MiniMaxAI/VTP-Large-f16d64)."""
        model_dir = resolve_model_dir(path_or_hub_id, revision, cache_dir, local_files_only)
        config = VTPConfig.from_json_file(model_dir / CONFIG_NAME)
        state = read_state_dict(model_dir)
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model.state_dict(), state, str(model_dir))
        model.load_state_dict(state, strict=True, assign=True)
        model.pixel_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        model.pixel_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for rope in (model.trunk.rope_embed, getattr(model.pixel_decoder, "rope_embed", None)):
            if rope is not None:
                rope._tables.clear()
        return model.to(map_location).eval()
