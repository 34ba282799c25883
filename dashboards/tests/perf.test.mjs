// Perf smoke: 500 agents on the wallboard, then an update touching all of
// them. Reports long tasks (PerformanceObserver 'longtask') and the time the
// page spent applying frames; asserts only that every tile got the update.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openPage, screenshot, Server, TOKENS, waitStatus } from './support/server.mjs';

const N = 500;
const agentId = (i) => `p${String(i).padStart(3, '0')}`;

describe('500 agents', { timeout: 180000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await new Server().start();
    const now = Date.now();
    const events = [];
    for (let i = 0; i < N; i++) {
      const shop = i % 2 ? 's1' : 's2';
      const conv = `pc${i}`;
      events.push(
        { id: server.id(), type: 'agent.status', ts: now - 10000, shop, agent: agentId(i), status: 'online' },
        { id: server.id(), type: 'chat.customer', ts: now - 9000, shop, conversation: conv, customer: `pu${i}`, agent: agentId(i) },
        { id: server.id(), type: 'chat.agent', ts: now - 9000 + (i % 50) * 20, shop, conversation: conv, customer: `pu${i}`, agent: agentId(i) },
      );
    }
    await server.post(events);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('an update of 500 agents applies without long tasks piling up', async () => {
    const page = await openPage(browser, server, { token: TOKENS.admin, viewport: { width: 1920, height: 1080 } });
    await waitStatus(page, 'live', 20000);
    // roster agents who never sent an event may be listed too: count ours
    await page.waitForFunction((n) => document.querySelectorAll('.agent-tile[data-agent^="p"]').length === n, N, { timeout: 20000 });
    await page.evaluate(() => {
      window.__longtasks = [];
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longtasks.push(Math.round(e.duration));
      }).observe({ type: 'longtask' });
      window.__deskpulse.stats.maxApplyMs = 0;
      window.__deskpulse.stats.maxTickMs = 0;
    });
    const appliedBefore = await page.evaluate(() => window.__deskpulse.stats.applied);

    // every agent gets a waiting customer: one update frame carries all 500
    const now = Date.now();
    const events = [];
    for (let i = 0; i < N; i++) {
      events.push({ id: server.id(), type: 'chat.customer', ts: now, shop: i % 2 ? 's1' : 's2', conversation: `pw${i}`, customer: `pw${i}`, agent: agentId(i) });
    }
    const t0 = Date.now();
    await server.post(events);
    await page.waitForFunction((n) => {
      const counts = document.querySelectorAll('.agent-tile[data-agent^="p"] .wait-n');
      let ones = 0;
      for (const el of counts) if (el.textContent === '1') ones += 1;
      return ones === n;
    }, N, { timeout: 15000, polling: 100 });
    const visibleAfterMs = Date.now() - t0;
    // let a few more per-second updates and clock ticks run
    await page.waitForFunction((a) => window.__deskpulse.stats.applied >= a + 3, appliedBefore + 1, { timeout: 10000 });
    const result = await page.evaluate(() => ({
      longtasks: window.__longtasks,
      maxApplyMs: Math.round(window.__deskpulse.stats.maxApplyMs),
      maxTickMs: Math.round(window.__deskpulse.stats.maxTickMs),
      maxParseMs: Math.round(window.__deskpulse.stream?.maxParseMs ?? 0),
      maxFrameKb: Math.round((window.__deskpulse.stream?.maxFrameBytes ?? 0) / 1024),
      frames: window.__deskpulse.stats.frames,
      tiles: document.querySelectorAll('.agent-tile[data-agent^="p"]').length,
    }));
    console.log(`# perf: ${N} agents; update visible after ${visibleAfterMs} ms (includes ingest + 1 s push interval); `
      + `long tasks: ${result.longtasks.length} [${result.longtasks.join(', ')}] ms; max frame apply ${result.maxApplyMs} ms; `
      + `max clock tick ${result.maxTickMs} ms; max JSON.parse ${result.maxParseMs} ms of a ${result.maxFrameKb} KiB frame`);
    assert.equal(result.tiles, N);
    await screenshot(page, 'wallboard-500');
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });
});
