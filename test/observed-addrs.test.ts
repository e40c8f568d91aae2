/**
 * ObservedAddrBook (src/net/observed-addrs.ts): which public address a peer behind a NAT offers
 * for hole punching, from what the peers it dialled say they see. Adversarial: lying peers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ObservedAddrBook, parseTcpAddr } from '../src/net/observed-addrs.js';

const TRUE = '/ip4/11.0.0.21/tcp/4002';
const FALSE = '/ip4/93.184.216.34/tcp/80'; // a public address the attackers want us to offer

test('an address two reporter IPs agree on is confirmed; one reporter is not enough', () => {
  const b = new ObservedAddrBook();
  assert.equal(
    b.report('c1', '11.0.0.11', `${TRUE}/p2p/12D3KooWSwbwxxsBPQ73v8GDVXs4X1rbRU9vTfLdmWRLfnbuLKQ9`),
    'accepted',
  );
  assert.deepEqual(b.confirmed(), [], 'one reporter');
  assert.equal(b.report('c2', '11.0.0.12', TRUE), 'accepted');
  assert.deepEqual(b.confirmed(), [TRUE]);
  // The vote goes with the connection.
  b.drop('c1');
  assert.deepEqual(b.confirmed(), []);
  // Only eligible connections count (host: those dialled from the punch port).
  b.report('c3', '11.0.0.13', TRUE);
  assert.deepEqual(b.confirmed(), [TRUE]);
  assert.deepEqual(
    b.confirmed((id) => id !== 'c3'),
    [],
  );
});

test('a symmetric NAT (a different port per destination) gets nothing', () => {
  const b = new ObservedAddrBook();
  b.report('c1', '11.0.0.11', '/ip4/11.0.0.23/tcp/40123');
  b.report('c2', '11.0.0.12', '/ip4/11.0.0.23/tcp/51877');
  b.report('c3', '11.0.0.13', '/ip4/11.0.0.23/tcp/33010');
  assert.deepEqual(b.confirmed(), []);
});

test('adversarial: one machine with many connections and peer ids has one vote', () => {
  const b = new ObservedAddrBook();
  b.report('h1', '11.0.0.11', TRUE);
  for (let i = 0; i < 40; i++) assert.equal(b.report(`evil${i}`, '66.6.6.6', FALSE), 'accepted');
  assert.deepEqual(b.confirmed(), [], '1 honest vote vs 1 attacker vote: a tie confirms nothing');
  b.report('h2', '11.0.0.12', TRUE);
  assert.deepEqual(b.confirmed(), [TRUE], '2 honest IPs outvote 40 connections from one IP');
});

test('adversarial: liars must outnumber the honest reporters, and only while connected', () => {
  const b = new ObservedAddrBook();
  b.report('h1', '11.0.0.11', TRUE);
  b.report('h2', '11.0.0.12', TRUE);
  b.report('e1', '66.6.6.1', FALSE);
  b.report('e2', '66.6.6.2', FALSE);
  assert.deepEqual(b.confirmed(), [], 'a tie: nothing offered');
  b.report('e3', '66.6.6.3', FALSE);
  assert.deepEqual(b.confirmed(), [FALSE], 'three liars on three IPs beat two honest peers');
  for (const id of ['e1', 'e2', 'e3']) b.drop(id);
  assert.deepEqual(b.confirmed(), [TRUE], 'their claim goes when their connections do');
});

test('adversarial: private, loopback, circuit and malformed claims are refused; the book is capped', () => {
  const b = new ObservedAddrBook({ maxTracked: 4 });
  assert.equal(b.report('a', '11.0.0.11', '/ip4/10.1.0.2/tcp/4002'), 'not-public');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/127.0.0.1/tcp/4002'), 'not-public');
  assert.equal(b.report('a', '10.0.0.1', TRUE), 'not-public', 'a LAN reporter');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/11.0.0.11/tcp/4001/p2p/x/p2p-circuit'), 'malformed');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/11.0.0.21/udp/4002/quic-v1'), 'malformed');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/11.0.0.21/tcp/0'), 'malformed');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/11.0.0.21/tcp/99999'), 'malformed');
  assert.equal(b.report('a', '11.0.0.11', '/ip4/not-an-ip/tcp/1'), 'malformed');
  assert.equal(b.report('a', '11.0.0.11', 'x'.repeat(100_000)), 'malformed');
  assert.equal(b.size, 0);
  for (let i = 0; i < 4; i++) assert.equal(b.report(`c${i}`, `11.0.0.${i + 1}`, TRUE), 'accepted');
  assert.equal(b.report('c4', '11.0.0.9', TRUE), 'full');
  assert.equal(b.report('c0', '11.0.0.1', TRUE), 'accepted', 'an existing connection may update its report');
  assert.equal(b.size, 4);
  b.drop('c0');
  assert.equal(b.report('c4', '11.0.0.9', TRUE), 'accepted');
});

test('one address per IP family; IPv6 too', () => {
  const b = new ObservedAddrBook({ minAgree: 2 });
  const v6 = '/ip6/2001:4860::21/tcp/4002';
  for (const [id, ip] of [
    ['a', '11.0.0.11'],
    ['b', '11.0.0.12'],
  ])
    b.report(id, ip, TRUE);
  for (const [id, ip] of [
    ['c', '2001:4860::11'],
    ['d', '2001:4860::12'],
  ])
    b.report(id, ip, v6);
  assert.deepEqual(b.confirmed(), [TRUE, v6]);
  assert.deepEqual(parseTcpAddr(`${v6}/p2p/abc`), { family: 6, ip: '2001:4860::21', port: 4002, addr: v6 });
});
