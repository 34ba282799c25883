// The supervisor wallboard against the real server: login, scope, live
// updates, thresholds turning tiles amber and red, alerts and ack, the agent
// detail, the language switch, and screenshots in light and TV mode.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ev, launchBrowser, openPage, screenshot, Server, TOKENS, until, waitStatus } from './support/server.mjs';

describe('wallboard', { timeout: 120000 }, () => {
  let server;
  let browser;
  let page;
  const tile = (agent) => `.agent-tile[data-agent="${agent}"]`;

  before(async () => {
    server = await new Server().start();
    const now = Date.now();
    await server.post([
      ev.status(server, { shop: 's1', agent: 'a1', status: 'online' }),
      ev.status(server, { shop: 's2', agent: 'a2', status: 'busy' }),
      // a1 answered a customer after 800 ms, and sold something
      ev.customer(server, { shop: 's1', conv: 'k1', customer: 'buyer1', agent: 'a1', ts: now - 60000 }),
      ev.agent(server, { shop: 's1', conv: 'k1', customer: 'buyer1', agent: 'a1', ts: now - 59200 }),
      ev.order(server, { shop: 's1', customer: 'buyer1', amount: 12345, ts: now - 50000 }),
      // a2 answered after 1.5 s
      ev.customer(server, { shop: 's2', conv: 'k2', customer: 'buyer2', agent: 'a2', ts: now - 30000 }),
      ev.agent(server, { shop: 's2', conv: 'k2', customer: 'buyer2', agent: 'a2', ts: now - 28500 }),
      // a3 works shop s1 but is in no team: a t1 supervisor must not see them
      ev.status(server, { shop: 's1', agent: 'a3', status: 'online' }),
      ev.customer(server, { shop: 's1', conv: 'k3', customer: 'buyer3', agent: 'a3', ts: now - 20000 }),
      ev.agent(server, { shop: 's1', conv: 'k3', customer: 'buyer3', agent: 'a3', ts: now - 19000 }),
    ]);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('asks for a token, rejects a wrong one, then shows only the scoped agents', async () => {
    page = await openPage(browser, server);
    await waitStatus(page, 'login');
    await page.waitForSelector('#login-form', { state: 'visible' });
    await page.fill('#login-form input[name="token"]', 'not-a-real-token');
    await page.click('#login-form button[type="submit"]');
    await page.waitForFunction(() => /401|403/.test(document.querySelector('#login-message').textContent));
    await page.fill('#login-form input[name="token"]', TOKENS.supervisor);
    await page.click('#login-form button[type="submit"]');
    await waitStatus(page, 'live');
    await page.waitForSelector(tile('a1'));
    await page.waitForSelector(tile('a2'));
    const agents = await page.$$eval('.agent-tile', (els) => els.map((e) => e.dataset.agent).sort());
    assert.deepEqual(agents, ['a1', 'a2']);
    assert.equal(await page.$(tile('a3')), null, 'a3 (no team) must not be shown to the t1 supervisor');
    const cookie = (await page.context().cookies()).find((c) => c.name === 'deskpulse_token');
    assert.equal(cookie?.value, TOKENS.supervisor);
    assert.equal(await page.evaluate(() => localStorage.getItem('deskpulse.token')), TOKENS.supervisor);
    // figures from the snapshot: a1 sold ¥123.45, answered in 800 ms
    await page.waitForFunction((sel) => document.querySelector(`${sel} [data-f="sales"]`)?.textContent === '¥123.45', tile('a1'));
    assert.equal(await page.textContent(`${tile('a1')} [data-f="avg_today"]`), '800ms');
    assert.equal(await page.textContent(`${tile('a1')} .agent-status`), '在线');
    assert.match(await page.textContent('#totals'), /t1/);
    assert.deepEqual(page.errors, []);
  });

  test('an event sent to the server changes the tile within 2 s', async () => {
    const before = await page.textContent(`${tile('a1')} .wait-n`);
    assert.equal(before, '0');
    const t0 = Date.now();
    await server.post([ev.customer(server, { shop: 's1', conv: 'k10', customer: 'buyer10', agent: 'a1' })]);
    await page.waitForFunction((sel) => document.querySelector(`${sel} .wait-n`)?.textContent === '1', tile('a1'), { timeout: 2000 });
    const elapsed = Date.now() - t0;
    assert.ok(elapsed <= 2000, `tile changed after ${elapsed} ms`);
    // the wait clock ticks in the browser without further frames
    await page.waitForFunction((sel) => /^0:0[1-9]$/.test(document.querySelector(`${sel} .wait-clock`)?.textContent), tile('a1'), { timeout: 3000 });
    // a1 replies: the wait closes
    await server.post([ev.agent(server, { shop: 's1', conv: 'k10', customer: 'buyer10', agent: 'a1' })]);
    await page.waitForFunction((sel) => document.querySelector(`${sel} .wait-n`)?.textContent === '0', tile('a1'), { timeout: 2000 });
  });

  test('a growing wait turns the tile amber then red and raises an alert', async () => {
    await server.post([ev.customer(server, { shop: 's2', conv: 'k20', customer: 'buyer20', agent: 'a2' })]);
    // norm 2 s → warn, critical 4 s → crit (thresholds come from the server's config)
    await page.waitForSelector(`${tile('a2')}[data-level="warn"]`, { timeout: 5000 });
    await page.waitForSelector(`${tile('a2')}[data-level="crit"]`, { timeout: 6000 });
    // worst first: a2 is now the first tile
    assert.equal(await page.$eval('#agents', (el) => el.firstElementChild.dataset.agent), 'a2');
    const alert = await page.waitForSelector('#alerts .alert[data-agent="a2"][data-severity="critical"]', { timeout: 6000 });
    assert.ok(await alert.getAttribute('data-alert-id'));
    assert.equal(await alert.$eval('.alert-agent', (a) => a.getAttribute('href')), '#/agent/a2');
    await page.waitForFunction(() => document.body.dataset.lastAlarm, null, { timeout: 3000 });
    await screenshot(page, 'wallboard-light');
  });

  test('ack from the panel reaches the API and shows who acked', async () => {
    const alert = await page.waitForSelector('#alerts .alert[data-agent="a2"]');
    const id = await alert.getAttribute('data-alert-id');
    await alert.$eval('.ack-button', (b) => b.click());
    await page.waitForSelector(`#alerts .alert[data-alert-id="${id}"][data-acked="true"]`, { timeout: 5000 });
    const text = await page.textContent(`#alerts .alert[data-alert-id="${id}"] .alert-acked`);
    assert.match(text, /已确认/);
    const res = await server.request('GET', '/v1/alerts?state=all', { token: TOKENS.supervisor });
    assert.equal(res.status, 200);
    const found = res.body.alerts.find((a) => String(a.id) === id);
    assert.ok(found, `alert ${id} listed by GET /v1/alerts`);
    assert.ok(found.acked_by, 'acked_by set');
    // a second browser (another supervisor screen) sees who acked too
    const other = await openPage(browser, server, { token: TOKENS.admin });
    await other.waitForSelector(`#alerts .alert[data-alert-id="${id}"][data-acked="true"]`, { timeout: 5000 });
    assert.match(await other.textContent(`#alerts .alert[data-alert-id="${id}"] .alert-acked`), new RegExp(found.acked_by));
    await other.context().close();
  });

  test('agent detail shows the histogram, the last hour and open waits', async () => {
    await page.click(`${tile('a2')} .agent-name`);
    await page.waitForSelector('#detail[data-agent="a2"][data-loaded="true"]', { timeout: 5000 });
    assert.ok(await page.$('#detail .detail-minutes .uplot'), 'uPlot chart rendered');
    const bars = await page.$$eval('#detail .hist-bar', (els) => els.reduce((n, e) => n + Number(e.dataset.count), 0));
    assert.ok(bars >= 1, `histogram holds a2's response (${bars})`);
    const waits = await page.$$eval('#detail .detail-waits tr.wait-row', (rows) => rows.map((r) => r.children[2].textContent));
    assert.deepEqual(waits, ['k20']);
    await page.waitForSelector('#detail .detail-alert[data-severity="critical"]');
    await screenshot(page, 'agent-detail');
    await page.click('#detail .detail-close');
    await page.waitForSelector('#detail', { state: 'hidden' });
  });

  test('TV mode from ?tv=1, and English remembered', async () => {
    const tv = await openPage(browser, server, { token: TOKENS.supervisor, path: '/?tv=1', viewport: { width: 1920, height: 1080 } });
    await waitStatus(tv, 'live');
    await tv.waitForSelector(tile('a2'));
    assert.equal(await tv.evaluate(() => document.body.classList.contains('tv')), true);
    const big = await tv.$eval(`${tile('a2')} .wait-clock`, (el) => parseFloat(getComputedStyle(el).fontSize));
    assert.ok(big >= 40, `TV wait clock is ${big}px`);
    await screenshot(tv, 'wallboard-tv');
    await tv.click(`${tile('a2')} .agent-name`);
    await tv.waitForSelector('#detail[data-agent="a2"][data-loaded="true"]', { timeout: 5000 });
    await screenshot(tv, 'agent-detail-tv');
    await tv.click('#detail .detail-close');
    await tv.waitForSelector('#detail', { state: 'hidden' });
    await tv.click('#tv-toggle');
    assert.equal(await tv.evaluate(() => document.body.classList.contains('tv')), false);
    await tv.click('#lang-toggle');
    await tv.waitForFunction(() => document.documentElement.lang === 'en');
    // Tiles re-render on the next animation frame, not with the switch itself.
    await tv.waitForFunction((sel) => document.querySelector(sel)?.textContent === 'online', `${tile('a1')} .agent-status`, { timeout: 5000 });
    assert.equal(await tv.textContent(`${tile('a1')} .agent-status`), 'online');
    await tv.reload();
    await waitStatus(tv, 'live');
    await tv.waitForSelector(tile('a1'));
    assert.equal(await tv.textContent('#status-label'), 'live');
    assert.equal(await tv.textContent(`${tile('a1')} .agent-status`), 'online');
    assert.deepEqual(tv.errors, []);
    await tv.context().close();
  });

  test('the desk card averages the visible agents; agents get no ack button; an ingest token gets the form', async () => {
    // The supervisor gets no desk view: the card is computed from a1 and a2,
    // the whole of team t1, so it must show the team's 15m average.
    const desk = '#totals .total[data-kind="desk"] [data-v="avg15"]';
    const team = '#totals .total[data-kind="team"][data-name="t1"] [data-v="avg15"]';
    await until(async () => (await page.textContent(team)) !== '–', { what: 'the team average' });
    assert.equal(await page.textContent(desk), await page.textContent(team));
    // An agent sees its own alerts but may not acknowledge them.
    const agent = await openPage(browser, server, { token: TOKENS.agent });
    await waitStatus(agent, 'live');
    await server.post([ev.customer(server, { shop: 's1', conv: 'k30', customer: 'buyer30', agent: 'a1' })]);
    const alert = await agent.waitForSelector('#alerts .alert[data-agent="a1"]', { timeout: 8000 });
    assert.equal(await alert.$eval('.ack-button', (b) => getComputedStyle(b).display), 'none');
    await server.post([ev.agent(server, { shop: 's1', conv: 'k30', customer: 'buyer30', agent: 'a1' })]);
    assert.deepEqual(agent.errors, []);
    await agent.context().close();
    // A token that may only send events is asked to be replaced, not retried forever.
    const ingest = await openPage(browser, server, { token: TOKENS.ingest });
    await waitStatus(ingest, 'login');
    await ingest.waitForSelector('#login-form', { state: 'visible' });
    await ingest.context().close();
  });

  test('the team filter hides agents of other teams', async () => {
    // a2's alert (shop s2, from the growing wait above) follows the filter too.
    const a2Alert = '#alerts .alert[data-agent="a2"]';
    await page.waitForSelector(a2Alert);
    await page.selectOption('#filter-shop', 's1');
    await until(() => page.$eval(tile('a2'), (el) => el.hidden), { what: 'a2 hidden by the shop filter' });
    assert.equal(await page.$eval(tile('a1'), (el) => el.hidden), false);
    await page.waitForSelector(a2Alert, { state: 'detached' });
    await page.selectOption('#filter-shop', '');
    await until(async () => !(await page.$eval(tile('a2'), (el) => el.hidden)), { what: 'a2 shown again' });
    await page.waitForSelector(a2Alert);
    assert.deepEqual(page.errors, []);
  });
});
