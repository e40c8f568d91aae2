#!/usr/bin/env python3
"""Tiny random-weight Hugging Face checkpoints (GPT-2 and Llama) and their reference logits.

Writes, into --out DIR, what a Hugging Face model directory holds:
    config.json                         a GPT2Config or LlamaConfig (GQA, rope_scaling, ...)
    model.safetensors                   or, with --shards N > 1,
    model-0000i-of-0000N.safetensors +  model.safetensors.index.json
and, for the tests,
    logits.json                         {"tokens": [[...]], "shape": [B, T, V], "logits": [...flat...]}

Only torch and the standard library are used: no `transformers`, no `safetensors` package (the
safetensors format is written by hand: 8-byte little-endian header length, JSON header, raw
little-endian bytes; F32, F16 and BF16). The logits come from an independent float64 PyTorch
implementation of each architecture written from the published descriptions (GPT-2: Radford et
al. 2019 and HF's Conv1D layout; Llama: Touvron et al. 2023 / Llama 3 with HF's rotate_half RoPE,
repeat_kv GQA and rope_scaling), run on the weights exactly as stored (after rounding to the
stored dtype), so the comparison isolates the importer and Tessera's forward pass.

With --tokenizer (llama), also a tokenizer.json: a 64-token Llama-2-style (SentencePiece-layout)
BPE written by hand: "▁" word marks, <unk>/<s>/</s>, lowercase letters, "." and "," and 32
merges; its post-processor puts <s> before a text, as Llama 2's does.

Usage (Debian's python3-torch is at /usr/bin/python3):
    /usr/bin/python3 scripts/hf_fixtures.py --arch llama --out DIR [--dtype f32|f16|bf16]
        [--shards N] [--seed S] [--tied] [--rope llama3|linear|none] [--tokens '[[1,2,3]]']
        [--tokenizer]
    /usr/bin/python3 scripts/hf_fixtures.py --arch gpt2 --out DIR [--bare-names] ...
"""
import argparse
import json
import math
import os
import struct

import torch

DTYPES = {"f32": (torch.float32, "F32"), "f16": (torch.float16, "F16"), "bf16": (torch.bfloat16, "BF16")}


def tensor_bytes(t, code):
    t = t.contiguous().flatten()
    if code == "F32":
        return struct.pack("<%df" % t.numel(), *t.tolist())
    # F16 and BF16: reinterpret the 16-bit patterns (same element size) and pack them.
    bits = t.view(torch.int16).tolist()
    return struct.pack("<%dh" % len(bits), *bits)


def write_safetensors(path, tensors, code):
    """tensors: list of (name, tensor already in the storage dtype)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors:
        b = tensor_bytes(t, code)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def save(out, tensors, code, shards):
    if shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), tensors, code)
        return
    per = math.ceil(len(tensors) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = tensors[s * per:(s + 1) * per]
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        total += write_safetensors(os.path.join(out, fname), part, code)
        for name, _ in part:
            weight_map[name] = fname
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# ------------------------------------------------------------------------------------------
# Llama


def llama_config(args):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 50000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": bool(args.tied),
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[args.dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if args.rope == "llama3":
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    elif args.rope == "linear":
        cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    else:
        cfg["rope_scaling"] = None
    return cfg


def llama_weights(cfg, gen):
    C, H, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    NH, KV, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    g = lambda n: 1 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    w = [("model.embed_tokens.weight", r(V, C))]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        w += [(p + "input_layernorm.weight", g(C)),
              (p + "self_attn.q_proj.weight", r(NH * hd, C)),
              (p + "self_attn.k_proj.weight", r(KV * hd, C)),
              (p + "self_attn.v_proj.weight", r(KV * hd, C)),
              (p + "self_attn.o_proj.weight", r(C, NH * hd)),
              (p + "post_attention_layernorm.weight", g(C)),
              (p + "mlp.gate_proj.weight", r(H, C)),
              (p + "mlp.up_proj.weight", r(H, C)),
              (p + "mlp.down_proj.weight", r(C, H))]
    w.append(("model.norm.weight", g(C)))
    if not cfg["tie_word_embeddings"]:
        w.append(("lm_head.weight", r(V, C)))
    return w


LLAMA_MERGES = [
    "▁ t", "h e", "▁t he", "i n", "e r", "a n", "r e", "o n", "▁ a", "e n", "a t", "e d", "n d", "▁ s",
    "▁ w", "o r", "e s", "i s", "i t", "o u", "a r", "▁ c", "▁ o", "▁ b", "▁ f", "▁ m", "l l", "▁a nd",
    "in g", "▁ i", "o f", "▁ of",
]


def llama_tokenizer(vocab_size):
    """A Llama-2-style tokenizer.json (the layout HF's LlamaTokenizerFast saves) of vocab_size ids."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz.,":
        vocab[ch] = len(vocab)
    for m in LLAMA_MERGES:
        a, b = m.split(" ")
        assert a in vocab and b in vocab, m
        vocab[a + b] = len(vocab)
    assert len(vocab) == vocab_size, len(vocab)
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False,  # noqa: E731
                            "rstrip": False, "normalized": False, "special": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": LLAMA_MERGES},
    }


def llama_inv_freq(cfg):
    """RoPE frequencies from rope_theta, with Llama-3 or linear scaling (HF rope_init_fns)."""
    hd = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    s = cfg.get("rope_scaling")
    if not s:
        return inv
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / s["factor"]
    assert kind == "llama3", kind
    factor, lo, hi, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(medium, smoothed, out)


