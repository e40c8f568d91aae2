/**
 * Selection by score (src/peer/validator.ts Exclusions): a flag keeps a member out of proposals
 * until a trusted validator scores it unflagged; reports that miss the member keep the flag (the
 * CI failure of swarm-select: a slow scaler's update was not held when the validator scored, and
 * a 3-round expiry let it back in); flags lapse only when trusted reports stop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Exclusions, type ScoreReport } from '../src/peer/validator.js';

const entry = (peer: string, flagged: boolean, reason: string | null = flagged ? 'norm' : null) => ({
  peer,
  score: flagged ? 0 : 1,
  ema: flagged ? 0 : 1,
  flagged,
  reason,
});

function harness() {
  const told: string[][] = [];
  const ex = new Exclusions({ logger: pino({ level: 'silent' }), exclude: (p) => told.push(p) });
  const last = () => told.at(-1) ?? [];
  return { ex, told, last };
}

test('a flag holds through reports that miss the member; an unflagged score clears it', () => {
  const { ex, last } = harness();
  const r = (round: number, entries: ScoreReport['entries']): ScoreReport => ({ round, entries });
  ex.onReport('v', r(0, [entry('a', false), entry('s', true)]), true, 1);
  assert.deepEqual(last(), ['s']);
  // Rounds 1–5: the validator never held s's update (late); s stays out all along.
  for (let round = 1; round <= 5; round++) {
    ex.onReport('v', r(round, [entry('a', false)]), true, round + 1);
    assert.deepEqual(last(), ['s'], `still out after the report of round ${round}`);
  }
  // An unflagged score for an older round than the flag does not clear it.
  ex.onReport('v', r(6, [entry('s', true)]), true, 7);
  ex.update(7, r(5, [entry('s', false)]));
  assert.deepEqual(last(), ['s']);
  // A newer unflagged score does.
  ex.onReport('v', r(7, [entry('s', false)]), true, 8);
  assert.deepEqual(last(), []);
});

test('"harmful" alone does not exclude; untrusted reports change nothing; silence lapses flags', () => {
  const { ex, told, last } = harness();
  ex.onReport('v', { round: 0, entries: [entry('h', true, 'harmful')] }, true, 1);
  assert.deepEqual(told, [], 'harmful alone is not a flag for selection');
  ex.onReport('x', { round: 0, entries: [entry('a', true)] }, false, 1);
  assert.deepEqual(told, [], 'an untrusted report is kept for display only');
  assert.ok(ex.reports.has('x'));
  ex.onReport('v', { round: 1, entries: [entry('s', true)] }, true, 2);
  assert.deepEqual(last(), ['s']);
  ex.update(4);
  assert.deepEqual(last(), ['s'], 'three rounds without a report: still out');
  ex.update(5);
  assert.deepEqual(last(), [], 'no trusted report for more than three rounds: the flags lapse');
  ex.onReport('v', { round: 5, entries: [entry('b', false)] }, true, 6);
  assert.deepEqual(last(), ['s'], 'the validator is back: its standing flag applies again');
});

test('the probation gate: a probationer is proposed only after a trusted validator scored it unflagged', () => {
  const told: string[][] = [];
  const ex = new Exclusions({ logger: pino({ level: 'silent' }), exclude: (p) => told.push(p), gate: true });
  const last = () => told.at(-1) ?? [];
  ex.onReport('v', { round: 0, entries: [entry('a', false)] }, true, 1);
  ex.setProbation(1, ['n', 's']);
  assert.deepEqual(last(), ['n', 's'], 'both unscored: both held back');
  // n's first update is scored (not applied) and passes; s's garbage is flagged.
  ex.onReport('v', { round: 1, entries: [entry('n', false), entry('s', true)] }, true, 2);
  assert.deepEqual(last(), ['s']);
  ex.setProbation(2, ['n', 's']);
  assert.deepEqual(last(), ['s']);
  // Silent validators: the gate lapses with the flags, so newcomers are not stuck behind them.
  ex.setProbation(6, ['n', 's', 'z']);
  assert.deepEqual(last(), []);
  // Without a trusted validator there is no gate (nobody could clear anyone).
  const told2: string[][] = [];
  const open = new Exclusions({ logger: pino({ level: 'silent' }), exclude: (p) => told2.push(p) });
  open.setProbation(1, ['n']);
  assert.deepEqual(told2, []);
});
