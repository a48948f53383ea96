"""`VTPConfig`: the released checkpoint's config, field for field but for `FIXED_FIELDS`.

Field names and the flat layout are those of the released `config.json` (model_type "vtp"),
so a config written here loads in code written for the released models and vice versa.
Defaults are the released VTP-L f16d64 values.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

from openvtp.errors import OpenVTPError

# Keys the released config.json carries that describe the file, not the model.
METADATA_KEYS = ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")
# Fields of the released config.json that can take only one value here: the released models all use it and the
# other values build towers this implementation does not have. They are not VTPConfig fields (nothing could read
# another value); loading checks them, and saving writes them at these values, so a file written here still lists
# every field of the released config class: {key: (value written, accepts(value), error for any other value)}.
FIXED_FIELDS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    "text_ls_init_value": (None, lambda v: v is None or (type(v) in (int, float) and v == 0),
                           "text_ls_init_value is not supported (the released code never initialises it)"),
    # the pad id matters only to text_embed_cls's mask: any integer builds the same model
    "text_pad_id": (0, lambda v: isinstance(v, int) and not isinstance(v, bool), "text_pad_id must be an integer"),
    "text_pool_type": ("argmax", lambda v: v == "argmax", "only text_pool_type='argmax' is supported"),
    "text_proj_type": ("linear", lambda v: v == "linear", "only text_proj_type='linear' is supported"),
    "text_embed_cls": (False, lambda v: v is False, "text_embed_cls=true is not supported"),
    "text_output_tokens": (False, lambda v: v is False, "text_output_tokens=true is not supported"),
}
NORM_LAYERS = ("rmsnorm", "layernorm")
FFN_LAYERS = ("swiglu", "mlp")


@dataclass
class VTPConfig:
    """Architecture of a VTP tokenizer (vision trunk, pixel decoder, OpenCLIP-style text tower)."""

    image_size: int = 256
    # vision trunk (encoder)
    vision_patch_size: int = 16
    vision_embed_dim: int = 1024
    vision_depth: int = 24
    vision_num_heads: int = 16
    vision_mlp_ratio: float = 4.0
    vision_ffn_layer: str = "swiglu"
    vision_norm_layer: str = "rmsnorm"
    vision_use_qk_norm: bool = False
    vision_init_values: Optional[float] = None
    vision_feature_bottleneck: int = 64
    vision_bottleneck_ae_only: bool = True
    vision_clip_feat: str = "cls"
    # pixel decoder
    decoder_embed_dim: int = 1024
    decoder_depth: int = 24
    decoder_num_heads: int = 16
    decoder_ffn_layer: str = "swiglu"
    decoder_norm_layer: str = "layernorm"
    decoder_use_qk_norm: bool = False
    decoder_init_values: Optional[float] = None
    # text tower
    text_context_length: int = 77
    text_vocab_size: int = 49408
    text_embed_dim: int = 768
    text_depth: int = 12
    text_num_heads: int = 12
    text_mlp_ratio: float = 4.0
    text_quick_gelu: bool = False
    text_proj_bias: bool = False
    text_no_causal_mask: bool = False
    # CLIP head
    init_logit_scale: Optional[float] = None
    init_logit_bias: Optional[float] = None
    nonscalar_logit_scale: bool = False
    # which parts exist
    train_clip: bool = True
    train_reconstruction: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def has_bottleneck(self) -> bool:
        return self.vision_feature_bottleneck != self.vision_embed_dim

    @property
    def latent_dim(self) -> int:
        return self.vision_feature_bottleneck

    def resolution(self, size: int | None, model: str) -> int:
        """The side images are run at: `size` (a command's --size) or image_size, a multiple of the patch size
        either way; the error blames the one that was used (`model` names the checkpoint)."""
        p = self.vision_patch_size
        if size is not None and size % p:
            raise OpenVTPError(f"--size {size} is not a multiple of the patch size {p} of {model}")
        if size is None and self.image_size % p:
            raise OpenVTPError(f"{model}: config.json image_size {self.image_size} is not a multiple of its patch "
                               f"size {p}; pass --size")
        return size or self.image_size

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise OpenVTPError(f"invalid VTPConfig: {msg}")

        for tower, dim, heads in (("vision", self.vision_embed_dim, self.vision_num_heads),
                                  ("decoder", self.decoder_embed_dim, self.decoder_num_heads)):
            need(dim > 0 and heads > 0 and dim % (4 * heads) == 0,
                 f"{tower}_embed_dim ({dim}) must be a multiple of 4 * {tower}_num_heads ({heads}) for 2-D RoPE")
        need(self.text_embed_dim % self.text_num_heads == 0, "text_embed_dim must be a multiple of text_num_heads")
        need(self.vision_patch_size > 0, "vision_patch_size must be positive")
        need(self.vision_feature_bottleneck > 0, "vision_feature_bottleneck must be positive")
        need(self.vision_norm_layer in NORM_LAYERS, f"vision_norm_layer must be one of {NORM_LAYERS}")
        need(self.decoder_norm_layer in NORM_LAYERS, f"decoder_norm_layer must be one of {NORM_LAYERS}")
        need(self.vision_ffn_layer in FFN_LAYERS, f"vision_ffn_layer must be one of {FFN_LAYERS}")
        need(self.decoder_ffn_layer in FFN_LAYERS, f"decoder_ffn_layer must be one of {FFN_LAYERS}")
        need(self.vision_clip_feat in ("cls", "pooled"), "vision_clip_feat must be 'cls' or 'pooled'")

    # ------------------------------------------------------------------ io
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "VTPConfig":
        """Strict: unknown keys and ill-typed values are errors that name the key."""
        data = dict(data)
        model_type = data.get("model_type", "vtp")
        if model_type != "vtp":
            raise OpenVTPError(f"{source}: model_type is '{model_type}', expected 'vtp'")
        for key in METADATA_KEYS:
            data.pop(key, None)
        for key, (_, accepts, message) in FIXED_FIELDS.items():
            if key in data and not accepts(data.pop(key)):
                raise OpenVTPError(f"{source}: {message}")
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OpenVTPError(f"{source}: unknown field(s) {', '.join(unknown)}")
        values = {k: _coerce(k, v, hints[k], source) for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The released config.json layout (sorted keys, metadata and the fixed fields included)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out.update({key: value for key, (value, _, _) in FIXED_FIELDS.items()})
        out.update(architectures=["VTPModel"], model_type="vtp", dtype="float32")
        return dict(sorted(out.items()))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "VTPConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise OpenVTPError(f"config not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OpenVTPError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise OpenVTPError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VTPConfig":
        if name not in PRESETS:
            raise OpenVTPError(f"unknown model preset '{name}' (presets: {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check a JSON value against the field's type; ints are accepted where floats are expected."""
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    base = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise OpenVTPError(f"{source}: field '{key}' must not be null")
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise OpenVTPError(f"{source}: field '{key}' should be {base.__name__}, got {value!r}")
    return value


_TEXT_BASE = dict(text_embed_dim=768, text_depth=12, text_num_heads=12)
PRESETS: dict[str, dict[str, Any]] = {
    # The released sizes (method.md §2). S and B heads are reconstructed from parameter counts.
    "vtp-s": dict(vision_embed_dim=384, vision_depth=12, vision_num_heads=6,
                  decoder_embed_dim=384, decoder_depth=12, decoder_num_heads=6, **_TEXT_BASE),
    "vtp-b": dict(vision_embed_dim=768, vision_depth=12, vision_num_heads=12,
                  decoder_embed_dim=768, decoder_depth=12, decoder_num_heads=12, **_TEXT_BASE),
    "vtp-l": dict(vision_embed_dim=1024, vision_depth=24, vision_num_heads=16,
                  decoder_embed_dim=1024, decoder_depth=24, decoder_num_heads=16, **_TEXT_BASE),
    # CPU-sized models for tests, demos and laptops (openvtp's own, not released).
    "vtp-tiny": dict(image_size=64, vision_embed_dim=64, vision_depth=2, vision_num_heads=4,
                     vision_feature_bottleneck=8, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                     text_embed_dim=64, text_depth=2, text_num_heads=4),
    "vtp-mini": dict(image_size=64, vision_patch_size=8, vision_embed_dim=192, vision_depth=6, vision_num_heads=3,
                     vision_feature_bottleneck=16, decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3,
                     text_embed_dim=128, text_depth=4, text_num_heads=4),
}
