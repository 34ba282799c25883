// Shared harness for the browser tests: starts the real `deskpulse serve` on
// 127.0.0.1:0 with a throw-away data dir and a small-threshold config, feeds
// it events over HTTP, and opens Chromium pages signed in with a token.
//
// DESKPULSE_BIN picks the binary (default ../target/release/deskpulse from
// dashboards/).

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const DASHBOARDS = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const SCREENSHOTS = join(DASHBOARDS, 'tests', 'screenshots');
export const BIN = resolve(DASHBOARDS, process.env.DESKPULSE_BIN ?? '../target/release/deskpulse');

/** Tokens of the default config (the server wants at least 8 characters). */
export const TOKENS = Object.freeze({
  supervisor: 'sup-t1-token',
  admin: 'admin-token',
  agent: 'agent-a1-token',
  ingest: 'ingest-token',
});

/** Thresholds small enough that a wait turns amber and red within seconds. */
export const THRESHOLDS = Object.freeze({ target_ms: 1000, norm_ms: 2000, clear_ms: 1500, critical_ms: 4000, min_samples: 1 });

/** The default test config: team t1 = a1, a2; tokens for each role. */
export function defaultConfig({ extraTeams = '' } = {}) {
  const t = THRESHOLDS;
  return `[alerts]
target_ms = ${t.target_ms}
norm_ms = ${t.norm_ms}
clear_ms = ${t.clear_ms}
critical_ms = ${t.critical_ms}
min_samples = ${t.min_samples}

[teams.t1]
agents = ["a1", "a2"]
${extraTeams}
[[tokens]]
token = "${TOKENS.supervisor}"
name = "组长张三"
role = "supervisor"
teams = ["t1"]

[[tokens]]
token = "${TOKENS.admin}"
name = "admin"
role = "admin"

[[tokens]]
token = "${TOKENS.agent}"
name = "a1"
role = "agent"
agent = "a1"

[[tokens]]
token = "${TOKENS.ingest}"
role = "ingest"
shops = ["s1", "s2"]
`;
}

/** Resolves when `pred()` is truthy, polling; rejects with `what` after `timeoutMs`. */
export async function until(pred, { timeoutMs = 10000, intervalMs = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await pred();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// Servers still running when the test process ends (a crashed suite) are killed.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

/** A running server; `stop()` kills it, `restart()` brings it back on the same port and data dir. */
export class Server {
  constructor({ config = defaultConfig(), dataDir } = {}) {
    this.config = config;
    this.root = mkdtempSync(join(tmpdir(), 'deskpulse-dash-'));
    this.dataDir = dataDir ?? join(this.root, 'data');
    mkdirSync(this.dataDir, { recursive: true });
    this.configPath = config == null ? null : join(this.root, 'deskpulse.toml');
    if (this.configPath) writeFileSync(this.configPath, config);
    this.port = 0;
    this.proc = null;
    this.output = '';
    this.seq = 0;
  }

  /** Starts the binary and waits for its `deskpulse listening on http://…` line. */
  async start(port = this.port) {
    if (!existsSync(BIN)) throw new Error(`deskpulse binary not found at ${BIN} (build it with cargo build --release, or set DESKPULSE_BIN)`);
    const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', this.dataDir];
    if (this.configPath) args.push('--config', this.configPath);
    const [cmd, argv] = [BIN, args];
    const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    this.proc = proc;
    running.add(proc);
    proc.once('exit', () => running.delete(proc));
    const url = await new Promise((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not print its listen line in 20 s; output:\n${this.output}`)), 20000);
      const onData = (chunk) => {
        this.output += chunk;
        const m = this.output.match(/deskpulse listening on (http:\/\/[\d.]+:(\d+))/);
        if (m) {
          clearTimeout(timer);
          resolveUrl(m[1]);
        }
      };
      proc.stdout.setEncoding('utf8').on('data', onData);
      proc.stderr.setEncoding('utf8').on('data', (c) => { this.output += c; });
      proc.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? sig}) before listening; output:\n${this.output}`));
      });
    });
    this.url = url;
    this.port = Number(new URL(url).port);
    return this;
  }

  /** Kills the server (SIGKILL: a crash, not a graceful stop) and waits for it to exit. */
  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    if (!proc || proc.exitCode != null || proc.signalCode != null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    await exited;
    this.proc = null;
  }

  /** Starts again on the same port and data dir, retrying while the port is still held. */
  async restart() {
    await this.kill();
    return until(async () => {
      try {
        await this.start(this.port);
        return true;
      } catch (err) {
        if (/exited/.test(String(err))) return false;
        throw err;
      }
    }, { timeoutMs: 15000, intervalMs: 300, what: `restart on port ${this.port}` });
  }

  /** Stops the server and removes its temp dir. */
  async stop() {
    await this.kill('SIGTERM').catch(() => {});
    await this.kill().catch(() => {});
    rmSync(this.root, { recursive: true, force: true });
  }

  /** An HTTP request with a bearer token; resolves `{status, body}` (body parsed as JSON when it is). */
  async request(method, path, { token, body } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, body: parsed };
  }

  /** Posts events with the ingest token and checks every one was accepted. */
  async post(events, { token = this.configPath ? TOKENS.ingest : undefined } = {}) {
    const res = await this.request('POST', '/v1/events', { token, body: events });
    if (res.status !== 200) throw new Error(`POST /v1/events: ${res.status} ${JSON.stringify(res.body)}`);
    if (res.body.rejected?.length) throw new Error(`events rejected: ${JSON.stringify(res.body.rejected)}`);
    return res.body;
  }

  /** A unique event id. */
  id(prefix = 'e') {
    this.seq += 1;
    return `${prefix}-${process.pid}-${this.seq}`;
  }
}

