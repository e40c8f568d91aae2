/**
 * `withOverrides(target, overrides)`: `target` seen through a Proxy with some properties
 * replaced, every other method bound to `target`. How src/net hands libp2p services a component
 * that behaves differently in one method (autonat.ts, hole-punch.ts) without forking libp2p.
 */
export function withOverrides<T extends object>(target: T, overrides: Partial<T>): T {
  return new Proxy(target, {
    get(t, prop, receiver) {
      if (Object.hasOwn(overrides, prop)) return overrides[prop as keyof T];
      const v: unknown = Reflect.get(t, prop, receiver);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}
