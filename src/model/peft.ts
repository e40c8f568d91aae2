/**
 * LoRA adapters (lora.ts) in Hugging Face PEFT's on-disk layout, and merged exports.
 *
 * PEFT's `save_pretrained` (documented at https://huggingface.co/docs/peft/developer_guides/checkpoint,
 * names as `get_peft_model_state_dict` writes them, adapter name "default" stripped) gives a
 * directory of
 *   adapter_model.safetensors   base_model.model.<module path>.lora_A.weight  [r, in]
 *                               base_model.model.<module path>.lora_B.weight  [out, r]
 *   adapter_config.json         peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha,
 *                               target_modules, base_model_name_or_path, fan_in_fan_out, ...
 * with <module path> the module's name in the transformers model:
 *   Llama  model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.mlp.{gate,up,down}_proj
 *   GPT-2  transformer.h.{i}.attn.c_attn, transformer.h.{i}.attn.c_proj,
 *          transformer.h.{i}.mlp.c_fc, transformer.h.{i}.mlp.c_proj
 * GPT-2's projections are Conv1D (weight [in, out]); PEFT's lora_A/lora_B are nn.Linear either
 * way, so the adapter shapes are the same [r, in] and [out, r]; fan_in_fan_out: true tells PEFT to
 * transpose B·A when it merges into a Conv1D weight.
 *
 * The merged export folds (alpha/r)·B·A into the base weights and writes an ordinary Hugging Face
 * model directory (hf.ts for GPT-2, hf-llama.ts for Llama). Every write is atomic
 * (writeDirAtomic); loading checks the config and every tensor's name, dtype and shape before
 * any adapter memory is allocated.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { CorruptFileError, InvalidInputError, MismatchError } from '../util/errors.js';
import { writeDirAtomic, writeTextFile } from './checkpoint.js';
import { exportHF } from './hf.js';
import { exportLlamaHF } from './hf-llama.js';
import { readJsonFile } from './json-file.js';
import { LORA_MODULES, LoraAdapter, type AnyModelConfig, type LoraArch } from './lora.js';
import { SafetensorsReader, writeSafetensors } from './safetensors.js';

export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_FILES = [PEFT_WEIGHTS_FILE, PEFT_CONFIG_FILE, 'README.md'] as const;
const MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024;

/** The transformers module path of (layer, module). */
export function peftModulePath(arch: LoraArch, layer: number, module: string): string {
  if (arch === 'llama') {
    const attn = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(module);
    if (!attn && !['gate_proj', 'up_proj', 'down_proj'].includes(module))
      throw new InvalidInputError(`no Llama module "${module}"`);
    return `model.layers.${layer}.${attn ? 'self_attn' : 'mlp'}.${module}`;
  }
  const paths: Record<string, string> = {
    c_attn: 'attn.c_attn',
    'attn.c_proj': 'attn.c_proj',
    c_fc: 'mlp.c_fc',
    'mlp.c_proj': 'mlp.c_proj',
  };
  if (!paths[module]) throw new InvalidInputError(`no GPT-2 module "${module}"`);
  return `transformer.h.${layer}.${paths[module]}`;
}

/** PEFT's state_dict name of the adapter's A or B at (layer, module). */
export function peftTensorName(arch: LoraArch, layer: number, module: string, which: 'A' | 'B'): string {
  return `base_model.model.${peftModulePath(arch, layer, module)}.lora_${which}.weight`;
}

/** target_modules as PEFT matches them (a key matches when it ends with "." + target). */
function peftTargets(a: LoraAdapter): string[] {
  return [...a.config.targets];
}

/** The adapter_config.json PEFT writes for this adapter (LoraConfig's fields, defaults elsewhere). */
export function peftAdapterConfig(a: LoraAdapter, baseModelNameOrPath: string | null): Record<string, unknown> {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseModelNameOrPath,
    revision: null,
    inference_mode: true,
    r: a.config.r,
    lora_alpha: a.config.alpha,
    lora_dropout: 0,
    target_modules: peftTargets(a),
    fan_in_fan_out: a.arch === 'gpt2',
    bias: 'none',
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
  };
}