def llama_logits(cfg, w, tokens):
    C, L, eps = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    NH, KV, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    idx = torch.tensor(tokens, dtype=torch.long)
    B, T = idx.shape

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w[name]

    def lin(x, name):  # nn.Linear, no bias: y = x W^T
        return x @ w[name].T

    def rotate_half(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat((-x2, x1), dim=-1)

    freqs = torch.outer(torch.arange(T, dtype=torch.float64), llama_inv_freq(cfg))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = w["model.embed_tokens.weight"][idx]
    for i in range(L):
        p = "model.layers.%d." % i
        h = rms(x, p + "input_layernorm.weight")
        q = lin(h, p + "self_attn.q_proj.weight").view(B, T, NH, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj.weight").view(B, T, KV, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj.weight").view(B, T, KV, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(NH // KV, dim=1), v.repeat_interleave(NH // KV, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, NH * hd)
        x = x + lin(y, p + "self_attn.o_proj.weight")
        h = rms(x, p + "post_attention_layernorm.weight")
        gate = lin(h, p + "mlp.gate_proj.weight")
        x = x + lin(torch.nn.functional.silu(gate) * lin(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    x = rms(x, "model.norm.weight")
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


# ------------------------------------------------------------------------------------------
# GPT-2


def gpt2_config(args):
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 64,
        "n_positions": 16,
        "n_ctx": 16,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[args.dtype],
    }


def gpt2_weights(cfg, gen, prefix):
    C, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    g = lambda n: 1 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    w = [(prefix + "wte.weight", r(V, C)), (prefix + "wpe.weight", r(P, C))]
    for i in range(cfg["n_layer"]):
        p = prefix + "h.%d." % i
        w += [(p + "ln_1.weight", g(C)), (p + "ln_1.bias", r(C)),
              (p + "attn.c_attn.weight", r(C, 3 * C)), (p + "attn.c_attn.bias", r(3 * C)),
              (p + "attn.c_proj.weight", r(C, C)), (p + "attn.c_proj.bias", r(C)),
              (p + "ln_2.weight", g(C)), (p + "ln_2.bias", r(C)),
              (p + "mlp.c_fc.weight", r(C, 4 * C)), (p + "mlp.c_fc.bias", r(4 * C)),
              (p + "mlp.c_proj.weight", r(4 * C, C)), (p + "mlp.c_proj.bias", r(C))]
    w += [(prefix + "ln_f.weight", g(C)), (prefix + "ln_f.bias", r(C))]
    return w


def gpt2_logits(cfg, w, tokens, prefix):
    C, NH, L, eps = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["layer_norm_epsilon"]
    hs = C // NH
    idx = torch.tensor(tokens, dtype=torch.long)
    B, T = idx.shape

    def conv1d(x, name):  # HF Conv1D: weight [in, out], y = x W + b
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = w[prefix + "wte.weight"][idx] + w[prefix + "wpe.weight"][:T]
    for i in range(L):
        p = prefix + "h.%d." % i
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(hs)).masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + conv1d((att @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, prefix + "ln_f") @ w[prefix + "wte.weight"].T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["llama", "gpt2"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=list(DTYPES), default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tied", action="store_true", help="llama: tie lm_head to the embedding")
    ap.add_argument("--rope", choices=["llama3", "linear", "none"], default="llama3")
    ap.add_argument("--bare-names", action="store_true",
                    help="gpt2: names without 'transformer.' plus attn.bias mask buffers, as the original hub files")
    ap.add_argument("--tokenizer", action="store_true", help="llama: also write a Llama-2-style tokenizer.json")
    ap.add_argument("--tokens", default="[[1, 5, 9, 2, 33, 63, 0, 17, 4, 4, 40, 11], [7, 7, 3, 62, 21, 8, 30, 1, 9, 12, 5, 2]]")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(args.seed)
    tdtype, code = DTYPES[args.dtype]
    tokens = json.loads(args.tokens)

    if args.arch == "llama":
        cfg = llama_config(args)
        master = llama_weights(cfg, gen)
    else:
        cfg = gpt2_config(args)
        prefix = "" if args.bare_names else "transformer."
        master = gpt2_weights(cfg, gen, prefix)
    stored = [(n, t.to(tdtype)) for n, t in master]
    # The reference runs in float64 on exactly the stored values.
    w = {n: t.to(torch.float64) for n, t in stored}
    if args.arch == "llama":
        logits = llama_logits(cfg, w, tokens)
    else:
        logits = gpt2_logits(cfg, w, tokens, prefix)
        if args.bare_names:
            P = cfg["n_positions"]
            mask = torch.tril(torch.ones(P, P, dtype=torch.float64)).view(1, 1, P, P).to(tdtype)
            stored += [("h.%d.attn.bias" % i, mask) for i in range(cfg["n_layer"])]

    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save(args.out, stored, code, args.shards)
    if args.tokenizer and args.arch == "llama":
        with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(llama_tokenizer(cfg["vocab_size"]), f, ensure_ascii=False, indent=1)
    with open(os.path.join(args.out, "logits.json"), "w") as f:
        json.dump({"tokens": tokens, "shape": list(logits.shape), "logits": logits.flatten().tolist(),
                   "torch": torch.__version__}, f)


if __name__ == "__main__":
    main()
