/**
 * Tessera's libp2p network driver: identity, host, signed envelopes, gossip control
 * channel, direct-stream bulk transfer and byte accounting. Protocol logic lives in the
 * swarm's pure state machines; this layer only moves (and checks) bytes.
 */
export * from './errors.js';
export * from './identity.js';
export * from './envelope.js';
export * from './metrics.js';
export * from './host.js';
export * from './pubsub.js';
export * from './bulk.js';
export { consume, readExactly, sendAll } from './stream-io.js';
