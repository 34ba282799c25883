// The alert panel: active alerts newest first, ack buttons, and a beep or
// flash when a critical alert appears. Mute is remembered in localStorage.

import { api, ApiError } from './api.js';
import { duration, timeOfDay } from './format.js';
import { t } from './i18n.js';

const MUTE_KEY = 'deskpulse.mute';
const MAX_SHOWN = 100;

/** Active alerts by id, rendered into `#alerts`. */
export class AlertPanel {
  constructor(root, { onChange, shows } = {}) {
    this.root = root;
    this.list = root.querySelector('.alert-list');
    this.empty = root.querySelector('.alert-empty');
    this.more = root.querySelector('.alert-more');
    this.alerts = new Map();
    this.nodes = new Map();
    this.onChange = onChange ?? (() => {});
    // Which alerts the page's filters let through (all by default).
    this.shows = shows ?? (() => true);
    this.muted = readMute();
    this.audio = null;
    this.lastAlarm = 0;
    this.scheduled = false;
  }

  /** Renders on the next animation frame; many alert frames in a row cost one render. */
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  /** Replaces every alert with the snapshot's active list. */
  reset(alerts) {
    this.alerts.clear();
    for (const a of alerts ?? []) if (a && a.id != null && a.resolved_at == null) this.alerts.set(String(a.id), a);
    this.render();
  }

  /** Applies one `alert` stream frame. */
  apply(frame) {
    const a = frame.alert;
    if (!a || a.id == null) return;
    const id = String(a.id);
    const had = this.alerts.get(id);
    if (frame.event === 'resolved' || a.resolved_at != null) {
      this.alerts.delete(id);
    } else {
      this.alerts.set(id, { ...had, ...a });
    }
    const becameCritical = a.severity === 'critical' && (frame.event === 'raised' || frame.event === 'escalated')
      && (!had || had.severity !== 'critical');
    if (becameCritical) this.alarm();
    this.schedule();
  }

  /** Merges an alert returned by the ack endpoint. */
  merge(a) {
    const id = String(a.id);
    if (!this.alerts.has(id)) return;
    this.alerts.set(id, { ...this.alerts.get(id), ...a });
    this.schedule();
  }

  /** Active alert count per agent. */
  countsByAgent() {
    const counts = new Map();
    for (const a of this.alerts.values()) counts.set(a.agent, (counts.get(a.agent) ?? 0) + 1);
    return counts;
  }

  /** Re-fills every alert's text (after a language switch). */
  relabel() {
    this.langTag = (this.langTag ?? 0) + 1;
    this.render();
  }

  render() {
    const all = [...this.alerts.values()].filter((a) => this.shows(a)).sort((x, y) => (y.raised_at ?? 0) - (x.raised_at ?? 0)
      || String(y.id).localeCompare(String(x.id)));
    // A storm of alerts (a whole shop's queue backing up) must not freeze the
    // page: show the newest MAX_SHOWN and count the rest.
    const sorted = all.slice(0, MAX_SHOWN);
    this.more.hidden = all.length <= MAX_SHOWN;
    this.more.textContent = t('alerts.more', { n: all.length - MAX_SHOWN });
    const keep = new Set(sorted.map((a) => String(a.id)));
    for (const [id, node] of this.nodes) {
      if (!keep.has(id)) {
        node.remove();
        this.nodes.delete(id);
      }
    }
    let prev = null;
    for (const a of sorted) {
      const id = String(a.id);
      let node = this.nodes.get(id);
      if (!node) {
        node = this.build(a);
        this.nodes.set(id, node);
      }
      const sig = `${a.severity}|${a.acked_by}|${a.value_ms}|${a.raised_at}|${node.dataset.pending}|${node.dataset.error}|${this.langTag}`;
      if (node.sig !== sig) {
        node.sig = sig;
        this.fill(node, a);
      }
      const want = prev ? prev.nextSibling : this.list.firstChild;
      if (want !== node) this.list.insertBefore(node, want);
      prev = node;
    }
    this.empty.hidden = sorted.length > 0;
    this.root.dataset.count = String(all.length);
    this.onChange();
  }