/** Every tensor of the adapter under its PEFT name, in buffer order. */
export function peftTensors(a: LoraAdapter): { name: string; shape: number[]; data: Float32Array }[] {
  return a.sites.flatMap((s) => {
    const t = a.tensors(s.layer, s.module)!;
    return [
      { name: peftTensorName(a.arch, s.layer, s.module, 'A'), shape: [...s.a.shape], data: t.A },
      { name: peftTensorName(a.arch, s.layer, s.module, 'B'), shape: [...s.b.shape], data: t.B },
    ];
  });
}

/** Write `a` as a PEFT adapter directory (atomically replacing an earlier one). */
export async function exportPeft(
  dir: string,
  a: LoraAdapter,
  opts: { baseModelNameOrPath?: string | null } = {},
): Promise<{ files: string[] }> {
  const cfg = peftAdapterConfig(a, opts.baseModelNameOrPath ?? null);
  const tensors = peftTensors(a);
  const files = await writeDirAtomic(dir, new Set(PEFT_FILES), async (tmp) => {
    await writeSafetensors(join(tmp, PEFT_WEIGHTS_FILE), tensors, { format: 'pt' });
    await writeTextFile(join(tmp, PEFT_CONFIG_FILE), JSON.stringify(cfg, null, 2) + '\n');
    return [PEFT_WEIGHTS_FILE, PEFT_CONFIG_FILE];
  });
  return { files };
}

const PeftConfigSchema = z
  .object({
    peft_type: z.literal('LORA'),
    r: z.number().int().min(1).max(4096),
    lora_alpha: z.number().positive().max(1e6),
    target_modules: z.union([z.array(z.string().max(64)).min(1).max(32), z.string().max(256)]),
    fan_in_fan_out: z.boolean().optional(),
    bias: z.string().optional(),
    use_rslora: z.boolean().optional(),
    use_dora: z.boolean().optional(),
    rank_pattern: z.record(z.string(), z.unknown()).optional(),
    alpha_pattern: z.record(z.string(), z.unknown()).optional(),
    layers_to_transform: z.unknown().optional(),
    modules_to_save: z.unknown().optional(),
  })
  .passthrough();

/**
 * Read a PEFT LoRA directory for `model`: the options Tessera does not implement (DoRA, rsLoRA,
 * per-module ranks, trained biases, a regex target, a subset of layers, extra saved modules) are
 * refused by name, and every tensor must be present with PEFT's name, F32 and the right shape.
 */
