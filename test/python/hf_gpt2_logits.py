#!/usr/bin/env python3
"""Logits of a Hugging Face GPT-2 export, as an independent check of Tessera's HF layout.

Usage (run with /usr/bin/python3, which has torch):
    hf_gpt2_logits.py DIR '[[1, 2, 3], [4, 5, 6]]'          # token ids on argv
    echo '{"dir": DIR, "tokens": [[1, 2, 3]]}' | hf_gpt2_logits.py   # or JSON on stdin
    options: --impl auto|transformers|reference   (default auto)

Prints one JSON object: {"impl": ..., "torch": ..., "shape": [B, T, V], "logits": [[[...]]]}.

With `transformers` importable (impl auto/transformers) it uses GPT2LMHeadModel.from_pretrained.
Otherwise it runs its own implementation of HF's GPT-2 forward that reads model.safetensors
with the standard library and uses exactly HF's tensor names and layouts (Conv1D: y = x @ W + b,
W stored [in, out]) and the config.json fields, so it checks the export independently of
Tessera's own code.
"""
import json
import math
import struct
import sys

import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} exceeds file size")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    end_max = 0
    for name, e in header.items():
        if e["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {e['dtype']} unsupported")
        b, end = e["data_offsets"]
        numel = math.prod(e["shape"])
        if end - b != 4 * numel or end > len(data):
            raise ValueError(f"{name}: bad data_offsets {e['data_offsets']}")
        end_max = max(end_max, end)
        t = torch.frombuffer(bytearray(data[b:end]), dtype=torch.float32) if numel else torch.zeros(0)
        tensors[name] = t.reshape(e["shape"])
    if end_max != len(data):
        raise ValueError(f"{path}: {len(data) - end_max} bytes not covered by tensors")
    return meta, tensors


def reference_logits(d, tokens):
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"], cfg
    assert cfg["activation_function"] == "gelu_new", cfg["activation_function"]
    assert cfg.get("tie_word_embeddings", True) and cfg.get("scale_attn_weights", True)
    assert not cfg.get("scale_attn_by_inverse_layer_idx", False)
    assert cfg.get("n_inner") is None
    meta, w = read_safetensors(f"{d}/model.safetensors")
    assert meta.get("format") == "pt", meta
    C, NH, L, eps = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["layer_norm_epsilon"]
    V, NP = cfg["vocab_size"], cfg["n_positions"]
    hs = C // NH
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    for i in range(L):
        for k in ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                  "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias"]:
            expected.add(f"transformer.h.{i}.{k}")
    assert set(w) == expected, sorted(set(w) ^ expected)
    assert tuple(w["transformer.wte.weight"].shape) == (V, C) and tuple(w["transformer.wpe.weight"].shape) == (NP, C)

    def conv1d(x, name):  # HF Conv1D: weight [nx, nf], y = x @ W + b
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (C,), w[name + ".weight"], w[name + ".bias"], eps)

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    idx = torch.tensor(tokens, dtype=torch.long)
    B, T = idx.shape
    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][torch.arange(T)]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(L):
        p = f"transformer.h.{i}."
        a = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = a.split(C, dim=2)
        q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + conv1d(y, p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ w["transformer.wte.weight"].T  # tied lm_head


def transformers_logits(d, tokens):
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    return model(torch.tensor(tokens, dtype=torch.long)).logits


def main():
    args = sys.argv[1:]
    impl = "auto"
    if "--impl" in args:
        i = args.index("--impl")
        impl = args[i + 1]
        del args[i:i + 2]
    if args:
        d, tokens = args[0], json.loads(args[1])
    else:
        req = json.load(sys.stdin)
        d, tokens = req["dir"], req["tokens"]
    if impl == "auto":
        try:
            import transformers  # noqa: F401
            impl = "transformers"
        except ImportError:
            impl = "reference"
    torch.set_grad_enabled(False)
    logits = transformers_logits(d, tokens) if impl == "transformers" else reference_logits(d, tokens)
    sys.stderr.write(f"hf_gpt2_logits: using {impl} implementation (torch {torch.__version__})\n")
    json.dump({"impl": impl, "torch": torch.__version__, "shape": list(logits.shape),
               "logits": logits.double().tolist()}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
