// One keyed tile per agent. A tile is built once and afterwards only the
// texts, attributes and sparkline that changed are touched.

import { clock, count, duration, levelOf, percent, worseLevel, yuan } from './format.js';
import { applyI18n, t } from './i18n.js';
import { drawSparkline } from './sparkline.js';

const METRICS = [
  ['avg15', 'tile.avg15'],
  ['p90_15', 'tile.p90_15'],
  ['avg_today', 'tile.avg_today'],
  ['p90_today', 'tile.p90_today'],
  ['reply_rate', 'tile.reply_rate'],
  ['customers', 'tile.customers'],
  ['sales', 'tile.sales'],
];

const SPARK_COLOR = { ok: '#16a34a', neutral: '#2563eb', warn: '#d97706', crit: '#dc2626' };

/** Milliseconds the agent's oldest open wait has lasted at server time `now`. */
export function currentWaitMs(view, now) {
  const live = view.live;
  if (!live || !live.waiting) return 0;
  if (Number.isFinite(live.oldest_wait_start)) return Math.max(0, now - live.oldest_wait_start);
  return live.oldest_wait_ms ?? 0;
}

/** The 15m average response of a view, or null. */
export function avg15(view) {
  return view['15m']?.avg_response_ms ?? null;
}

/** Tile level: the worse of the current oldest wait and the 15m average. */
export function agentLevel(view, now, th) {
  return worseLevel(levelOf(currentWaitMs(view, now), th), levelOf(avg15(view), th));
}

/** A tile for one agent: build with `new Tile(id)`, then `render` / `tick`. */
export class Tile {
  /** `shop` is set for a shop-scoped slice of the agent (one tile per shop). */
  constructor(id, shop = null) {
    this.id = id;
    this.key = shop == null ? id : `${id}@${shop}`;
    const el = document.createElement('article');
    el.className = 'agent-tile';
    el.dataset.agent = id;
    if (shop != null) el.dataset.shop = shop;
    el.dataset.level = 'ok';
    const href = `#/agent/${encodeURIComponent(id)}`;
    el.innerHTML = `
      <header class="tile-head">
        <a class="agent-name"></a>
        <span class="agent-status"></span>
        <span class="tile-alerts" hidden></span>
      </header>
      <div class="tile-wait">
        <span class="wait-count"><span data-i18n="tile.waiting"></span> <b class="wait-n">0</b></span>
        <span class="wait-clock" title="">–</span>
        <span class="wait-hint"></span>
      </div>
      <dl class="tile-metrics">${METRICS.map(([k, label]) => `<div><dt data-i18n="${label}"></dt><dd data-f="${k}">–</dd></div>`).join('')}</dl>
      <canvas class="spark" width="240" height="44" aria-hidden="true"></canvas>`;
    const name = el.querySelector('.agent-name');
    name.href = href;
    name.textContent = shop == null ? id : `${id} · ${shop}`;
    applyI18n(el);
    this.el = el;
    this.refs = {
      status: el.querySelector('.agent-status'),
      alerts: el.querySelector('.tile-alerts'),
      waitN: el.querySelector('.wait-n'),
      waitClock: el.querySelector('.wait-clock'),
      waitHint: el.querySelector('.wait-hint'),
      spark: el.querySelector('.spark'),
      f: Object.fromEntries(METRICS.map(([k]) => [k, el.querySelector(`[data-f="${k}"]`)])),
    };
    this.last = new Map();
    this.sparkKey = '';
    this.level = 'ok';
  }

  set(key, node, text) {
    if (this.last.get(key) !== text) {
      this.last.set(key, text);
      node.textContent = text;
    }
  }

  /** Applies the whole view (after a frame changed it). */
  render(view, now, th, nAlerts) {
    const live = view.live ?? {};
    const status = live.status ?? null;
    if (this.el.dataset.status !== String(status)) this.el.dataset.status = String(status);
    this.set('status', this.refs.status, t(`agent.status.${status}`));
    this.set('waitN', this.refs.waitN, count(live.waiting ?? 0));
    const today = view.today ?? {};
    const m15 = view['15m'] ?? {};
    const f = this.refs.f;
    this.set('avg15', f.avg15, duration(m15.avg_response_ms));
    this.set('p90_15', f.p90_15, duration(m15.p90_ms));
    this.set('avg_today', f.avg_today, duration(today.avg_response_ms));
    this.set('p90_today', f.p90_today, duration(today.p90_ms));
    this.set('reply_rate', f.reply_rate, percent(today.reply_rate));
    this.set('customers', f.customers, count(today.customers));
    this.set('sales', f.sales, yuan(today.sales_fen));
    const alertsText = nAlerts > 0 ? `⚠ ${nAlerts}` : '';
    if (this.last.get('alerts') !== alertsText) {
      this.last.set('alerts', alertsText);
      this.refs.alerts.textContent = alertsText;
      this.refs.alerts.hidden = nAlerts === 0;
    }
    this.tick(view, now, th);
    const key = Array.isArray(view.sparkline) ? view.sparkline.join(',') + '|' + this.level : '';
    if (key !== this.sparkKey) {
      this.sparkKey = key;
      drawSparkline(this.refs.spark, view.sparkline, th.norm_ms, SPARK_COLOR[this.level]);
    }
  }

  /** Updates what moves with time alone: the wait clock, its hint and the level. */
  tick(view, now, th) {
    const wait = currentWaitMs(view, now);
    const waiting = (view.live?.waiting ?? 0) > 0;
    this.set('waitClock', this.refs.waitClock, waiting ? clock(wait) : '–');
    let hint = '';
    if (waiting) {
      hint = wait > th.norm_ms
        ? `${t('tile.over_norm')} ${clock(wait - th.norm_ms)}`
        : `${t('tile.to_norm')} ${clock(th.norm_ms - wait)}`;
    }
    this.set('waitHint', this.refs.waitHint, hint);
    const level = worseLevel(levelOf(waiting ? wait : 0, th), levelOf(avg15(view), th));
    if (level !== this.level || this.el.dataset.level !== level) {
      this.level = level;
      this.el.dataset.level = level;
    }
    this.sortWait = waiting ? wait : 0;
  }

  /** Forgets cached texts so the next render rewrites every label (after a language switch). */
  invalidate() {
    this.last.clear();
    applyI18n(this.el);
  }
}