export async function loadPeft(dir: string, model: AnyModelConfig): Promise<LoraAdapter> {
  const cfgPath = join(dir, PEFT_CONFIG_FILE);
  const r = PeftConfigSchema.safeParse(await readJsonFile(cfgPath, MAX_ADAPTER_CONFIG_BYTES));
  if (!r.success)
    throw new CorruptFileError(
      cfgPath,
      `not a PEFT LoRA adapter config: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  const c = r.data;
  const refuse = (what: string) => {
    throw new InvalidInputError(`${cfgPath}: ${what} is not supported`);
  };
  if (typeof c.target_modules === 'string') refuse('a regular-expression target_modules');
  if (c.use_dora) refuse('use_dora');
  if (c.use_rslora) refuse('use_rslora');
  if (c.bias !== undefined && c.bias !== 'none') refuse(`bias "${c.bias}"`);
  if (c.rank_pattern && Object.keys(c.rank_pattern).length) refuse('rank_pattern');
  if (c.alpha_pattern && Object.keys(c.alpha_pattern).length) refuse('alpha_pattern');
  if (c.layers_to_transform !== undefined && c.layers_to_transform !== null) refuse('layers_to_transform');
  if (c.modules_to_save !== undefined && c.modules_to_save !== null) refuse('modules_to_save');
  if (c.fan_in_fan_out !== undefined && c.fan_in_fan_out !== (model.arch === 'gpt2'))
    throw new MismatchError(`${cfgPath}: fan_in_fan_out ${c.fan_in_fan_out} does not fit a ${model.arch} model`);
  const known: readonly string[] = LORA_MODULES[model.arch];
  const targets = (c.target_modules as string[]).map((t) => {
    if (model.arch === 'gpt2') {
      const m = /^(?:attn\.c_attn|mlp\.c_fc)$/.exec(t);
      if (m) return t.split('.')[1];
    }
    if (t === 'c_proj' || known.includes(t)) return t;
    throw new InvalidInputError(`${cfgPath}: target module "${t}" is not one Tessera adapts (${known.join(', ')})`);
  });
  const a = new LoraAdapter(model, { r: c.r, alpha: c.lora_alpha, targets });
  const path = join(dir, PEFT_WEIGHTS_FILE);
  const reader = await SafetensorsReader.open(path);
  try {
    const want = peftTensors(a);
    const names = new Set(want.map((t) => t.name));
    const extra = reader.header.tensors.filter((t) => !names.has(t.name)).map((t) => t.name);
    if (extra.length)
      throw new MismatchError(
        `${path}: tensor(s) the adapter config does not account for: ${extra.slice(0, 5).join(', ')}`,
      );
    for (const t of want) {
      const info = reader.header.byName.get(t.name);
      if (!info) throw new CorruptFileError(path, `missing tensor "${t.name}"`);
      if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16')
        throw new CorruptFileError(path, `tensor "${t.name}" has dtype ${info.dtype}; expected F32, F16 or BF16`);
      if (info.shape.join(',') !== t.shape.join(','))
        throw new MismatchError(`${path}: tensor "${t.name}" has shape [${info.shape}], expected [${t.shape}]`);
    }
    for (const t of want) await reader.readInto(t.name, t.data);
  } finally {
    await reader.close();
  }
  return a;
}

export type MergedExportInput =
  | {
      arch: 'gpt2';
      adapter: LoraAdapter;
      params: Float32Array;
      tokenizerJson: object;
      eotId: number;
    }
  | {
      arch: 'llama';
      adapter: LoraAdapter;
      params: Float32Array;
      tokenizerJson?: string | Uint8Array;
      tokenizerConfigJson?: string | Uint8Array;
      bosTokenId?: number;
      eosTokenId?: number;
    };

/** Write base + (alpha/r)·B·A as an ordinary Hugging Face model directory (GPT-2 or Llama). */
export async function exportMergedHF(dir: string, input: MergedExportInput): Promise<{ files: string[] }> {
  const a = input.adapter;
  if (a.arch !== input.arch) throw new MismatchError(`a ${a.arch} adapter cannot be merged into a ${input.arch} model`);
  const merged = a.merge(input.params);
  if (input.arch === 'gpt2') {
    if (a.model.arch !== 'gpt2') throw new MismatchError('adapter/model architecture mismatch');
    return exportHF(dir, {
      config: a.model.config,
      params: merged,
      tokenizerJson: input.tokenizerJson,
      eotId: input.eotId,
    });
  }
  if (a.model.arch !== 'llama') throw new MismatchError('adapter/model architecture mismatch');
  return exportLlamaHF(dir, {
    config: a.model.config,
    params: merged,
    ...(input.tokenizerJson !== undefined ? { tokenizerJson: input.tokenizerJson } : {}),
    ...(input.tokenizerConfigJson !== undefined ? { tokenizerConfigJson: input.tokenizerConfigJson } : {}),
    ...(input.bosTokenId !== undefined ? { bosTokenId: input.bosTokenId } : {}),
    ...(input.eosTokenId !== undefined ? { eosTokenId: input.eosTokenId } : {}),
  });
}
