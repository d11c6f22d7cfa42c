// pgevents console: watches triggers, browses events and their attempts, redelivers,
// invokes and backfills, through the admin API of the server that served this page. Plain JavaScript, no
// framework, no build step, nothing loaded from elsewhere. Every value from the API is put
// on the page as text (textContent), never as HTML.
'use strict';

const TOKEN_KEY = 'pgevents.admin-token';
const REFRESH_MS = 3000;
const PAGE_SIZE = 25;
const PAYLOAD_SHOWN_BYTES = 1000000;

const $ = (id) => document.getElementById(id);

const state = {
  cursors: [null],       // `before` of every page visited; the last is the page shown
  selected: null,        // id of the event in the detail panel
  payloadOf: null,       // id whose payload the panel shows (payloads never change)
  done: new Map(),       // trigger -> {done, at}: delivered + failed at the last reading
  rates: new Map(),      // trigger -> events finished per second
  triggerNames: '',
  refreshing: false,
  eventsGen: 0,
  detailGen: 0,
};

// ---------- the API, with the token ----------

let tokenPrompt = null;

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// Calls the API; on 401 asks for the token and tries again. Resolves to {status, body, text};
// rejects with an Error carrying the API's message and `status`.
async function api(path, options = {}) {
  for (;;) {
    const headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
    // The server refuses a state change without this type, body or not: any other type is one
    // a page on another site could send.
    if ((options.method || 'GET') !== 'GET') headers['Content-Type'] = 'application/json';
    const token = storedToken();
    if (token) headers.Authorization = 'Bearer ' + token;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
    if (response.status === 401) {
      await askForToken(token !== null);
      continue;
    }
    const text = await response.text();
    let body = null;
    if (text && (response.headers.get('content-type') || '').includes('json')) {
      try { body = JSON.parse(text); } catch (_) { body = null; }
    }
    if (!response.ok) {
      const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return { status: response.status, body, text };
  }
}

// Shows the token dialog once, however many calls were refused; resolves when a token is given.
function askForToken(refused) {
  if (refused) sessionStorage.removeItem(TOKEN_KEY);
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const dialog = $('token-dialog');
      $('token-error').hidden = !refused;
      $('token-input').value = '';
      $('token-form').onsubmit = (e) => {
        e.preventDefault();
        const value = $('token-input').value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        $('forget').hidden = false;
        dialog.close();
        tokenPrompt = null;
        resolve();
      };
      if (!dialog.open) dialog.showModal();
      $('token-input').focus();
    });
  }
  return tokenPrompt;
}

// ---------- formatting ----------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of [].concat(children)) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 1) return Math.round(seconds * 1000) + ' ms';
  if (seconds < 60) return seconds.toFixed(1) + ' s';
  if (seconds < 3600) return Math.floor(seconds / 60) + 'm ' + Math.floor(seconds % 60) + 's';
  if (seconds < 86400) return Math.floor(seconds / 3600) + 'h ' + Math.floor((seconds % 3600) / 60) + 'm';
  return Math.floor(seconds / 86400) + 'd ' + Math.floor((seconds % 86400) / 3600) + 'h';
}

function ago(iso) {
  if (!iso) return '—';
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 0) return 'in ' + duration(-seconds);
  if (seconds < 1) return 'just now';
  return duration(seconds).replace(/\.\d/, '') + ' ago';
}

function timeCell(iso) {
  return el('td', { text: ago(iso), title: iso ? new Date(iso).toLocaleString() : '' });
}

function badge(status) {
  return el('span', { class: 'badge ' + status, text: status });
}

// Re-indents JSON text without parsing it, so big numbers stay exactly as PostgreSQL wrote them.
function indentJson(text) {
  const out = [];
  let depth = 0;
  let inString = false;
  let escaped = false;
  const newline = () => '\n' + '  '.repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out.push(c);
      if (escaped) escaped = false;
      else if (c === '\\') escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    switch (c) {
      case '"': inString = true; out.push(c); break;
      case '{': case '[': {
        const close = c === '{' ? '}' : ']';
        let j = i + 1;
        while (j < text.length && ' \n\r\t'.includes(text[j])) j++;
        if (text[j] === close) { out.push(c + close); i = j; break; }
        depth++;
        out.push(c + newline());
        break;
      }
      case '}': case ']': depth = Math.max(0, depth - 1); out.push(newline() + c); break;
      case ',': out.push(',' + newline()); break;
      case ':': out.push(': '); break;
      case ' ': case '\n': case '\r': case '\t': break;
      default: out.push(c);
    }
  }
  return out.join('');
}

