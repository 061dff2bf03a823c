"""Downloads a published emotion2vec model into a local directory (where a model hub is reachable)."""

from __future__ import annotations

import os

from service.errors import ModelLoadError

HF_IDS = {"iic/emotion2vec_plus_large": "emotion2vec/emotion2vec_plus_large",
          "iic/emotion2vec_plus_base": "emotion2vec/emotion2vec_plus_base",
          "iic/emotion2vec_plus_seed": "emotion2vec/emotion2vec_plus_seed"}


def download_model(model_id: str, out_dir: str, hub: str = "ms") -> str:
    """Fetch `model_id` from ModelScope (ms) or Hugging Face (hf) into out_dir; returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    try:
        if hub == "hf":
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=HF_IDS.get(model_id, model_id), local_dir=out_dir)
        else:
            from modelscope.hub.snapshot_download import snapshot_download

            snapshot_download(model_id, local_dir=out_dir)
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        raise ModelLoadError(f"could not download {model_id!r} from hub {hub!r}: {type(exc).__name__}: {exc}") from exc
    missing = [f for f in ("config.yaml", "model.pt", "tokens.txt") if not os.path.exists(os.path.join(out_dir, f))]
    if missing:
        raise ModelLoadError(f"download of {model_id!r} finished but {out_dir!r} lacks {', '.join(missing)}")
    return out_dir
