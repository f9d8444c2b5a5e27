"""Compose a vision-language base around a pretrained text model (the ``vlm`` CPU default).

Stage ``vlm_base`` (``vlm_bases.<name>`` in params.yaml) calls :func:`compose_idefics3` on a
folder materialized by the ``base_model`` stage (e.g. SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinlm.io import atomic_dir

IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def compose_idefics3(text_dir: str | Path, out_dir: str | Path, vision_config: dict[str, Any],
                     scale_factor: int = 4, seed: int = 42, dtype: str = "float32") -> dict[str, Any]:
    """An Idefics3 model (the SmolVLM architecture) whose language model IS ``text_dir``.

    The text model's weights (e.g. SmolLM2-135M-Instruct, materialized by ``materialize``)
    are loaded exactly into ``model.text_model`` and ``lm_head``; the vision encoder (a
    SigLIP-style ViT of ``vision_config``: ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``image_size``, ``patch_size``) and the
    connector (pixel shuffle by ``scale_factor`` + a linear map to the text width) are new,
    seeded random weights that the ``vlm`` fine-tune trains in full. The tokenizer gains the
    four Idefics3 image tokens (embeddings initialised at the mean of the old ones), and an
    ``Idefics3Processor`` without image splitting (one ``image_size`` square per image,
    ``(image_size / patch_size)^2 / scale_factor^2`` image tokens) is saved with the model.
    Written to a temp folder and renamed, like ``materialize``.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    text_dir, out_dir = Path(text_dir), Path(out_dir)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(text_dir)
    tok.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
    tcfg = AutoConfig.from_pretrained(text_dir)
    vcfg = dict(vision_config)
    size, patch = int(vcfg["image_size"]), int(vcfg["patch_size"])
    if size % patch or (size // patch) % scale_factor:
        raise ValueError(f"image_size {size} must be a multiple of patch_size {patch} x "
                         f"scale_factor {scale_factor}")
    cfg = Idefics3Config(text_config=tcfg.to_dict(), vision_config=vcfg, scale_factor=scale_factor,
                         image_token_id=tok.convert_tokens_to_ids("<image>"),
                         tie_word_embeddings=bool(tcfg.tie_word_embeddings),
                         pad_token_id=tok.pad_token_id)
    lm = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    lm.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # new token rows: the mean embedding (a neutral start)
        emb = lm.get_input_embeddings().weight
        emb[-len(IDEFICS3_TOKENS):] = emb[:-len(IDEFICS3_TOKENS)].mean(0)
    cfg.text_config.vocab_size = len(tok)
    model = Idefics3ForConditionalGeneration(cfg)
    missing, unexpected = model.model.text_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{text_dir}: text weights do not fit Idefics3's text model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.lm_head.weight)
    model = model.to(getattr(torch, dtype))
    image_seq_len = (size // patch) ** 2 // scale_factor ** 2
    proc = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": size},
            max_image_size={"longest_edge": size}),
        tokenizer=tok, image_seq_len=image_seq_len)
    n = {part: int(sum(p.numel() for p in mod.parameters())) for part, mod in
         [("text_model", model.model.text_model), ("vision_model", model.model.vision_model),
          ("connector", model.model.connector)]}
    info = {"source": "compose:idefics3", "text_model": str(text_dir),
            "architecture": type(model).__name__, "dtype": dtype,
            "pretrained": ["text_model", "lm_head"], "random_init": ["vision_model", "connector"],
            "n_parameters": n, "image_size": size, "image_seq_len": image_seq_len, "seed": seed}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        proc.save_pretrained(tmp)
        (tmp / "materialized.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