let toastTimer = null;
function toast(message, bad = false) {
  const node = $('toast');
  node.textContent = message;
  node.classList.toggle('bad', bad);
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, bad ? 8000 : 4000);
}

// ---------- triggers ----------

async function loadTriggers() {
  const { body } = await api('/api/v1/triggers');
  const now = performance.now();
  const rows = body.triggers.map((t) => {
    const done = t.delivered + t.failed;
    const previous = state.done.get(t.name);
    if (previous && now - previous.at >= 500) {
      state.rates.set(t.name, Math.max(0, done - previous.done) / ((now - previous.at) / 1000));
    }
    if (!previous || now - previous.at >= 500) state.done.set(t.name, { done, at: now });
    const rate = state.rates.get(t.name);
    const count = (n, status) => el('td', { class: 'num' }, el('a', {
      class: `count ${status}-count` + (n === 0 ? ' zero' : ''),
      text: String(n),
      title: `show ${status} events of ${t.name}`,
      onclick: () => setFilters(t.name, status),
    }));
    return el('tr', { dataset: { trigger: t.name } }, [
      el('td', {}, el('strong', { text: t.name })),
      el('td', {}, el('code', { text: `${t.schema}.${t.table}` })),
      el('td', { class: 'capture' }, captureSummary(t)),
      count(t.pending, 'pending'),
      count(t.delivered, 'delivered'),
      count(t.failed, 'failed'),
      el('td', { class: 'num', text: duration(t.oldest_pending_seconds) }),
      el('td', { class: 'num', text: rate === undefined ? '—' : rate.toFixed(1) + '/s', title: 'events delivered or failed per second' }),
      el('td', { class: 'actions-cell' }, [
        el('button', {
          type: 'button', class: 'ghost small invoke', text: 'Invoke',
          onclick: () => openInvoke(t.name),
        }),
        el('button', {
          type: 'button', class: 'ghost small backfill', text: 'Backfill',
          title: 'send every existing row as a READ event',
          onclick: () => openBackfill(t.name),
        }),
      ]),
    ]);
  });
  $('triggers').tBodies[0].replaceChildren(...rows);
  $('no-triggers').hidden = rows.length > 0;
  const lag = body.capture_lag_seconds;
  $('lag').textContent = 'capture lag ' + duration(lag);
  $('lag').classList.toggle('warn', lag > 10);
  syncTriggerFilter(body.triggers.map((t) => t.name));
}

// What a trigger captures beyond its table: ordering, row filter, payload columns.
function captureSummary(t) {
  const ordering = typeof t.ordering === 'string'
    ? t.ordering
    : 'columns ' + ((t.ordering && t.ordering.columns) || []).join(', ');
  const lines = [['ordering', ordering]];
  if (t.where) lines.push(['where', t.where]);
  if (t.payload_columns) lines.push(['payload', t.payload_columns.join(', ')]);
  return lines.map(([label, value]) => el('div', { class: 'capture-line' }, [
    el('span', { class: 'muted', text: label + ' ' }),
    el('code', { text: value }),
  ]));
}

function syncTriggerFilter(names) {
  const key = names.join('\u0000');
  if (key === state.triggerNames) return;
  state.triggerNames = key;
  const select = $('f-trigger');
  const chosen = select.value;
  select.replaceChildren(el('option', { value: '', text: 'all' }),
    ...names.map((n) => el('option', { value: n, text: n })));
  if (chosen && !names.includes(chosen)) select.append(el('option', { value: chosen, text: chosen }));
  select.value = chosen;
}

function setFilters(trigger, status) {
  syncTriggerFilter(state.triggerNames ? state.triggerNames.split('\u0000') : []);
  if (trigger && ![...$('f-trigger').options].some((o) => o.value === trigger)) {
    $('f-trigger').append(el('option', { value: trigger, text: trigger }));
  }
  $('f-trigger').value = trigger;
  $('f-status').value = status;
  filtersChanged();
}

// ---------- the event list ----------

function filtersChanged() {
  state.cursors = [null];
  loadEvents().catch(showRefreshError);
}

