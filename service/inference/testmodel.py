"""Builds UNTRAINED emotion2vec test checkpoints with funasr's own Emotion2vec class, in funasr's local layout.

These are test models: random weights, meaningless scores. They exist so that the real loading path
(funasr AutoModel on a local directory) and the whole pipeline can run where no model hub is
reachable. `favor` biases the classifier so one label wins on any input, which gives deterministic
"always angry" / "always neutral" models for end-to-end alert tests. base and large match the
published emotion2vec_plus_base / emotion2vec_plus_large shapes, so they cost the same compute.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from service.inference.emotion2vec import TEST_MODEL_MARKER

# emotion2vec_plus_* tokens.txt, in the published order.
PLUS_TOKENS = (
    "生气/angry",
    "厌恶/disgusted",
    "恐惧/fearful",
    "开心/happy",
    "中立/neutral",
    "其他/other",
    "难过/sad",
    "吃惊/surprised",
    "<unk>",
)

# size -> (embed_dim, depth, prenet_depth, heads, conv_channels, decoder_dim)
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (64, 2, 1, 4, 32, 32),
    "base": (768, 8, 4, 12, 512, 384),
    "large": (1024, 16, 8, 16, 512, 384),
}
FAVOR_BIAS = 12.0


def model_conf(size: str) -> dict[str, Any]:
    """funasr model_conf for an emotion2vec of the given size (the data2vec 2.0 audio layout)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    embed, depth, prenet, heads, conv, decoder_dim = SIZES[size]
    spec = f"[({conv}, 10, 5)] + [({conv}, 3, 2)] * 4 + [({conv},2,2)] + [({conv},2,2)]"
    audio = dict(
        type="AUDIO", prenet_depth=prenet, prenet_layerdrop=0.05, prenet_dropout=0.1,
        start_drop_path_rate=0.0, end_drop_path_rate=0.0, num_extra_tokens=10, init_extra_token_zero=True,
        mask_noise_std=0.01, mask_prob_min=None, mask_prob=0.5, inverse_mask=False, mask_prob_adjust=0.05,
        keep_masked_pct=0.0, mask_length=5, add_masks=False, remove_masks=False, mask_dropout=0.0,
        encoder_zero_mask=True, mask_channel_prob=0.0, mask_channel_length=64, ema_local_encoder=False,
        local_grad_mult=1.0, use_alibi_encoder=True, alibi_scale=1.0, learned_alibi=False, alibi_max_pos=None,
        learned_alibi_scale=True, learned_alibi_scale_per_head=True, learned_alibi_scale_per_layer=False,
        num_alibi_heads=heads, model_depth=depth,
        decoder=dict(
            decoder_dim=decoder_dim, decoder_groups=16, decoder_kernel=7, decoder_layers=4, input_dropout=0.1,
            add_positions_masked=False, add_positions_all=False, decoder_residual=True, projection_layers=1,
            projection_ratio=2.0,
        ),
        extractor_mode="layer_norm", feature_encoder_spec=spec, conv_pos_width=95, conv_pos_groups=16,
        conv_pos_depth=5, conv_pos_pre_ln=False,
    )
    return dict(
        loss_beta=0.0, loss_scale=None, depth=depth, start_drop_path_rate=0.0, end_drop_path_rate=0.0,
        num_heads=heads, norm_eps=1e-05, norm_affine=True, encoder_dropout=0.1, post_mlp_drop=0.1,
        attention_dropout=0.1, activation_dropout=0.0, dropout_input=0.0, layerdrop=0.05, embed_dim=embed,
        mlp_ratio=4.0, layer_norm_first=False, average_top_k_layers=depth, end_of_block_targets=False,
        clone_batch=8, normalize=True, modalities=dict(audio=audio),
    )


def make_test_model(out_dir: str, size: str = "tiny", favor: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Write config.yaml, model.pt, tokens.txt (and a marker naming it a test model) into out_dir.

    Returns a description: size, parameter count, favoured label.
    """
    import torch
    from funasr.models.emotion2vec.model import Emotion2vec

    from service.inference.base import english_label

    labels = [english_label(t) for t in PLUS_TOKENS]
    if favor is not None and favor not in labels:
        raise ValueError(f"--favor {favor!r} is not a label; expected one of {', '.join(labels)}")
    conf = model_conf(size)
    torch.manual_seed(seed)
    net = Emotion2vec(model_conf=conf, vocab_size=len(PLUS_TOKENS))
    if favor is not None:
        with torch.no_grad():
            net.proj.weight.zero_()
            net.proj.bias.zero_()
            net.proj.bias[labels.index(favor)] = FAVOR_BIAS
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"model": net.state_dict()}, os.path.join(out_dir, "model.pt"))
    config = {
        "model": "Emotion2vec",
        "model_conf": conf,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }
    with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, allow_unicode=True, sort_keys=False)
    with open(os.path.join(out_dir, "tokens.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(PLUS_TOKENS) + "\n")
    info = {
        "test_model": True,
        "trained": False,
        "size": size,
        "favor": favor,
        "seed": seed,
        "parameters": sum(p.numel() for p in net.parameters()),
        "note": "UNTRAINED test model built by `python -m service make-test-model`; its scores mean nothing.",
    }
    with open(os.path.join(out_dir, TEST_MODEL_MARKER), "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    return info
