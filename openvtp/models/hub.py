"""Where a model's files are: a local folder, or a hub id fetched with huggingface_hub (which honours its cache,
`revision` and offline mode, HF_HUB_OFFLINE=1). Needs no torch, so the CLI checks model paths before importing it."""
from __future__ import annotations

import os
from pathlib import Path

from openvtp.errors import OpenVTPError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def resolve_model_dir(path_or_hub_id: str | os.PathLike, revision: str | None = None,
                      cache_dir: str | None = None, local_files_only: bool = False) -> Path:
    """A local folder as is; otherwise a hub id `owner/name` downloaded (or found in the cache)."""
    path = Path(path_or_hub_id)
    if path.exists():
        if not path.is_dir():
            raise OpenVTPError(f"{path} is a file; a model is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
        return path
    name = str(path_or_hub_id)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise OpenVTPError(f"model not found: {name} (not a folder, and not a hub id like MiniMaxAI/VTP-Large-f16d64)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        local = snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpenVTPError(f"cannot fetch model '{name}' from the hub (offline or unknown id?): {reason}") from None
    return Path(local)
