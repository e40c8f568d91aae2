/**
 * `tessera pipeline --procs`: the local run's stage peers, each a `tessera stage` process of its
 * own on 127.0.0.1. In one process a stage of a real-sized model (GPT-2 small: minutes of
 * synchronous compute per step under load) blocks every other stage's streams, and their calls
 * time out; in processes of their own each stage computes while the others answer. Spawns the
 * S processes (stage i pinned, no rebalancing, no throughput probe: the driver routes by stage
 * alone), waits for each one's `serving` line and returns their addresses for the driver.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { TESSERA_BIN } from './launch.js';
import { TesseraError } from '../util/errors.js';

export class StageProcError extends TesseraError {
  constructor(message: string) {
    super('STAGE_PROC', message);
  }
}

/** The one line of `tessera stage --json` this reads (the rest is ignored). */
const Serving = z
  .object({
    event: z.literal('serving'),
    stage: z.number().int().min(0).max(63),
    peer: z.string().min(8).max(128),
    addrs: z.array(z.string().max(512)).min(1).max(16),
    params: z.number().int().min(0),
  })
  .passthrough();

export interface StageProc {
  stage: number;
  child: ChildProcess;
  peer: string;
  addrs: string[];
  params: number;
}

export interface StageProcs {
  procs: StageProc[];
  /** Every stage process's addresses (with /p2p/<id>): the driver's bootstrap. */
  bootstrap: string[];
  /** SIGTERM each process, SIGKILL after `graceMs`; resolves when all have exited. */
  stop(graceMs?: number): Promise<void>;
}

const MAX_LINE = 1 << 16;

/**
 * Starts `stages` `tessera stage` processes for the manifest `runFile` (data directories under
 * `root`); resolves once every one serves its stage, or rejects (and stops them) when one exits
 * first, or on `signal`.
 */
export async function startStageProcs(o: {
  runFile: string;
  root: string;
  stages: number;
  signal: AbortSignal;
  /** Each process's stderr lines (progress, warnings), prefixed by the caller. */
  onStderr?: (stage: number, line: string) => void;
  env?: NodeJS.ProcessEnv;
}): Promise<StageProcs> {
  const children: ChildProcess[] = [];
  const stop = async (graceMs = 10_000) => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
            c.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            c.kill('SIGTERM');
          }),
      ),
    );
  };
  const started = Array.from({ length: o.stages }, (_, i) => {
    const dataDir = join(o.root, `stage-${i}`);
    mkdirSync(dataDir, { recursive: true });
    const child = spawn(
      process.execPath,
      [
        TESSERA_BIN,
        'stage',
        '--run',
        o.runFile,
        '--data-dir',
        dataDir,
        '--stage',
        String(i),
        '--throughput',
        '1',
        '--no-rebalance',
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } },
    );
    children.push(child);
    return new Promise<StageProc>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        let k;
        while ((k = out.indexOf('\n')) >= 0) {
          const line = out.slice(0, k);
          out = out.slice(k + 1);
          let parsed: unknown;
          try {
            parsed = JSON.parse(line);
          } catch {
            continue;
          }
          const s = Serving.safeParse(parsed);
          if (s.success && s.data.stage === i)
            resolve({ stage: i, child, peer: s.data.peer, addrs: s.data.addrs, params: s.data.params });
        }
        if (out.length > MAX_LINE) out = '';
      });
      let partial = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err = (err + d).slice(-4000);
        partial += d;
        let k;
        while ((k = partial.indexOf('\n')) >= 0) {
          o.onStderr?.(i, partial.slice(0, k));
          partial = partial.slice(k + 1);
        }
        if (partial.length > MAX_LINE) partial = '';
      });
      child.once('exit', (code, sig) =>
        reject(new StageProcError(`stage ${i}'s process exited (${code ?? sig}) before serving: ${err.slice(-1500)}`)),
      );
      child.once('error', (e) => reject(new StageProcError(`stage ${i}'s process: ${e.message}`)));
      o.signal.addEventListener('abort', () => reject(new StageProcError(`stage ${i}: ${String(o.signal.reason)}`)), {
        once: true,
      });
    });
  });
  try {
    const procs = await Promise.all(started);
    return { procs, bootstrap: procs.flatMap((p) => p.addrs.filter((a) => a.includes('/p2p/'))), stop };
  } catch (e) {
    await stop(2000);
    throw e;
  }
}
