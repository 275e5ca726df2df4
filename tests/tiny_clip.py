"""A tiny stand-in for ComfyUI's umT5-XXL CLIP (what Load CLIP with type 'wan' returns), built on CPU in a second.

ComfyUI's own classes end to end: `comfy.sd.CLIP` around `comfy.text_encoders.wan.WanT5Tokenizer` (a
SentencePiece model trained here on the given texts, passed as the single-file `spiece_model` entry) and a
`WanT5Model` twin whose umT5 has a tiny config instead of umt5_config_xxl.json (same classes: comfy's T5 with
attention masks and padding zeroed, 512-token minimum). Random weights from a seed. Test-only; the server
tests copy this file into their test node pack.
"""
import io

import torch

TINY_UMT5 = {"d_ff": 32, "d_kv": 8, "d_model": 64, "dense_act_fn": "gelu_pytorch_tanh", "eos_token_id": 1,
             "is_gated_act": True, "layer_norm_epsilon": 1e-6, "model_type": "umt5", "num_heads": 2, "num_layers": 2,
             "pad_token_id": 0, "relative_attention_num_buckets": 8, "vocab_size": 128}


def spiece_model(texts: list, vocab_size: int) -> bytes:
    """A SentencePiece model over `texts` with umT5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts * 4), model_writer=out, vocab_size=vocab_size,
                                             model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1,
                                             unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def tiny_umt5_clip(texts: list, width: int = 64, seed: int = 0):
    """A ComfyUI CLIP like Load CLIP (type 'wan') returns, with a tiny random umT5 of `width` channels."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.t5
    import comfy.text_encoders.wan
    config = {**TINY_UMT5, "d_model": width}

    class TinyUMT5Model(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=config, dtype=dtype,
                             special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, zero_out_masked=True, model_options=model_options)

    class TinyWanT5Model(comfy.sd1_clip.SD1ClipModel):     # comfy.text_encoders.wan.WanT5Model with the tiny umT5
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, model_options=model_options, name="umt5xxl",
                             clip_model=TinyUMT5Model)

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.wan.WanT5Tokenizer, TinyWanT5Model)
    tokenizer_data = {"spiece_model": spiece_model(texts, config["vocab_size"])}
    clip = comfy.sd.CLIP(target, tokenizer_data=tokenizer_data, model_options={"dtype": torch.float32})
    g = torch.Generator().manual_seed(seed)
    prefix = "umt5xxl.transformer."                  # the single-file umT5's keys start after it
    weights = {k[len(prefix):]: (torch.ones_like(v) if "layer_norm" in k else torch.randn(v.shape, generator=g) * 0.5)
               for k, v in clip.cond_stage_model.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = clip.load_sd(weights)
    assert not unexpected and not [k for k in missing if k.startswith(prefix)], (missing, unexpected)
    return clip
