/**
 * `tessera attack`: run one of the red-team attacks (src/redteam/attacks.ts) against your own
 * live run, to see its defence hold: the honest peers' round lines should keep agreeing, and
 * their logs name each rejected input. Bounded in messages and time; it only dials the
 * bootstrap peers it is given.
 */
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { controlTopic, createHost, serveBulk } from '../net/index.js';
import { decodeManifest } from '../swarm/manifest.js';
import { ATTACK_NAMES, attackByName, sender, watchRun, type AttackContext } from '../redteam/attacks.js';
import { sybilFlood } from '../redteam/sybil.js';
import { collect, int } from './args.js';
import { result, say } from './output.js';
import { InvalidInputError } from '../util/errors.js';

export function register(program: Command): void {
  program
    .command('attack')
    .description(`attack your own live run, to watch its defences: ${[...ATTACK_NAMES, 'sybil'].join(' | ')}`)
    .argument('<kind>', 'the attack (docs/THREATS.md says what each tries and what stops it)')
    .requiredOption('--run <file>', 'the run manifest')
    .requiredOption('--bootstrap <ma...>', 'peers of the run to connect to (multiaddr with /p2p/<id>)', collect)
    .option(
      '--data-dir <dir>',
      "the attacker's identity (a member's data directory attacks as that member)",
      'runs/attack',
    )
    .option('--messages <n>', 'messages to send', int(1, 100_000), 200)
    .option('--rate <n>', 'messages per second', int(1, 10_000), 50)
    .option('--wait <ms>', 'how long to watch the run before attacking (to learn its round)', int(0, 600_000), 5000)
    .option('--identities <n>', 'sybil: fresh identities, one libp2p host each', int(1, 256), 20)
    .option('--seconds <s>', 'stop after this long, whatever is left of --messages', int(1, 86_400), 600)
    .option('--json', 'print the result as JSON', false)
    .action(
      async (
        kind: string,
        o: {
          run: string;
          bootstrap: string[];
          dataDir: string;
          messages: number;
          rate: number;
          wait: number;
          identities: number;
          seconds: number;
          json: boolean;
        },
      ) => {
        const manifest = decodeManifest(readFileSync(o.run, 'utf8'));
        if (o.bootstrap.length === 0) throw new InvalidInputError('--bootstrap needs at least one peer of the run');
        if (kind === 'sybil') {
          say(o, `attack sybil: ${o.identities} fresh identities join, vote and claim updates; watching ${o.wait} ms`);
          const r = await sybilFlood({
            manifest,
            bootstrap: o.bootstrap,
            dataDir: o.dataDir,
            identities: o.identities,
            messages: o.messages,
            rate: o.rate,
            waitMs: o.wait,
            maxMs: o.seconds * 1000,
          });
          result(
            o,
            { attack: kind, ...r },
            `attack sybil: ${r.identities.length} identities sent ${r.sent} messages (${r.failed} not published) in ${r.seconds.toFixed(1)} s to ${r.recipients} recipients, over rounds ${r.rounds.join(',')}. The honest peers' round lines show roster (with probationers) and voters.`,
          );
          return;
        }
        const attack = attackByName(kind);
        const host = await createHost({
          dataDir: o.dataDir,
          bootstrap: o.bootstrap,
          logger: pino({ level: 'silent' }),
        });
        try {
          const topic = controlTopic(manifest.runId);
          const ctx: AttackContext = {
            host,
            topic,
            manifest,
            served: new Map(),
            send: sender(host, topic),
            view: { round: 0, baseHash: null, members: new Set() },
          };
          await serveBulk(host, (h) => ctx.served.get(h));
          watchRun(host, topic, ctx.view);
          host.node.services.pubsub.subscribe(topic);
          say(o, `attack ${kind} as ${host.peerId}: ${attack.what}; watching the run for ${o.wait} ms`);
          await new Promise((r) => setTimeout(r, o.wait));
          const t0 = Date.now();
          let sent = 0,
            reached = 0,
            failed = 0;
          for (let i = 0; i < o.messages; i++) {
            try {
              reached += await attack.message(ctx, i);
              sent++;
            } catch {
              failed++; // no recipients (gossipsub refuses), or a peer dropped us: keep going
            }
            const due = t0 + ((i + 1) * 1000) / o.rate;
            if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
          }
          const out = {
            attack: kind,
            attacker: host.peerId,
            sent,
            failed,
            recipients: reached,
            round: ctx.view.round,
            seconds: (Date.now() - t0) / 1000,
          };
          result(
            o,
            out,
            `attack ${kind}: sent ${sent} messages (${failed} not published) in ${out.seconds.toFixed(1)} s to ${reached} recipients in all; the run was at round ${ctx.view.round}. Check the honest peers' round lines and their logs.`,
          );
        } finally {
          await host.stop().catch(() => undefined);
        }
      },
    );
}