async function loadEvents() {
  const gen = ++state.eventsGen;
  const params = new URLSearchParams();
  const trigger = $('f-trigger').value;
  const status = $('f-status').value;
  const time = $('f-time').value;
  if (trigger) params.set('trigger', trigger);
  if (status) params.set('status', status);
  if (time) params.set('since', new Date(Date.now() - Number(time) * 1000).toISOString());
  params.set('limit', String(PAGE_SIZE));
  const before = state.cursors[state.cursors.length - 1];
  if (before !== null) params.set('before', String(before));
  const { body } = await api('/api/v1/events?' + params.toString());
  if (gen !== state.eventsGen) return;
  const rows = body.events.map((e) => el('tr', {
    dataset: { id: e.id, status: e.status },
    class: e.id === state.selected ? 'selected' : '',
    onclick: () => select(e.id),
  }, [
    el('td', {}, el('code', { text: e.id.slice(0, 8) + '…' + e.id.slice(-6), title: e.id })),
    el('td', { text: e.trigger }),
    el('td', { text: e.action }),
    el('td', {}, badge(e.status)),
    el('td', { class: 'num', text: String(e.attempts) }),
    timeCell(e.created_at),
    el('td', { class: 'error-cell', text: e.status === 'delivered' ? '' : (e.last_error || ''), title: e.last_error || '' }),
  ]));
  $('events').tBodies[0].replaceChildren(...rows);
  $('no-events').hidden = rows.length > 0;
  state.nextBefore = body.next_before;
  $('older').disabled = body.next_before === null;
  $('newer').disabled = state.cursors.length <= 1;
  $('page').textContent = 'page ' + state.cursors.length;
}

// ---------- one event ----------

function select(id) {
  state.selected = id;
  for (const row of $('events').tBodies[0].rows) row.classList.toggle('selected', row.dataset.id === id);
  loadDetail().catch((e) => toast(e.message, true));
}