  build(a) {
    const li = document.createElement('li');
    li.className = 'alert';
    li.dataset.alertId = String(a.id);
    li.innerHTML = `
      <span class="alert-sev"></span>
      <a class="alert-agent"></a>
      <span class="alert-shop"></span>
      <span class="alert-rule"></span>
      <span class="alert-value"></span>
      <time class="alert-time"></time>
      <span class="alert-acked"></span>
      <button type="button" class="ack-button"></button>`;
    li.querySelector('.ack-button').addEventListener('click', () => this.ack(li.dataset.alertId, li));
    return li;
  }

  fill(li, a) {
    li.dataset.severity = a.severity;
    li.dataset.agent = a.agent;
    li.dataset.rule = a.rule;
    li.dataset.acked = a.acked_by ? 'true' : 'false';
    li.querySelector('.alert-sev').textContent = t(`severity.${a.severity}`);
    const link = li.querySelector('.alert-agent');
    link.textContent = a.agent;
    link.href = `#/agent/${encodeURIComponent(a.agent)}`;
    link.title = t('alerts.detail');
    li.querySelector('.alert-shop').textContent = a.shop ?? '';
    li.querySelector('.alert-rule').textContent = t(`rule.${a.rule}`);
    li.querySelector('.alert-value').textContent = duration(a.value_ms);
    li.querySelector('.alert-time').textContent = timeOfDay(a.raised_at);
    const acked = li.querySelector('.alert-acked');
    const button = li.querySelector('.ack-button');
    if (a.acked_by) {
      acked.textContent = t('alerts.acked_by', { who: a.acked_by });
      button.hidden = true;
    } else {
      if (!li.dataset.error) acked.textContent = '';
      button.hidden = false;
      button.disabled = li.dataset.pending === 'true';
      button.textContent = t('alerts.ack');
    }
  }

  async ack(id, li) {
    li.dataset.pending = 'true';
    delete li.dataset.error;
    li.querySelector('.ack-button').disabled = true;
    try {
      const alert = await api(`/v1/alerts/${encodeURIComponent(id)}/ack`, { method: 'POST' });
      delete li.dataset.pending;
      if (alert && alert.id != null) this.merge(alert);
      else this.render();
    } catch (err) {
      delete li.dataset.pending;
      li.dataset.error = 'true';
      li.querySelector('.alert-acked').textContent = t('alerts.ack_failed', { code: err instanceof ApiError ? err.status : '?' });
      li.querySelector('.ack-button').disabled = false;
    }
  }

  /** Beeps (unless muted) and flashes the page for a new critical alert. */
  alarm() {
    const now = Date.now();
    if (now - this.lastAlarm < 2000) return; // a burst of alerts beeps once
    this.lastAlarm = now;
    document.body.dataset.lastAlarm = String(now);
    document.body.classList.remove('flash');
    requestAnimationFrame(() => document.body.classList.add('flash')); // restarts the CSS animation
    if (this.muted) return;
    try {
      this.audio ??= new AudioContext();
      const ctx = this.audio;
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = 'square';
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.5);
      osc.connect(gain).connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.55);
    } catch { /* no audio device or autoplay blocked: the flash still shows */ }
  }

  /** Wires the mute toggle button. */
  bindMute(button) {
    const paint = () => {
      button.textContent = this.muted ? t('mute.off') : t('mute.on');
      button.setAttribute('aria-pressed', String(this.muted));
      document.body.dataset.muted = String(this.muted);
    };
    button.addEventListener('click', () => {
      this.muted = !this.muted;
      try { localStorage.setItem(MUTE_KEY, this.muted ? '1' : '0'); } catch { /* not remembered */ }
      paint();
    });
    paint();
    return paint;
  }
}

function readMute() {
  try {
    return localStorage.getItem(MUTE_KEY) === '1';
  } catch {
    return false;
  }
}
