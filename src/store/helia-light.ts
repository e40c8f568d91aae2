/**
 * `createHeliaLight` without the rest of the `helia` package's entry point.
 *
 * Why by hand: `helia`'s index also imports `@helia/http` and `@helia/libp2p` (a whole default
 * libp2p stack with its transports and services) for `createHelia`, which Tessera never calls:
 * the store runs Helia's light core on the swarm's own host (store/index.ts). Loading them cost
 * about 0.8 s of CPU in every `tessera node` process (measured: 1.94 s against 1.12 s to import
 * the store's and host's packages), and the tests spawn hundreds of those. The package exports
 * only its index, so this loads the class file next to it by path, resolved from the installed
 * package (never a copy); `createHeliaLight` in the index is this same `new Helia({name,
 * version, ...init})`. If a Helia upgrade moves the file, the import fails loudly at start-up.
 */
import type { Helia, HeliaInit } from 'helia';

interface HeliaClassModule {
  Helia: new (init: Partial<HeliaInit> & { name: string; version: string }) => Helia;
}
interface HeliaVersionModule {
  name: string;
  version: string;
}

const entry = import.meta.resolve('helia');
const [{ Helia: HeliaClass }, { name, version }] = (await Promise.all([
  import(new URL('./helia.js', entry).href),
  import(new URL('./version.js', entry).href),
])) as [HeliaClassModule, HeliaVersionModule];

/** Helia's light core (no routers, no block brokers until the caller adds them). */
export function createHeliaLight(init: Partial<HeliaInit>): Helia {
  return new HeliaClass({ name, version, ...init });
}
