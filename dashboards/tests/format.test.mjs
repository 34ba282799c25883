// The pure helpers behind the tiles: threshold levels and number formats.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clock, DEFAULT_THRESHOLDS, duration, levelOf, mergeThresholds, percent, worseLevel, yuan } from '../assets/format.js';

test('levels follow the thresholds, boundaries included in the better level', () => {
  const th = DEFAULT_THRESHOLDS;
  assert.equal(levelOf(0, th), 'ok');
  assert.equal(levelOf(30000, th), 'ok');
  assert.equal(levelOf(30001, th), 'neutral');
  assert.equal(levelOf(60000, th), 'neutral');
  assert.equal(levelOf(60001, th), 'warn');
  assert.equal(levelOf(100000, th), 'warn');
  assert.equal(levelOf(100001, th), 'crit');
  assert.equal(levelOf(null, th), 'ok');
  assert.equal(worseLevel('warn', 'neutral'), 'warn');
  assert.equal(worseLevel('ok', 'crit'), 'crit');
});

test('server thresholds replace the defaults key by key', () => {
  const th = mergeThresholds(DEFAULT_THRESHOLDS, { norm_ms: 2000, critical_ms: 4000, bogus: 1, target_ms: 'x' });
  assert.deepEqual(th, { target_ms: 30000, norm_ms: 2000, clear_ms: 50000, critical_ms: 4000 });
});

test('fen become yuan with two decimals', () => {
  assert.equal(yuan(0), '¥0.00');
  assert.equal(yuan(5), '¥0.05');
  assert.equal(yuan(12345), '¥123.45');
  assert.equal(yuan(123456789), '¥1,234,567.89');
  assert.equal(yuan(null), '–');
});

test('durations and clocks', () => {
  assert.equal(duration(800), '800ms');
  assert.equal(duration(1500), '1.5s');
  assert.equal(duration(125000), '2m05s');
  assert.equal(duration(null), '–');
  assert.equal(clock(0), '0:00');
  assert.equal(clock(61999), '1:01');
  assert.equal(clock(3723000), '1:02:03');
  assert.equal(percent(0.5), '50.0%');
  assert.equal(percent(null), '–');
});
