// Pure formatting and threshold helpers shared by the wallboard and the agent page.

/** Default thresholds (ms), PROTOCOL §4; a snapshot frame's `thresholds` replaces them. */
export const DEFAULT_THRESHOLDS = Object.freeze({
  target_ms: 30000,
  norm_ms: 60000,
  clear_ms: 50000,
  critical_ms: 100000,
});

const LEVEL_RANK = { ok: 0, neutral: 1, warn: 2, crit: 3 };

/** Level of one duration: ≤ target ok, ≤ norm neutral, > norm warn, > critical crit. */
export function levelOf(ms, th) {
  if (ms == null || !Number.isFinite(ms)) return 'ok';
  if (ms > th.critical_ms) return 'crit';
  if (ms > th.norm_ms) return 'warn';
  if (ms > th.target_ms) return 'neutral';
  return 'ok';
}

/** The worse of two levels. */
export function worseLevel(a, b) {
  return LEVEL_RANK[a] >= LEVEL_RANK[b] ? a : b;
}

/** Rank of a level, 0 (ok) to 3 (crit), for sorting. */
export function levelRank(level) {
  return LEVEL_RANK[level] ?? 0;
}

/** A duration as `m:ss` (or `h:mm:ss`), `–` when absent. */
export function clock(ms) {
  if (ms == null || !Number.isFinite(ms)) return '–';
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** A response time: `850ms`, `12.3s`, `2m05s`; `–` when absent. */
export function duration(ms) {
  if (ms == null || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** Fen (1/100 yuan) as `¥1,234.50`; `–` when absent. */
export function yuan(fen) {
  if (fen == null || !Number.isFinite(fen)) return '–';
  const sign = fen < 0 ? '-' : '';
  const abs = Math.abs(Math.round(fen));
  const whole = Math.floor(abs / 100).toLocaleString('en-US');
  return `${sign}¥${whole}.${String(abs % 100).padStart(2, '0')}`;
}

/** A 0..1 rate as a percentage with one decimal; `–` when null. */
export function percent(rate) {
  if (rate == null || !Number.isFinite(rate)) return '–';
  return `${(rate * 100).toFixed(1)}%`;
}

/** An integer count, `–` when absent. */
export function count(n) {
  return n == null || !Number.isFinite(n) ? '–' : String(n);
}

/** A wall-clock time `HH:MM:SS` in the browser's zone. */
export function timeOfDay(ts) {
  if (ts == null) return '–';
  const d = new Date(ts);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, '0')).join(':');
}

/** Merges a thresholds object from the server over the defaults, ignoring non-numbers. */
export function mergeThresholds(base, incoming) {
  const out = { ...base };
  if (incoming && typeof incoming === 'object') {
    for (const k of Object.keys(DEFAULT_THRESHOLDS)) {
      if (Number.isFinite(incoming[k])) out[k] = incoming[k];
    }
  }
  return out;
}