/** Event builders; `ts` defaults to the wall clock now. */
export const ev = {
  customer: (s, { shop, conv, customer, agent, ts = Date.now() }) => ({
    id: s.id(), type: 'chat.customer', ts, shop, conversation: conv, customer: customer ?? `c-${conv}`, ...(agent ? { agent } : {}),
  }),
  agent: (s, { shop, conv, customer, agent, ts = Date.now(), auto = false }) => ({
    id: s.id(), type: 'chat.agent', ts, shop, conversation: conv, customer: customer ?? `c-${conv}`, agent, auto,
  }),
  status: (s, { shop, agent, status = 'online', ts = Date.now() }) => ({ id: s.id(), type: 'agent.status', ts, shop, agent, status }),
  order: (s, { shop, customer, amount, ts = Date.now() }) => ({ id: s.id(), type: 'order.paid', ts, shop, order: s.id('o'), customer, amount }),
  close: (s, { shop, conv, ts = Date.now() }) => ({ id: s.id(), type: 'conversation.close', ts, shop, conversation: conv }),
};

/** Launches the system Chromium (no download is possible here). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/**
 * A new page on `server`. With `token` the cookie and localStorage are set
 * before any script runs (as after a login); page errors are collected in
 * `page.errors` so a test can assert there were none.
 */
export async function openPage(browser, server, { token, path = '/', viewport = { width: 1600, height: 1000 } } = {}) {
  const context = await browser.newContext({ viewport, locale: 'zh-CN' });
  if (token) {
    await context.addCookies([{ name: 'deskpulse_token', value: token, url: server.url, sameSite: 'Strict' }]);
    await context.addInitScript((tok) => {
      if (!localStorage.getItem('deskpulse.token')) localStorage.setItem('deskpulse.token', tok);
    }, token);
  }
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/WebSocket|Failed to load resource|ERR_CONNECTION_REFUSED/.test(msg.text())) page.errors.push(msg.text());
  });
  await page.goto(server.url + path);
  return page;
}

/** Saves a full-page screenshot under tests/screenshots/. */
export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: false });
}

/** Waits for `#status` to read `state`. */
export function waitStatus(page, state, timeout = 10000) {
  return page.waitForFunction((s) => document.querySelector('#status')?.textContent === s, state, { timeout });
}
