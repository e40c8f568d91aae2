/** `tessera stage`: serve one stage of a pipeline run (protocol learning) until stopped. */
import type { Command } from 'commander';
import { int, num, collect, oneOf } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { readPipeManifest, runStagePeer } from '../pipeline/run.js';
import { splitStages } from '../model/pipeline-stage.js';
import { WebGpuDevice } from '../kernels/webgpu/device.js';
import { WebGpuUnavailableError } from '../util/errors.js';

export function register(program: Command): void {
  program
    .command('stage')
    .description(
      "serve one stage of a pipeline run: hold only that slice of the model, answer the driver's forward/backward calls",
    )
    .requiredOption('--run <file>', 'pipeline manifest (`tessera pipeline --write-run`)')
    .requiredOption('--data-dir <dir>', 'identity key and IPFS store (checkpoint shares)')
    .option('--listen <ma>', 'listen multiaddr', '/ip4/127.0.0.1/tcp/0')
    .option('--bootstrap <ma...>', 'peers to connect to (multiaddr with /p2p/<id>)', collect)
    .option('--stage <i>', 'serve this stage (default: the one with the lowest total throughput)', int(0, 63))
    .option(
      '--fresh',
      'start without weights and wait for the driver to restore this stage from checkpoint shares',
      false,
    )
    .option('--throughput <tok/s>', 'announce this capacity instead of measuring it (placement reads it)', num(0, 1e12))
    .option(
      '--hysteresis <x>',
      "move to another stage only when that raises the pipeline's throughput profile by this factor",
      num(0, 100),
      0.2,
    )
    .option('--no-rebalance', 'never move to another stage once serving')
    .option(
      '--device <kind>',
      "where the stage computes: cpu | webgpu (forward, backward and AdamW on the GPU, the stage's weights, gradients and moments in device buffers; activations cross to the host for the wire) | auto (webgpu when an adapter is found)",
      oneOf('cpu', 'webgpu', 'auto'),
      'cpu',
    )
    .option('--json', 'JSON lines on stdout', false)
    .action(
      async (o: {
        run: string;
        dataDir: string;
        listen: string;
        bootstrap?: string[];
        stage?: number;
        fresh: boolean;
        throughput?: number;
        hysteresis: number;
        rebalance: boolean;
        device: 'cpu' | 'webgpu' | 'auto';
        json: boolean;
      }) => {
        const { manifest, runId } = readPipeManifest(o.run, '--run');
        const specs = splitStages(manifest.model, manifest.stages);
        let device: WebGpuDevice | undefined;
        if (o.device !== 'cpu') {
          try {
            device = await WebGpuDevice.create({
              adapter: process.env.TESSERA_WEBGPU_ADAPTER === 'swiftshader' ? 'swiftshader' : 'auto',
            });
          } catch (err) {
            if (o.device !== 'auto' || !(err instanceof WebGpuUnavailableError)) throw err;
            say(o, `device auto: cpu (${err.message})`);
          }
        }
        const where = device
          ? `webgpu (${[device.adapterInfo.vendor, device.adapterInfo.description].filter((x) => x).join(' / ')})`
          : 'cpu';
        const peer = await runStagePeer({
          ...(device ? { device } : {}),
          manifest,
          runId,
          dataDir: o.dataDir,
          kernels: loadKernels({ threads: 1 }),
          listen: [o.listen],
          bootstrap: o.bootstrap ?? [],
          ...(o.stage !== undefined ? { stage: o.stage } : {}),
          fresh: o.fresh,
          ...(o.throughput !== undefined ? { throughput: o.throughput } : {}),
          hysteresis: o.rebalance ? o.hysteresis : null,
          onMove: (mv) => {
            say(
              o,
              `moved: stage ${mv.from} → ${mv.to} (layers ${specs[mv.to].l0}..${specs[mv.to].l1 - 1}); dropped stage ${mv.from}'s weights, waiting for the driver to sync this stage`,
            );
            result(
              { json: o.json },
              { event: 'moved', from: mv.from, to: mv.to, tensors: peer.server.stage.tensorNames() },
            );
          },
        });
        const spec = specs[peer.stage];
        say(
          o,
          `pipeline ${runId.slice(0, 12)}: serving stage ${peer.stage} of ${manifest.stages} (layers ${spec.l0}..${spec.l1 - 1}, ${peer.server.stage.numParams} parameters, on ${where}${peer.server.ready() ? '' : ', waiting for a restore or a sync'}) as ${peer.host.peerId}`,
        );
        result(o, {
          event: 'serving',
          runId,
          stage: peer.stage,
          peer: peer.host.peerId,
          addrs: peer.host.multiaddrs(),
          params: peer.server.stage.numParams,
          tensors: peer.server.stage.tensorNames(),
          ready: peer.server.ready(),
          device: device ? 'webgpu' : 'cpu',
          ...(device ? { adapter: device.adapterInfo } : {}),
        });
        await new Promise<void>((resolve) => {
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
        await peer.stop();
        device?.destroy();
      },
    );
}
