// Chinese by default, English on request; the choice is kept in localStorage.
// Elements with data-i18n="key" get their text from the table; data-i18n-title
// and data-i18n-placeholder set those attributes.

const LANG_KEY = 'deskpulse.lang';

const TEXT = {
  zh: {
    'app.title': 'deskpulse 客服实时监控',
    'me.title': '我的接待数据',
    'lang.switch': 'English',
    'status.connecting': '连接中',
    'status.live': '实时',
    'status.stale': '已断开',
    'status.login': '需要登录',
    'stale.banner': '与服务器的连接已断开，数据可能已过期，正在重新连接…',
    'login.title': '请输入访问令牌',
    'login.token': '令牌',
    'login.submit': '登录',
    'login.wrong': '令牌无效或无权限（{code}），请检查后重试。',
    'login.network': '无法连接服务器，请稍后重试。',
    'login.logout': '退出',
    'filter.team': '组',
    'filter.shop': '店铺',
    'filter.all': '全部',
    'tv.on': '大屏模式',
    'tv.off': '退出大屏',
    'mute.on': '静音',
    'mute.off': '开启声音',
    'totals.desk': '全部',
    'totals.team': '组',
    'totals.shop': '店铺',
    'totals.agents': '客服',
    'totals.waiting': '等待中',
    'totals.queued': '排队',
    'totals.oldest_queued': '最长排队',
    'totals.oldest_wait': '最长等待',
    'totals.avg15': '15分钟均响',
    'totals.avg_today': '今日均响',
    'totals.sales': '今日销售额',
    'tile.waiting': '等待',
    'tile.oldest': '最长等待',
    'tile.to_norm': '距超时',
    'tile.over_norm': '已超时',
    'tile.avg15': '15分钟均响',
    'tile.p90_15': '15分钟P90',
    'tile.avg_today': '今日均响',
    'tile.p90_today': '今日P90',
    'tile.reply_rate': '回复率',
    'tile.customers': '今日接待',
    'tile.sales': '今日销售额',
    'tile.spark': '近1小时',
    'agent.status.online': '在线',
    'agent.status.busy': '忙碌',
    'agent.status.away': '离开',
    'agent.status.offline': '离线',
    'agent.status.null': '未知',
    'alerts.title': '告警',
    'alerts.empty': '暂无告警',
    'alerts.more': '另有 {n} 条较早的告警',
    'alerts.ack': '确认',
    'alerts.acked_by': '{who} 已确认',
    'alerts.resolved': '已恢复',
    'alerts.detail': '详情',
    'alerts.ack_failed': '确认失败（{code}）',
    'rule.customer_waiting': '顾客等待过久',
    'rule.slow_average': '平均响应过慢',
    'severity.warning': '警告',
    'severity.critical': '严重',
    'detail.title': '客服详情',
    'detail.close': '关闭',
    'detail.histogram': '今日响应时间分布',
    'detail.minutes': '近1小时每分钟平均响应',
    'detail.waits': '当前等待',
    'detail.alerts': '今日告警',
    'detail.no_waits': '没有等待中的顾客',
    'detail.no_alerts': '今日无告警',
    'detail.shop': '店铺',
    'detail.customer': '顾客',
    'detail.conversation': '会话',
    'detail.since': '已等待',
    'detail.count': '次数',
    'detail.load_failed': '加载失败（{code}）',
    'me.today': '今日',
    'me.15m': '近15分钟',
    'me.standing': '组内排名',
    'me.standing_text': '你比组内 {p}% 的同事回复更快（{n} 人）',
    'me.no_standing': '暂无排名数据',
    'me.not_agent': '此页面仅供客服本人使用（当前令牌不是客服令牌）。',
    'me.responses': '回复次数',
    'me.avg': '平均响应',
    'me.p90': 'P90',
    'me.first': '平均首响',
    'me.slow': '超时回复',
    'me.customers': '接待人数',
    'me.reply_rate': '回复率',
    'me.orders': '订单数',
    'me.sales': '销售额',
    'me.conversion': '询单转化率',
    'me.status': '状态',
    'me.waiting': '等待中',
    'unit.people': '人',
    'empty.agents': '暂无客服数据',
  },
  en: {
    'app.title': 'deskpulse live desk',
    'me.title': 'My desk',
    'lang.switch': '中文',
    'status.connecting': 'connecting',
    'status.live': 'live',
    'status.stale': 'disconnected',
    'status.login': 'sign in',
    'stale.banner': 'Connection to the server lost; figures may be out of date. Reconnecting…',
    'login.title': 'Enter your access token',
    'login.token': 'Token',
    'login.submit': 'Sign in',
    'login.wrong': 'Token rejected ({code}). Check it and try again.',
    'login.network': 'Cannot reach the server. Try again shortly.',
    'login.logout': 'Sign out',
    'filter.team': 'Team',
    'filter.shop': 'Shop',
    'filter.all': 'All',
    'tv.on': 'TV mode',
    'tv.off': 'Exit TV',
    'mute.on': 'Mute',
    'mute.off': 'Unmute',
    'totals.desk': 'Desk',
    'totals.team': 'Team',
    'totals.shop': 'Shop',
    'totals.agents': 'Agents',
    'totals.waiting': 'Waiting',
    'totals.queued': 'Queued',
    'totals.oldest_queued': 'Oldest queued',
    'totals.oldest_wait': 'Oldest wait',
    'totals.avg15': '15m avg',
    'totals.avg_today': 'Today avg',
    'totals.sales': 'Sales today',
    'tile.waiting': 'Waiting',
    'tile.oldest': 'Oldest wait',
    'tile.to_norm': 'to norm',
    'tile.over_norm': 'over norm',
    'tile.avg15': '15m avg',
    'tile.p90_15': '15m p90',
    'tile.avg_today': 'Today avg',
    'tile.p90_today': 'Today p90',
    'tile.reply_rate': 'Reply rate',
    'tile.customers': 'Customers',
    'tile.sales': 'Sales',
    'tile.spark': 'Last hour',
    'agent.status.online': 'online',
    'agent.status.busy': 'busy',
    'agent.status.away': 'away',
    'agent.status.offline': 'offline',
    'agent.status.null': 'unknown',
    'alerts.title': 'Alerts',
    'alerts.empty': 'No active alerts',
    'alerts.more': '{n} older alerts not shown',
    'alerts.ack': 'Ack',
    'alerts.acked_by': 'acked by {who}',
    'alerts.resolved': 'resolved',
    'alerts.detail': 'Detail',
    'alerts.ack_failed': 'Ack failed ({code})',
    'rule.customer_waiting': 'Customer waiting',
    'rule.slow_average': 'Slow average',
    'severity.warning': 'warning',
    'severity.critical': 'critical',
    'detail.title': 'Agent detail',
    'detail.close': 'Close',
    'detail.histogram': "Today's response times",
    'detail.minutes': 'Last hour, average per minute',
    'detail.waits': 'Open waits',
    'detail.alerts': "Today's alerts",
    'detail.no_waits': 'No customer is waiting',
    'detail.no_alerts': 'No alerts today',
    'detail.shop': 'Shop',
    'detail.customer': 'Customer',
    'detail.conversation': 'Conversation',
    'detail.since': 'Waiting',
    'detail.count': 'Count',
    'detail.load_failed': 'Could not load ({code})',
    'me.today': 'Today',
    'me.15m': 'Last 15 min',
    'me.standing': 'Standing in team',
    'me.standing_text': 'You reply faster than {p}% of your team ({n} agents)',
    'me.no_standing': 'No standing yet',
    'me.not_agent': 'This page is for an agent\'s own token.',
    'me.responses': 'Responses',
    'me.avg': 'Avg response',
    'me.p90': 'p90',
    'me.first': 'Avg first response',
    'me.slow': 'Slow replies',
    'me.customers': 'Customers',
    'me.reply_rate': 'Reply rate',
    'me.orders': 'Orders',
    'me.sales': 'Sales',
    'me.conversion': 'Conversion',
    'me.status': 'Status',
    'me.waiting': 'Waiting',
    'unit.people': '',
    'empty.agents': 'No agents yet',
  },
};

let lang = readLang();
const listeners = new Set();

function readLang() {
  try {
    const saved = localStorage.getItem(LANG_KEY);
    if (saved === 'en' || saved === 'zh') return saved;
  } catch { /* storage may be blocked; fall back to Chinese */ }
  return 'zh';
}

/** The active language, `zh` or `en`. */
export function currentLang() {
  return lang;
}

/** Text for `key` in the active language, with `{name}` placeholders filled from `vars`. */
export function t(key, vars) {
  let s = TEXT[lang][key] ?? TEXT.zh[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

/** Re-labels every data-i18n element under `root`. */
export function applyI18n(root = document) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
}

/** Switches language, remembers it, and tells subscribers so they can re-render their text. */
export function setLang(next) {
  lang = next === 'en' ? 'en' : 'zh';
  try { localStorage.setItem(LANG_KEY, lang); } catch { /* not remembered, still switched */ }
  applyI18n();
  for (const fn of listeners) fn(lang);
}

/** Calls `fn(lang)` after every language switch. */
export function onLangChange(fn) {
  listeners.add(fn);
}

/** Wires a button that flips between the two languages. */
export function bindLangButton(button) {
  button.addEventListener('click', () => setLang(lang === 'zh' ? 'en' : 'zh'));
}
