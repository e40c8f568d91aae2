/**
 * An internet in a box (issue 16): Linux network namespaces joined by veth pairs, so real
 * `tessera node` processes can run behind real NAT routers on one machine.
 *
 *   inet (a namespace holding bridge br0, the "internet", 11.0.0.0/24; 11/8 is not in
 *   libp2p's private ranges, so AutoNAT and DCUtR treat these addresses as public)
 *     ├── pub1 11.0.0.11, pub2 11.0.0.12, ...             public hosts
 *     ├── r1 wan 11.0.0.21 ── lan 10.1.0.1 ── h1 10.1.0.2   home behind a port-restricted cone NAT
 *     ├── r2 wan 11.0.0.22 ── lan 10.2.0.1 ── h2 10.2.0.2   the same
 *     └── r3 wan 11.0.0.23 ── lan 10.3.0.1 ── h3 10.3.0.2   home behind a symmetric NAT
 *
 * Each router forwards (net.ipv4.ip_forward=1) and runs nftables: masquerade on the WAN side
 * (`masquerade random` for the symmetric one: every new flow gets a random source port, so the
 * mapping depends on the destination and hole punching cannot predict it), and a filter that
 * drops whatever enters from the WAN unless it belongs to a flow the LAN opened (ct state
 * established,related). Linux conntrack keeps the source port where it can, so the cone routers
 * are endpoint-independent mappings with address-and-port-dependent filtering: a port-restricted
 * cone. Home links may be rate-limited with tc tbf (both directions), as a home uplink is.
 * The kernel has no netem, so latency is not emulated here (`--link-delay` does it in the app).
 *
 * Names: every namespace is `<prefix><pid>-<name>`; namespaces of a dead process with the same
 * prefix are deleted at start (a crashed earlier run), and destroy() deletes this lab's. A
 * kernel or user that refuses namespaces makes createLab throw (a test must fail, not skip).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

export const LAB_PREFIX = 'tsrlab';
export const INET_SUBNET = '11.0.0';

export type NatKind = 'cone' | 'symmetric';

export interface LabHost {
  /** Short name: pub1, pub2, h1, ... */
  name: string;
  /** The network namespace it runs in. */
  ns: string;
  /** Its own address (public for pubN, private for hN). */
  ip: string;
  kind: 'public' | 'home';
  /** Home hosts: their router. */
  router?: LabRouter;
}

export interface LabRouter {
  name: string;
  ns: string;
  wanIp: string;
  lanIp: string;
  nat: NatKind;
  /** The home link's rate limit in Mbit/s (tbf), if any. */
  rateMbit?: number;
  /** The router's LAN interface and the home host's interface, for `ip link set … down`. */
  lanIf: string;
}

export interface HomeSpec {
  nat: NatKind;
  /** Rate limit of the home link, both directions (tc tbf). */
  rateMbit?: number;
}

export interface LabOptions {
  /** Public hosts. Default 2. */
  publicHosts?: number;
  /** Home hosts, one router each. Default: cone, cone, symmetric. */
  homes?: HomeSpec[];
}

export interface Lab {
  readonly prefix: string;
  readonly inet: string;
  readonly hosts: LabHost[];
  readonly routers: LabRouter[];
  host(name: string): LabHost;
  /** `ip netns exec <ns> …` as an argv prefix, for spawnPeer's `prefix`. */
  execPrefix(ns: string): string[];
  /** Runs a command in a namespace, synchronously; throws with its stderr on failure. */
  exec(ns: string, argv: string[], input?: string): string;
  /** Spawns a long-lived command in a namespace. */
  spawn(ns: string, argv: string[]): ChildProcess;
  /** Deletes every namespace of this lab (idempotent). */
  destroy(): void;
}

