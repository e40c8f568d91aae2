/**
 * Small signed control messages over gossipsub, one topic per run: `tessera/<runId>/control`.
 *
 * Every incoming message goes through openMessage (size cap, frame, ed25519 signature,
 * sender, kind, zod schema, replay window) inside a gossipsub topic validator: a rejected
 * message is neither delivered nor forwarded, and (for topics with score parameters: a
 * SwarmNode's host sets them, host.ts controlScoring) counts as an invalid delivery against the
 * peer that sent it, so a flooder's score drops until gossipsub ignores it. Rejections are
 * logged (pino, with the reason) and counted; the node keeps running. Only messages that
 * pass reach `onMessage`.
 *
 * Bulk data never goes through here (see bulk.ts): gossip re-sends every message to many
 * peers and keeps it in caches, which is right for a few hundred bytes and wrong for tensors.
 */
import { TopicValidatorResult, type GossipsubMessage, type Message, type TopicValidatorFn } from '@libp2p/gossipsub';
import type { AbortOptions } from '@libp2p/interface';
import type { Logger } from 'pino';
import type { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import {
  DEFAULT_MAX_ENVELOPE_BYTES,
  ReplayGuard,
  nextSeq,
  openMessage,
  sealMessage,
  type OpenedMessage,
  type Schemas,
} from './envelope.js';
import { EnvelopeError, abortedError } from './errors.js';
import type { Host } from './host.js';

const RUN_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** The gossipsub topic of a run's control messages. */
export function controlTopic(runId: string): string {
  if (!RUN_ID_RE.test(runId)) throw new InvalidInputError(`invalid run id ${JSON.stringify(runId)}`);
  return `tessera/${runId}/control`;
}

export interface ControlMeta {
  topic: string;
  /** The peer that relayed the message to us (not necessarily its author: see msg.from). */
  propagationSource: string;
}

export interface ControlChannelOptions<S extends Schemas> {
  host: Host;
  runId: string;
  schemas: S;
  /** Called for each message that passed every check. Errors are logged, never fatal. */
  onMessage: (msg: OpenedMessage<S>, meta: ControlMeta) => void | Promise<void>;
  /** Envelope size cap. Default DEFAULT_MAX_ENVELOPE_BYTES (64 KiB). */
  maxBytes?: number;
  /** Replay window; a fresh ReplayGuard by default, `false` to disable. */
  replay?: ReplayGuard | false;
  /** Require the envelope signer to be the gossipsub author of the message. Default true. */
  requireSameOrigin?: boolean;
  /** Default: the host's logger. */
  logger?: Logger;
}

export interface PublishResult {
  /** Peers gossipsub handed the message to directly. */
  recipients: number;
  /** Envelope size in bytes. */
  bytes: number;
  seq: number;
}

export interface ControlChannel<S extends Schemas> {
  readonly topic: string;
  /** Seals (signs) and publishes a message. */
  publish<K extends keyof S & string>(kind: K, body: z.input<S[K]>, options?: AbortOptions): Promise<PublishResult>;
  /** Peer ids gossipsub knows to be subscribed to the topic. */
  subscribers(): string[];
  /** Resolves once at least `n` peers are subscribed to the topic. */
  waitForSubscribers(n: number, options?: AbortOptions): Promise<void>;
  /** Unsubscribes and removes the validator. */
  close(): void;
}

/** Subscribes the host to the run's control topic. */
export function joinControlChannel<S extends Schemas>(options: ControlChannelOptions<S>): ControlChannel<S> {
  const { host, schemas, onMessage } = options;
  const topic = controlTopic(options.runId);
  const pubsub = host.node.services.pubsub;
  const log = (options.logger ?? host.log).child({ topic });
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_ENVELOPE_BYTES;
  const replay = options.replay === false ? undefined : (options.replay ?? new ReplayGuard());
  const sameOrigin = options.requireSameOrigin ?? true;
  const metrics = host.metrics;
  if (pubsub.topicValidators.has(topic)) throw new InvalidInputError(`already joined ${topic}`);

  // The validator opens the envelope once; the 'message' listener picks up the result.
  const opened = new WeakMap<Message, OpenedMessage<S>>();

  const validator: TopicValidatorFn = (propagationSource, msg) => {
    const source = propagationSource.toString();
    try {
      if (msg.type !== 'signed') throw new EnvelopeError('unsigned', 'gossipsub message carries no author signature');
      const m = openMessage(msg.data, {
        schemas,
        maxBytes,
        context: topic,
        expectFrom: sameOrigin ? msg.from.toString() : undefined,
        replay,
      });
      opened.set(msg, m);
      metrics.increment('control.accepted');
      return TopicValidatorResult.Accept;
    } catch (err) {
      const reason = err instanceof EnvelopeError ? err.reason : 'internal';
      metrics.increment(`control.rejected.${reason}`);
      log.warn(
        {
          reason,
          err: (err as Error)?.message,
          propagationSource: source,
          author: msg.type === 'signed' ? msg.from.toString() : undefined,
          bytes: msg.data?.byteLength,
        },
        'rejected control message',
      );
      // A replay is ignored rather than rejected: honest relays can deliver an old message late.
      return reason === 'replay' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject;
    }
  };

  const listener = (evt: CustomEvent<GossipsubMessage>): void => {
    const { msg, propagationSource } = evt.detail;
    if (msg.topic !== topic) return;
    const m = opened.get(msg);
    if (m == null) return; // not validated by us (cannot happen while the validator is set)
    opened.delete(msg);
    metrics.increment('control.delivered');
    metrics.addReceived(`control:${topic}`, m.bytes);
    let result: void | Promise<void>;
    const meta: ControlMeta = { topic, propagationSource: propagationSource.toString() };
    try {
      result = onMessage(m, meta);
    } catch (err) {
      log.error({ err, kind: m.kind, from: m.from }, 'control message handler threw');
      return;
    }
    if (result instanceof Promise) {
      result.catch((err: unknown) => log.error({ err, kind: m.kind, from: m.from }, 'control message handler failed'));
    }
  };

  pubsub.topicValidators.set(topic, validator);
  pubsub.addEventListener('gossipsub:message', listener);
  pubsub.subscribe(topic);
  let closed = false;

  return {
    topic,
    async publish(kind, body, opts = {}) {
      opts.signal?.throwIfAborted();
      if (closed) throw new InvalidInputError(`control channel ${topic} is closed`);
      if (!Object.hasOwn(schemas, kind)) throw new InvalidInputError(`no schema for kind ${kind}`);
      // Validate our own output too: a peer that publishes what others will reject wastes a round.
      const check = schemas[kind].safeParse(body);
      if (!check.success) throw new InvalidInputError(`${kind} body fails its schema: ${check.error.message}`);
      const seq = nextSeq();
      const bytes = sealMessage(host.privateKey, kind, body, { context: topic, seq });
      if (bytes.byteLength > maxBytes)
        throw new InvalidInputError(`${kind} envelope of ${bytes.byteLength} bytes exceeds ${maxBytes}`);
      const res = await pubsub.publish(topic, bytes);
      metrics.increment('control.published');
      metrics.addSent(`control:${topic}`, bytes.byteLength);
      return { recipients: res.recipients.length, bytes: bytes.byteLength, seq };
    },
    subscribers: () => pubsub.getSubscribers(topic).map((p) => p.toString()),
    async waitForSubscribers(n, opts = {}) {
      const { signal } = opts;
      while (pubsub.getSubscribers(topic).length < n) {
        if (signal?.aborted === true) throw abortedError(`waiting for ${n} subscribers on ${topic}`, signal);
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, 50);
          function done(): void {
            clearTimeout(t);
            pubsub.removeEventListener('subscription-change', done);
            signal?.removeEventListener('abort', done);
            resolve();
          }
          pubsub.addEventListener('subscription-change', done);
          signal?.addEventListener('abort', done);
        });
      }
    },
    close() {
      if (closed) return;
      closed = true;
      pubsub.removeEventListener('gossipsub:message', listener);
      if (pubsub.topicValidators.get(topic) === validator) pubsub.topicValidators.delete(topic);
      try {
        pubsub.unsubscribe(topic);
      } catch {
        // the node may already be stopped
      }
    },
  };
}