function closeDetail() {
  state.selected = null;
  state.payloadOf = null;
  $('detail').hidden = true;
  document.querySelector('.columns').classList.remove('with-detail');
  for (const row of $('events').tBodies[0].rows) row.classList.remove('selected');
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  const gen = ++state.detailGen;
  let detail;
  let payload = null;
  try {
    const wantPayload = state.payloadOf !== id;
    const [d, p] = await Promise.all([
      api('/api/v1/events/' + encodeURIComponent(id)),
      wantPayload ? api('/api/v1/events/' + encodeURIComponent(id) + '/payload') : null,
    ]);
    detail = d.body.event;
    detail.attemptLog = d.body.attempts;
    payload = p && p.text;
  } catch (e) {
    if (e.status === 404 && gen === state.detailGen) {
      closeDetail();
      toast(e.message, true);
      return;
    }
    throw e;
  }
  if (gen !== state.detailGen || id !== state.selected) return;
  $('detail').hidden = false;
  document.querySelector('.columns').classList.add('with-detail');
  $('d-id').textContent = detail.id;
  const status = $('d-status');
  status.className = 'badge ' + detail.status;
  status.textContent = detail.status;
  const meta = [
    ['Trigger', detail.trigger],
    ['Table', `${detail.schema}.${detail.table}`],
    ['Action', detail.action],
    ['Attempts', String(detail.attempts)],
    ['Captured', detail.created_at ? new Date(detail.created_at).toLocaleString() + ` (${ago(detail.created_at)})` : '—'],
  ];
  if (detail.status === 'pending') meta.push(['Next attempt', detail.next_attempt_at ? ago(detail.next_attempt_at) : '—']);
  if (detail.finished_at) meta.push([detail.status === 'failed' ? 'Failed' : 'Delivered', new Date(detail.finished_at).toLocaleString()]);
  if (detail.last_error) meta.push(['Last error', detail.last_error]);
  $('d-meta').replaceChildren(...meta.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
  if (payload !== null) {
    const shown = payload.length > PAYLOAD_SHOWN_BYTES
      ? indentJson(payload.slice(0, PAYLOAD_SHOWN_BYTES)) + `\n… (${payload.length} bytes in all; shortened here)`
      : indentJson(payload);
    $('d-payload').textContent = shown;
    state.payloadOf = id;
  }
  const attempts = detail.attemptLog.map((a) => el('tr', {}, [
    el('td', { text: String(a.attempt) }),
    timeCell(a.at),
    el('td', { class: 'num', text: a.duration_ms === null ? '—' : a.duration_ms + ' ms' }),
    el('td', { text: a.status === null ? '—' : String(a.status) }),
    el('td', {}, a.delivered ? badge('delivered') : [
      el('span', { class: 'error', text: a.error || 'failed' }),
      a.response ? el('details', {}, [el('summary', { text: 'response' }), el('pre', { text: a.response })]) : null,
    ]),
  ]));
  $('d-attempts').tBodies[0].replaceChildren(...attempts);
  $('no-attempts').hidden = attempts.length > 0;
}

async function redeliver() {
  const id = state.selected;
  if (!id) return;
  const button = $('redeliver');
  button.disabled = true;
  try {
    await api('/api/v1/events/' + encodeURIComponent(id) + '/redeliver', { method: 'POST' });
    toast('Redelivery queued');
    await refresh();
    setTimeout(refresh, 700);
  } catch (e) {
    toast(e.message, true);
  } finally {
    button.disabled = false;
  }
}

// ---------- invoke ----------

function openInvoke(trigger) {
  $('invoke-trigger').textContent = trigger;
  $('invoke-error').hidden = true;
  $('invoke-dialog').showModal();
  $('invoke-body').focus();
}

async function submitInvoke(e) {
  e.preventDefault();
  const trigger = $('invoke-trigger').textContent;
  const text = $('invoke-body').value;
  const error = $('invoke-error');
  try { JSON.parse(text); } catch (err) {
    error.textContent = 'Not JSON: ' + err.message;
    error.hidden = false;
    return;
  }
  try {
    const { body } = await api('/api/v1/triggers/' + encodeURIComponent(trigger) + '/invoke', {
      method: 'POST',
      body: text, // sent as typed: big numbers stay exact
    });
    $('invoke-dialog').close();
    toast('Invoked: event ' + body.id);
    select(body.id);
    refresh();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

// ---------- backfills ----------

async function loadBackfills() {
  const { body } = await api('/api/v1/backfills');
  const rows = body.backfills.map((b) => {
    const estimated = Math.max(b.rows_estimated, b.rows_done);
    const percent = estimated > 0 ? Math.floor((b.rows_done * 100) / estimated) : 100;
    return el('tr', { dataset: { backfill: String(b.id), state: b.state } }, [
      el('td', { class: 'num', text: String(b.id) }),
      el('td', {}, el('strong', { text: b.trigger })),
      el('td', {}, el('code', { text: b.where || '—' })),
      el('td', { title: b.error || '' }, el('span', { class: `badge ${b.state}`, text: b.state })),
      el('td', { class: 'num rows-done', text: String(b.rows_done) }),
      el('td', { class: 'num', text: String(estimated) }),
      el('td', { class: 'num' }, el('progress', { max: '100', value: String(b.state === 'done' ? 100 : percent) })),
      timeCell(b.started_at),
    ]);
  });
  $('backfills').tBodies[0].replaceChildren(...rows);
  $('backfills-section').hidden = rows.length === 0;
}

function openBackfill(trigger) {
  $('backfill-trigger').textContent = trigger;
  $('backfill-error').hidden = true;
  $('backfill-dialog').showModal();
  $('backfill-where').focus();
}

async function submitBackfill(e) {
  e.preventDefault();
  const trigger = $('backfill-trigger').textContent;
  const where = $('backfill-where').value.trim();
  const error = $('backfill-error');
  try {
    const { body } = await api('/api/v1/triggers/' + encodeURIComponent(trigger) + '/backfill', {
      method: 'POST',
      body: JSON.stringify(where ? { where } : {}),
    });
    $('backfill-dialog').close();
    toast('Backfill ' + body.id + ' of ' + trigger + ' started');
    refresh();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

// ---------- refreshing ----------

function showRefreshError(e) {
  $('updated').textContent = 'update failed: ' + e.message;
}

async function refresh() {
  if (state.refreshing) return;
  state.refreshing = true;
  try {
    await Promise.all([loadTriggers(), loadBackfills(), loadEvents(), loadDetail()]);
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    showRefreshError(e);
  } finally {
    state.refreshing = false;
  }
}

function start() {
  $('forget').hidden = storedToken() === null;
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $('refresh').addEventListener('click', refresh);
  $('filters').addEventListener('change', filtersChanged);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('older').addEventListener('click', () => {
    if (state.nextBefore === null || state.nextBefore === undefined) return;
    state.cursors.push(state.nextBefore);
    loadEvents().catch(showRefreshError);
  });
  $('newer').addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    loadEvents().catch(showRefreshError);
  });
  $('redeliver').addEventListener('click', redeliver);
  $('close').addEventListener('click', closeDetail);
  $('invoke-form').addEventListener('submit', submitInvoke);
  $('invoke-cancel').addEventListener('click', () => $('invoke-dialog').close());
  $('backfill-form').addEventListener('submit', submitBackfill);
  $('backfill-cancel').addEventListener('click', () => $('backfill-dialog').close());
  $('token-dialog').addEventListener('cancel', (e) => e.preventDefault());
  setInterval(() => {
    if ($('auto').checked && !document.hidden) refresh();
  }, REFRESH_MS);
  refresh();
}

start();