function run(argv: string[], input?: string): string {
  try {
    return execFileSync(argv[0], argv.slice(1), {
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(input !== undefined ? { input } : {}),
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`netlab: \`${argv.join(' ')}\` failed: ${(e.stderr ?? '').trim() || e.message}`, { cause: err });
  }
}

function listNetns(): string[] {
  return run(['ip', 'netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter(Boolean);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes namespaces left by dead processes under LAB_PREFIX (a crashed or killed earlier run). */
export function cleanStale(): string[] {
  const gone: string[] = [];
  for (const ns of listNetns()) {
    const m = new RegExp(`^${LAB_PREFIX}(\\d+)-`).exec(ns);
    if (m && !alive(Number(m[1]))) {
      run(['ip', 'netns', 'del', ns]);
      gone.push(ns);
    }
  }
  return gone;
}

/** nftables for a home router: masquerade out of `wan`, drop unsolicited inbound. */
export function routerRules(nat: NatKind): string {
  return `
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade${nat === 'symmetric' ? ' random' : ''}
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "lan" accept
  }
}
`;
}

/** Builds the lab. Throws (with the failing command) if namespaces, veth, bridge or nft are refused. */
export function createLab(o: LabOptions = {}): Lab {
  const nPub = o.publicHosts ?? 2;
  const homes = o.homes ?? [{ nat: 'cone' }, { nat: 'cone' }, { nat: 'symmetric' }];
  if (nPub > 9 || homes.length > 9) throw new Error('netlab: at most 9 public and 9 home hosts');
  cleanStale();
  const prefix = `${LAB_PREFIX}${process.pid}-`;
  const made: string[] = [];
  const ns = (name: string): string => {
    const full = prefix + name;
    run(['ip', 'netns', 'add', full]);
    made.push(full);
    run(['ip', '-n', full, 'link', 'set', 'lo', 'up']);
    return full;
  };
  const destroy = (): void => {
    for (const n of made.splice(0).reverse()) {
      try {
        run(['ip', 'netns', 'del', n]);
      } catch {
        /* already gone */
      }
    }
  };
  const hosts: LabHost[] = [];
  const routers: LabRouter[] = [];
  try {
    const inet = ns('inet');
    run(['ip', '-n', inet, 'link', 'add', 'br0', 'type', 'bridge']);
    run(['ip', '-n', inet, 'link', 'set', 'br0', 'up']);
    // A veth from the bridge in `inet` to interface `ifName` in `target`, with `addr`.
    const plug = (target: string, port: string, ifName: string, addr: string): void => {
      run(['ip', '-n', inet, 'link', 'add', port, 'type', 'veth', 'peer', 'name', ifName, 'netns', target]);
      run(['ip', '-n', inet, 'link', 'set', port, 'master', 'br0', 'up']);
      run(['ip', '-n', target, 'addr', 'add', addr, 'dev', ifName]);
      run(['ip', '-n', target, 'link', 'set', ifName, 'up']);
    };
    for (let i = 1; i <= nPub; i++) {
      const name = `pub${i}`;
      const n = ns(name);
      const ip = `${INET_SUBNET}.${10 + i}`;
      plug(n, `v-${name}`, 'eth0', `${ip}/24`);
      hosts.push({ name, ns: n, ip, kind: 'public' });
    }
    homes.forEach((h, k) => {
      const i = k + 1;
      const rName = `r${i}`;
      const r = ns(rName);
      const wanIp = `${INET_SUBNET}.${20 + i}`;
      plug(r, `v-${rName}`, 'wan', `${wanIp}/24`);
      const hName = `h${i}`;
      const hn = ns(hName);
      const lanIp = `10.${i}.0.1`;
      const ip = `10.${i}.0.2`;
      run(['ip', '-n', r, 'link', 'add', 'lan', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', hn]);
      run(['ip', '-n', r, 'addr', 'add', `${lanIp}/24`, 'dev', 'lan']);
      run(['ip', '-n', r, 'link', 'set', 'lan', 'up']);
      run(['ip', '-n', hn, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      run(['ip', '-n', hn, 'link', 'set', 'eth0', 'up']);
      run(['ip', '-n', hn, 'route', 'add', 'default', 'via', lanIp]);
      run(['ip', 'netns', 'exec', r, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      run(['ip', 'netns', 'exec', r, 'nft', '-f', '-'], routerRules(h.nat));
      if (h.rateMbit !== undefined) {
        // Down (router → home) and up (home → router), each capped by a token bucket.
        const tbf = ['root', 'tbf', 'rate', `${h.rateMbit}mbit`, 'burst', '32kbit', 'latency', '400ms'];
        run(['ip', 'netns', 'exec', r, 'tc', 'qdisc', 'add', 'dev', 'lan', ...tbf]);
        run(['ip', 'netns', 'exec', hn, 'tc', 'qdisc', 'add', 'dev', 'eth0', ...tbf]);
      }
      const router: LabRouter = {
        name: rName,
        ns: r,
        wanIp,
        lanIp,
        nat: h.nat,
        lanIf: 'lan',
        ...(h.rateMbit !== undefined ? { rateMbit: h.rateMbit } : {}),
      };
      routers.push(router);
      hosts.push({ name: hName, ns: hn, ip, kind: 'home', router });
    });
  } catch (err) {
    destroy();
    throw err;
  }
  const inet = prefix + 'inet';
  const onExit = (): void => destroy();
  process.once('exit', onExit);
  return {
    prefix,
    inet,
    hosts,
    routers,
    host(name) {
      const h = hosts.find((x) => x.name === name);
      if (!h) throw new Error(`netlab: no host ${name}`);
      return h;
    },
    execPrefix: (n) => ['ip', 'netns', 'exec', n],
    exec: (n, argv, input) => run(['ip', 'netns', 'exec', n, ...argv], input),
    spawn: (n, argv) => spawn('ip', ['netns', 'exec', n, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }),
    destroy() {
      process.removeListener('exit', onExit);
      destroy();
    },
  };
}

/**
 * A TCP echo-the-peer server (node -e) inside a namespace: each client receives the address and
 * port the server saw it come from (after any NAT), then the connection closes. Resolves once it
 * listens.
 */
export async function probeServer(lab: Lab, ns: string, ip: string, port: number): Promise<ChildProcess> {
  const code = `const s=require('net').createServer(c=>c.end(c.remoteAddress+':'+c.remotePort+'\\n'));s.listen(${port},'${ip}',()=>console.log('ready'));`;
  const child = lab.spawn(ns, [process.execPath, '-e', code]);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) resolve();
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (c) => reject(new Error(`probe server in ${ns} exited ${c}: ${err}`)));
  });
  return child;
}

/**
 * Connects from a namespace to ip:port (optionally from a fixed local port), within timeoutMs.
 * Returns what the server saw ("addr:port"), or 'timeout' (dropped), or the error code (refused,
 * unreachable).
 */
export async function probeConnect(
  lab: Lab,
  ns: string,
  ip: string,
  port: number,
  o: { localPort?: number; timeoutMs?: number } = {},
): Promise<string> {
  const t = o.timeoutMs ?? 2000;
  const lp = o.localPort !== undefined ? `,localPort:${o.localPort}` : '';
  const code = `const c=require('net').connect({host:'${ip}',port:${port}${lp}});let d='';c.setTimeout(${t},()=>{console.log('timeout');process.exit(0)});c.on('data',x=>d+=x);c.on('end',()=>{console.log(d.trim());process.exit(0)});c.on('error',e=>{console.log(e.code||e.message);process.exit(0)});`;
  const child = lab.spawn(ns, [process.execPath, '-e', code]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const rc = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (rc !== 0) throw new Error(`probe from ${ns} exited ${rc}: ${err}`);
  return out.trim();
}
