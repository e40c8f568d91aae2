#!/usr/bin/env python3
"""Logits of a Hugging Face base model plus a PEFT LoRA adapter, computed independently of Tessera.

Reads a model directory as scripts/hf_fixtures.py writes it (config.json + model.safetensors,
F32) and a PEFT adapter directory (adapter_config.json + adapter_model.safetensors), applies the
adapter the way PEFT's documentation and LoraLayer.get_delta_weight define it, and runs the
independent float64 forward of hf_fixtures.py (gpt2_logits / llama_logits):

    for every pair  base_model.model.<module>.lora_A.weight  A [r, in]
                    base_model.model.<module>.lora_B.weight  B [out, r]
    <module> must match target_modules as PEFT matches them (equal, or ending in "." + target),
    delta = (lora_alpha / r) * B @ A                     ([out, in])
    delta = delta.T when fan_in_fan_out (GPT-2's Conv1D stores weight as [in, out])
    <module>.weight += delta

Every module of the model that matches target_modules must have an adapter, and every adapter
tensor must name a module of the model with the right shape; otherwise the script exits non-zero.
Only torch and the standard library are used (no peft, no transformers, no safetensors package).

Usage: /usr/bin/python3 scripts/peft_reference.py --base DIR --adapter DIR --tokens '[[1,2,3]]' --out FILE
"""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_fixtures import gpt2_logits, llama_logits  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit("%s: tensor %s is %s; this reference reads F32 only" % (path, name, info["dtype"]))
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).reshape(info["shape"])
        out[name] = t.to(torch.float64)
    return out


def matches(module, targets):
    return any(module == t or module.endswith("." + t) for t in targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    with open(os.path.join(args.base, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        acfg = json.load(f)
    if acfg.get("peft_type") != "LORA":
        sys.exit("not a LoRA adapter")
    w = read_safetensors(os.path.join(args.base, "model.safetensors"))
    ad = read_safetensors(os.path.join(args.adapter, "adapter_model.safetensors"))
    targets, scale = acfg["target_modules"], acfg["lora_alpha"] / acfg["r"]
    prefix = "base_model.model."
    seen = set()
    for name in sorted(ad):
        if not name.startswith(prefix) or not (name.endswith(".lora_A.weight") or name.endswith(".lora_B.weight")):
            sys.exit("adapter tensor %s is not named as PEFT names LoRA weights" % name)
        if name.endswith(".lora_B.weight"):
            continue
        module = name[len(prefix):-len(".lora_A.weight")]
        if not matches(module, targets):
            sys.exit("adapter module %s is not in target_modules %s" % (module, targets))
        A, B = ad[name], ad[prefix + module + ".lora_B.weight"]
        if A.shape[0] != acfg["r"] or B.shape[1] != acfg["r"]:
            sys.exit("%s: rank mismatch %s %s" % (module, list(A.shape), list(B.shape)))
        delta = scale * (B @ A)
        if acfg.get("fan_in_fan_out"):
            delta = delta.T
        key = module + ".weight"
        if key not in w or list(w[key].shape) != list(delta.shape):
            sys.exit("%s: base weight %s missing or not shaped %s" % (module, key, list(delta.shape)))
        w[key] = w[key] + delta
        seen.add(module)
    for key in w:
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module and matches(module, targets) and w[key].dim() == 2 and module not in seen:
            sys.exit("module %s matches target_modules but has no adapter" % module)
    tokens = json.loads(args.tokens)
    if cfg["model_type"] == "llama":
        logits = llama_logits(cfg, w, tokens)
    else:
        prefix_m = "transformer." if any(k.startswith("transformer.") for k in w) else ""
        logits = gpt2_logits(cfg, w, tokens, prefix_m)
    with open(args.out, "w") as f:
        json.dump({"shape": list(logits.shape), "logits": logits.flatten().tolist(), "modules": sorted(seen)}, f)


if __name__ == "__main__":
    main()
