/**
 * Canonical JSON and hashing for everything the swarm must agree on byte for byte (the run
 * manifest, round commits). Canonical form = RFC 8785 (JCS) for the values we use: object keys
 * sorted by UTF-16 code units, no whitespace, numbers in ECMAScript shortest round-trip form
 * (what JSON.stringify prints), strings escaped as JSON.stringify does. Only plain objects,
 * arrays, strings, finite numbers, booleans and null are allowed; object members whose value
 * is undefined are omitted (as JSON.stringify does).
 */
import { InvalidInputError } from '../util/errors.js';
import { sha256Hex } from '../util/hash.js';

const MAX_DEPTH = 64;

export function canonicalJson(value: unknown): string {
  return enc(value, 0);
}

function enc(v: unknown, depth: number): string {
  if (depth > MAX_DEPTH) throw new InvalidInputError(`canonical JSON: nesting deeper than ${MAX_DEPTH}`);
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'string':
      return JSON.stringify(v);
    case 'number':
      if (!Number.isFinite(v)) throw new InvalidInputError(`canonical JSON: non-finite number ${v}`);
      return JSON.stringify(v); // -0 prints as 0
    case 'object': {
      if (Array.isArray(v)) {
        return (
          '[' +
          v
            .map((x, i) => {
              if (x === undefined) throw new InvalidInputError(`canonical JSON: array element ${i} is undefined`);
              return enc(x, depth + 1);
            })
            .join(',') +
          ']'
        );
      }
      const proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null)
        throw new InvalidInputError('canonical JSON: only plain objects are allowed');
      const obj = v as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return '{' + keys.map((k) => JSON.stringify(k) + ':' + enc(obj[k], depth + 1)).join(',') + '}';
    }
    default:
      throw new InvalidInputError(`canonical JSON: cannot encode a ${typeof v}`);
  }
}

/** UTF-8 bytes of the canonical JSON. */
export function canonicalBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(canonicalJson(value));
}

/** sha256 hex of the canonical JSON of `value`. */
export function canonicalHash(value: unknown): string {
  return sha256Hex(canonicalBytes(value));
}

export const HEX64 = /^[0-9a-f]{64}$/;
