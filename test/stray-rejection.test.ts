/**
 * `tessera node` survives an aborted operation's rejection that a library left unhandled
 * (src/util/stray-rejection.ts, installed by src/cli/node.ts: @helia/utils' graph walker does that when a pin's deadline
 * passes), and still dies of any other unhandled rejection, as Node's default would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { fileURLToPath } from 'node:url';

const mod = pathToFileURL(fileURLToPath(new URL('../src/util/stray-rejection.js', import.meta.url))).href;

function run(rejectWith: string): { status: number | null; stdout: string; stderr: string } {
  const code = `
    const { onStrayRejection } = await import(${JSON.stringify(mod)});
    process.on('unhandledRejection', onStrayRejection);
    Promise.reject(${rejectWith});
    setTimeout(() => console.log('still alive'), 200);
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('an unhandled AbortError is logged and the process goes on; any other rejection still ends it', () => {
  const abort = run(`Object.assign(new Error('The operation was aborted'), { name: 'AbortError' })`);
  assert.equal(abort.status, 0, abort.stderr);
  assert.match(abort.stdout, /still alive/);
  assert.match(abort.stderr, /ignored an unhandled AbortError/);
  const timeout = run(`new DOMException('signal timed out', 'TimeoutError')`);
  assert.equal(timeout.status, 0, timeout.stderr);
  const other = run(`new TypeError('a real bug')`);
  assert.notEqual(other.status, 0, 'a real bug still crashes');
  assert.doesNotMatch(other.stdout, /still alive/);
  assert.match(other.stderr, /a real bug/);
});
