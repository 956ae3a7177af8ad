/* geventq operator dashboard: vanilla JS, no dependencies, no build step.
 *
 * Talks only to the JSON admin API ({"code":0,"message":"success","data":...}).
 * Every piece of data reaches the DOM through textContent / attributes, never
 * through innerHTML.
 */
'use strict';

(() => {
  const REFRESH_MS = 3000;
  const TOKEN_KEY = 'geventq.adminToken';
  const QUEUE_KEY = 'geventq.selectedQueue';
  const CHART_MINUTES = 30;
  const STATUS_NAMES = ['pending', 'running', 'done', 'failed', 'cancelled'];
  const DONE_COLORS = ['#2563eb', '#059669', '#7c3aed', '#0891b2', '#d97706', '#db2777', '#4f46e5', '#65a30d', '#0d9488', '#9333ea'];
  const FAIL_COLORS = ['#dc2626', '#f87171', '#b91c1c', '#fb7185', '#991b1b', '#ef4444', '#e11d48', '#fca5a5'];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // The page lives at <base>/ and this script at <base>/static/dashboard.js, so
  // the API root is one level above the script. Works behind a path prefix too.
  const BASE = (() => {
    try {
      const src = document.currentScript && document.currentScript.src;
      if (src) return new URL('../', src).href;
    } catch (_) { /* fall through */ }
    return new URL('./', window.location.href).href;
  })();

  const $ = (sel, root = document) => root.querySelector(sel);

  // ------------------------------------------------------------------ state
  const state = {
    queues: [],
    servers: [],
    schedules: [],
    editing: null,           // the schedule row being edited
    throughput: {},          // queue -> [{minute, done, failed}]
    throughputNow: null,     // optional server-provided "now"
    done5: {},               // queue -> done in last 5 minutes
    selectedQueue: null,     // queue_name
    tasks: { items: [], nextOffset: null, offset: 0, stack: [], status: '', type: '', limit: 20, loaded: false },
    detail: null,            // {table, id, task}
    auto: true,
    timer: null,
    awaitingToken: false,
    hiddenSeries: new Set(),
    lastRefresh: null,
    stale: false,
    queuesLoaded: false,
  };
  let memoryToken = null;    // fallback when sessionStorage is unavailable
  let tasksSeq = 0;
  let detailSeq = 0;
  let logSeq = 0;
  let inflight = null;

  // ------------------------------------------------------------ formatting
  function fmtInt(n) {
    const v = Number(n);
    return Number.isFinite(v) ? v.toLocaleString() : '–';
  }

  function humanAge(sec) {
    if (sec === null || sec === undefined || sec === '') return '–';
    let s = Number(sec);
    if (!Number.isFinite(s)) return '–';
    s = Math.max(0, s);
    if (s < 60) return `${Math.floor(s)}s`;
    if (s < 3600) {
      const m = Math.floor(s / 60);
      return `${m}m ${Math.floor(s - m * 60)}s`;
    }
    if (s < 86400) {
      const h = Math.floor(s / 3600);
      return `${h}h ${Math.floor((s - h * 3600) / 60)}m`;
    }
    const d = Math.floor(s / 86400);
    return `${d}d ${Math.floor((s - d * 86400) / 3600)}h`;
  }

  const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?/;

  // Naive database timestamps are parsed as if UTC: only differences matter.
  function parseTime(v) {
    if (typeof v !== 'string') return null;
    const m = TIME_RE.exec(v);
    if (!m) return null;
    const ms = m[7] ? Number((m[7] + '000').slice(0, 3)) : 0;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], m[6] ? +m[6] : 0, ms);
  }

  function fmtTime(v) {
    if (v === null || v === undefined || v === '') return '–';
    return String(v).replace('T', ' ').replace(/\.\d+$/, '');
  }

  // Compact form for table cells: drop the year.
  function fmtTimeShort(v) {
    const m = typeof v === 'string' ? TIME_RE.exec(v) : null;
    if (!m) return fmtTime(v);
    return `${m[2]}-${m[3]} ${m[4]}:${m[5]}:${m[6] || '00'}`;
  }

  function statusName(s) {
    return STATUS_NAMES[Number(s)] || `status ${s}`;
  }

  // ------------------------------------------------------------ DOM helpers
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'className') node.className = v;
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function badge(status) {
    const name = statusName(status);
    return el('span', { className: `badge badge-${name}`, text: name });
  }

  function setText(node, value) {
    const t = value === null || value === undefined ? '' : String(value);
    if (node.textContent !== t) node.textContent = t;
  }

  // ------------------------------------------------------------ error banner
  const banner = $('#error-banner');
  const bannerText = $('#error-text');
  let bannerSource = null;

  function showError(message, source = 'action') {
    bannerText.textContent = message;
    banner.dataset.source = source;
    banner.hidden = false;
    bannerSource = source;
  }

  function clearError(source) {
    if (source && bannerSource !== source) return;
    banner.hidden = true;
    bannerText.textContent = '';
    bannerSource = null;
    delete banner.dataset.source;
  }

  $('#error-dismiss').addEventListener('click', () => clearError());

  // ------------------------------------------------------------ token / auth
  class ApiError extends Error {
    constructor(message, status) { super(message); this.name = 'ApiError'; this.status = status; }
  }
  class AuthRequired extends Error {
    constructor() { super('admin token required'); this.name = 'AuthRequired'; }
  }

  function getToken() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (_) { return memoryToken; }
  }
  function setToken(tok) {
    memoryToken = tok || null;
    try {
      if (tok) window.sessionStorage.setItem(TOKEN_KEY, tok);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: memory only */ }
  }

  const overlay = $('#token-overlay');
  const tokenForm = $('#token-form');
  const tokenInput = $('#token-input');
  const tokenMessage = $('#token-message');

  function requireToken(hadToken) {
    setToken(null);
    if (state.awaitingToken) return;
    state.awaitingToken = true;
    tokenMessage.textContent = hadToken
      ? 'The admin token was rejected. Enter it again.'
      : 'This server requires an admin token. It is kept for this browser tab only.';
    tokenMessage.classList.toggle('form-error', hadToken);
    overlay.hidden = false;
    tokenInput.value = '';
    setTimeout(() => tokenInput.focus(), 0);
    renderLastRefresh();
  }

  tokenForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const tok = tokenInput.value.trim();
    if (!tok) { tokenInput.focus(); return; }
    setToken(tok);
    tokenInput.value = '';
    state.awaitingToken = false;
    overlay.hidden = true;
    refreshNow();
    if (state.detail) fetchLog(false);
  });

  // ------------------------------------------------------------ API client
  async function api(method, path, params, body) {
    if (state.awaitingToken) throw new AuthRequired();
    const url = new URL(path, BASE);
    if (params) {
      for (const [k, v] of Object.entries(params)) {
        if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
      }
    }
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store', credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      throw new ApiError(`Cannot reach the admin API (${e && e.message ? e.message : 'network error'})`, 0);
    }
    let json = null;
    try {
      const text = await resp.text();
      json = text ? JSON.parse(text) : null;
    } catch (_) { json = null; }
    if (resp.status === 401) {
      requireToken(Boolean(token));
      throw new AuthRequired();
    }
    if (!resp.ok || !json || typeof json !== 'object' || json.code !== 0) {
      const msg = json && typeof json.message === 'string' && json.message
        ? json.message
        : `HTTP ${resp.status}${resp.statusText ? ' ' + resp.statusText : ''}`;
      throw new ApiError(msg, resp.status);
    }
    return json.data;
  }

  // For user-triggered actions: banner stays until dismissed or the next success.
  function reportActionError(err, context) {
    if (err instanceof AuthRequired) return;
    showError(context ? `${context}: ${err.message}` : err.message, 'action');
  }

  // ------------------------------------------------------------ refresh loop
  function scheduleRefresh() {
    clearTimeout(state.timer);
    state.timer = null;
    if (!state.auto || document.hidden) return;
    state.timer = setTimeout(async () => {
      state.timer = null;
      await refreshAll();
      scheduleRefresh();
    }, REFRESH_MS);
  }

  function refreshNow() {
    clearTimeout(state.timer);
    state.timer = null;
    return refreshAll().then(scheduleRefresh);
  }

  function refreshAll() {
    if (!inflight) inflight = doRefresh().finally(() => { inflight = null; });
    return inflight;
  }

  // A refresh already in flight may predate a change just made: run a new one.
  async function refreshAfterChange() {
    if (inflight) await inflight.catch(() => {});
    await refreshAll();
  }

  async function doRefresh() {
    if (state.awaitingToken) return;
    const errors = [];
    const collect = (label) => (r) => {
      if (r.status === 'rejected' && !(r.reason instanceof AuthRequired)) errors.push({ label, message: String(r.reason && r.reason.message) });
    };
    const first = await Promise.allSettled([loadQueues(), loadServers(), loadThroughput(), loadSchedules()]);
    first.forEach((r, i) => collect(['queues', 'servers', 'throughput', 'schedules'][i])(r));
    const second = await Promise.allSettled([loadTasks(), refreshDetail()]);
    second.forEach((r, i) => collect(['tasks', 'task'][i])(r));
    if (state.awaitingToken) return;
    if (errors.length) {
      state.stale = true;
      const distinct = new Set(errors.map((e) => e.message));
      let msg;
      if (distinct.size === 1 && errors.length > 1) msg = errors[0].message; // e.g. the server is down
      else msg = `Loading ${errors[0].label} failed: ${errors[0].message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`;
      showError(msg, 'refresh');
    } else {
      state.stale = false;
      state.lastRefresh = new Date();
      clearError('refresh');
    }
    renderLastRefresh();
  }

  function renderLastRefresh() {
    const node = $('#last-refresh');
    let text;
    if (state.awaitingToken) text = 'Waiting for token';
    else if (!state.lastRefresh) text = state.stale ? 'Not loaded' : 'Loading…';
    else text = `Updated ${state.lastRefresh.toLocaleTimeString()}${state.stale ? ' · refresh failing' : ''}`;
    if (!state.auto) text += ' · paused';
    else if (document.hidden) text += ' · paused (tab hidden)';
    node.textContent = text;
    node.classList.toggle('stale', state.stale);
  }

  $('#auto-refresh').addEventListener('change', (ev) => {
    state.auto = ev.target.checked;
    renderLastRefresh();
    if (state.auto) refreshNow();
    else { clearTimeout(state.timer); state.timer = null; }
  });
  $('#btn-refresh').addEventListener('click', () => { refreshNow(); });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) { clearTimeout(state.timer); state.timer = null; renderLastRefresh(); }
    else if (state.auto) refreshNow();
    else renderLastRefresh();
  });

  // ------------------------------------------------------------ queues
  const queueRows = new Map(); // queue id -> row refs

  async function loadQueues() {
    const data = await api('GET', 'admin/queue/list');
    state.queues = Array.isArray(data) ? data : [];
    state.queuesLoaded = true;
    if (state.selectedQueue && !findQueue(state.selectedQueue)) selectQueue(null);
    if (!state.selectedQueue && state.queues.length) {
      let remembered = null;
      try { remembered = window.sessionStorage.getItem(QUEUE_KEY); } catch (_) { /* ignore */ }
      const pick = (remembered && findQueue(remembered)) || state.queues[0];
      selectQueue(pick.queue_name, { load: false });
    }
    renderQueues();
    renderSummary();
  }

  function findQueue(name) {
    return state.queues.find((q) => q.queue_name === name) || null;
  }

  function mergeQueue(updated) {
    if (!updated || typeof updated !== 'object') return;
    const i = state.queues.findIndex((q) => q.id === updated.id);
    if (i < 0) return;
    const prev = state.queues[i];
    const oldName = prev.queue_name;
    state.queues[i] = { ...prev, ...updated };
    if (!updated.counts) state.queues[i].counts = prev.counts;
    if (!('oldest_pending_age' in updated)) state.queues[i].oldest_pending_age = prev.oldest_pending_age;
    if (state.selectedQueue === oldName && updated.queue_name) state.selectedQueue = updated.queue_name;
  }

  function makeEditor(row, field, attrs, label) {
    const input = el('input', { ...attrs, name: field, 'aria-label': label, className: 'cell-input' });
    const btn = el('button', { type: 'button', className: 'btn btn-small btn-save', text: 'Save', disabled: true, dataset: { action: `save-${field}` } });
    const wrap = el('div', { className: 'editor' }, input, btn);
    const ed = { input, btn, wrap, original: '', dirty: false, saving: false };
    const markDirty = () => {
      ed.dirty = input.value !== ed.original;
      btn.disabled = !ed.dirty || ed.saving;
      wrap.classList.toggle('dirty', ed.dirty);
      input.classList.remove('invalid');
    };
    input.addEventListener('input', markDirty);
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); saveEditor(row, field, ed); }
      else if (ev.key === 'Escape') { input.value = ed.original; markDirty(); input.blur(); }
    });
    btn.addEventListener('click', () => saveEditor(row, field, ed));
    ed.sync = (value) => {
      ed.original = value;
      if (!ed.dirty && !ed.saving) input.value = value;
      markDirty();
    };
    return ed;
  }

  async function saveEditor(row, field, ed) {
    if (ed.saving) return;
    const q = state.queues.find((x) => x.id === row.id);
    if (!q) return;
    let value;
    if (field === 'max_workers') {
      value = Number(ed.input.value);
      if (!Number.isInteger(value) || value < 1 || value > 10000) {
        ed.input.classList.add('invalid');
        showError(`max_workers for ${q.queue_name} must be a whole number from 1 to 10000`, 'action');
        return;
      }
    } else {
      value = ed.input.value.trim();
      if (value.length > 50) {
        ed.input.classList.add('invalid');
        showError(`server_id for ${q.queue_name} is longer than 50 characters`, 'action');
        return;
      }
    }
    ed.saving = true;
    ed.btn.disabled = true;
    ed.wrap.classList.add('saving');
    try {
      const updated = await api('PUT', 'admin/queue/update', { id: q.id }, { [field]: value });
      ed.dirty = false;
      mergeQueue(updated || { id: q.id, [field]: value });
      clearError('action');
      ed.saving = false;
      renderQueues();
      flash(ed.wrap);
    } catch (err) {
      reportActionError(err, `Could not update ${field} of ${q.queue_name}`);
      ed.input.classList.add('invalid');
    } finally {
      ed.saving = false;
      ed.wrap.classList.remove('saving');
      ed.btn.disabled = !ed.dirty;
    }
  }

  function flash(node) {
    node.classList.remove('saved');
    void node.offsetWidth; // restart the animation
    node.classList.add('saved');
    setTimeout(() => node.classList.remove('saved'), 1200);
  }

  async function toggleQueue(row) {
    const q = state.queues.find((x) => x.id === row.id);
    if (!q) return;
    const next = Number(q.status) === 1 ? 0 : 1;
    row.toggle.disabled = true;
    try {
      const updated = await api('PUT', 'admin/queue/update', { id: q.id }, { status: next });
      mergeQueue(updated || { id: q.id, status: next });
      clearError('action');
      renderQueues();
      renderSummary();
    } catch (err) {
      reportActionError(err, `Could not ${next ? 'enable' : 'disable'} ${q.queue_name}`);
    } finally {
      row.toggle.disabled = false;
    }
  }

  function buildQueueRow(id) {
    const row = { id };
    const tr = el('tr', { tabindex: '0', className: 'clickable' });
    row.tr = tr;
    row.name = el('strong');
    row.nameCell = el('td', { dataset: { field: 'queue_name' } }, row.name);
    row.table = el('code');
    row.serverLabel = el('span', { className: 'sr-only' });
    row.server = makeEditor(row, 'server_id', { type: 'text', placeholder: 'any', maxlength: '50', spellcheck: 'false', size: '11' }, 'Pinned server');
    row.workers = makeEditor(row, 'max_workers', { type: 'number', min: '1', max: '10000', step: '1' }, 'Max workers');
    row.scan = el('td', { className: 'num', dataset: { field: 'scan_interval' } });
    row.toggle = el('button', { type: 'button', role: 'switch', className: 'switch', dataset: { action: 'toggle-status' } },
      el('span', { className: 'switch-knob', 'aria-hidden': 'true' }), el('span', { className: 'switch-label' }));
    row.toggle.addEventListener('click', () => toggleQueue(row));
    row.limits = el('span', { className: 'limits' });
    row.held = el('span', { className: 'held' });
    row.counts = {};
    const countCells = STATUS_NAMES.map((s) => {
      const td = el('td', { className: `num count count-${s}`, dataset: { field: s } });
      row.counts[s] = td;
      return td;
    });
    row.oldest = el('td', { className: 'num', dataset: { field: 'oldest_pending_age' } });
    row.done5 = el('td', { className: 'num', dataset: { field: 'done_5m' } });
    tr.append(
      row.nameCell,
      el('td', { dataset: { field: 'table_name' } }, row.table),
      el('td', { dataset: { field: 'server_id' } }, row.serverLabel, row.server.wrap),
      el('td', { dataset: { field: 'max_workers' } }, row.workers.wrap),
      row.scan,
      el('td', { dataset: { field: 'status' } }, row.toggle),
      el('td', { dataset: { field: 'limits' } }, row.limits, row.held),
      ...countCells,
      row.oldest,
      row.done5,
    );
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('input, button, select, textarea, a, label')) return;
      const q = state.queues.find((x) => x.id === row.id);
      if (q) selectQueue(q.queue_name);
    });
    tr.addEventListener('keydown', (ev) => {
      if (ev.target !== tr || (ev.key !== 'Enter' && ev.key !== ' ')) return;
      ev.preventDefault();
      const q = state.queues.find((x) => x.id === row.id);
      if (q) selectQueue(q.queue_name);
    });
    return row;
  }

  // "≤ 6 · 60/2s · 2/key": the queue's limits across the cluster, or a dash.
  function describeLimits(q) {
    const parts = [];
    if (Number(q.global_max_workers) > 0) parts.push(`≤ ${q.global_max_workers}`);
    if (Number(q.rate_limit) > 0) parts.push(`${q.rate_limit}/${q.rate_period}s`);
    if (Number(q.key_max_workers) > 0) parts.push(`${q.key_max_workers}/key`);
    return parts.length ? parts.join(' · ') : '–';
  }

  // "held 12 global, 3 key" from the latest claim; "paused until …" after a RateLimited.
  function describeHeld(held) {
    if (!held) return '';
    const parts = ['global', 'rate', 'key', 'paused']
      .filter((reason) => Number(held[reason]) > 0)
      .map((reason) => `${fmtInt(Number(held[reason]))} ${reason}`);
    let text = parts.length ? `held ${parts.join(', ')}` : '';
    if (held.paused_until) text += `${text ? '; ' : ''}paused until ${fmtTimeShort(held.paused_until)}`;
    return text;
  }

  function updateQueueRow(row, q) {
    const tr = row.tr;
    if (tr.dataset.queue !== q.queue_name) tr.dataset.queue = q.queue_name;
    tr.dataset.queueId = String(q.id);
    const enabled = Number(q.status) === 1;
    tr.classList.toggle('disabled', !enabled);
    tr.classList.toggle('selected', state.selectedQueue === q.queue_name);
    tr.setAttribute('aria-selected', state.selectedQueue === q.queue_name ? 'true' : 'false');
    setText(row.name, q.queue_name);
    const extra = [`id ${q.id}`];
    if (q.task_timeout !== undefined && q.task_timeout !== null) extra.push(`task timeout ${q.task_timeout}s`);
    if (q.retention_days !== undefined && q.retention_days !== null) extra.push(`retention ${q.retention_days} d`);
    if (q.updated_at) extra.push(`updated ${fmtTime(q.updated_at)}`);
    row.nameCell.title = extra.join(' · ');
    setText(row.table, q.table_name);
    setText(row.serverLabel, q.server_id ? q.server_id : 'any');
    row.server.sync(q.server_id ? String(q.server_id) : '');
    row.server.input.title = q.server_id ? `Pinned to ${q.server_id}` : 'Runs on any server; type a server_id to pin it';
    row.workers.sync(String(q.max_workers ?? ''));
    setText(row.scan, q.scan_interval !== undefined && q.scan_interval !== null ? `${q.scan_interval}s` : '–');
    row.toggle.setAttribute('aria-checked', enabled ? 'true' : 'false');
    row.toggle.classList.toggle('on', enabled);
    row.toggle.title = enabled ? 'Enabled: click to disable' : 'Disabled: click to enable';
    setText(row.toggle.lastChild, enabled ? 'On' : 'Off');
    setText(row.limits, describeLimits(q));
    const held = describeHeld(q.held_back);
    setText(row.held, held);
    row.held.hidden = !held;
    const counts = q.counts || {};
    for (const s of STATUS_NAMES) {
      const n = Number(counts[s] || 0);
      setText(row.counts[s], fmtInt(n));
      row.counts[s].classList.toggle('zero', n === 0);
    }
    const age = q.oldest_pending_age;
    setText(row.oldest, humanAge(age));
    const a = Number(age);
    row.oldest.classList.toggle('warn', age !== null && age !== undefined && a >= 60 && a < 600);
    row.oldest.classList.toggle('bad', age !== null && age !== undefined && a >= 600);
    const d5 = state.done5[q.queue_name];
    setText(row.done5, fmtInt(d5 || 0));
    row.done5.classList.toggle('zero', !d5);
  }

  function renderQueues() {
    const tbody = $('#queues-table tbody');
    const seen = new Set();
    state.queues.forEach((q, i) => {
      let row = queueRows.get(q.id);
      if (!row) { row = buildQueueRow(q.id); queueRows.set(q.id, row); }
      updateQueueRow(row, q);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      seen.add(q.id);
    });
    for (const [id, row] of queueRows) {
      if (!seen.has(id)) { row.tr.remove(); queueRows.delete(id); }
    }
    $('#queues-empty').hidden = state.queues.length > 0;
  }

  function renderSummary() {
    const enabled = state.queues.filter((q) => Number(q.status) === 1).length;
    $('#stat-queues').textContent = `${enabled} / ${state.queues.length}`;
    const alive = state.servers.filter((s) => s.alive).length;
    $('#stat-servers').textContent = `${alive} / ${state.servers.length}`;
    const sum = (k) => state.queues.reduce((t, q) => t + Number((q.counts || {})[k] || 0), 0);
    $('#stat-pending').textContent = fmtInt(sum('pending'));
    $('#stat-running').textContent = fmtInt(sum('running'));
    const failed = sum('failed');
    $('#stat-failed').textContent = fmtInt(failed);
    $('#stat-failed').classList.toggle('bad', failed > 0);
    $('#stat-done5').textContent = fmtInt(Object.values(state.done5).reduce((t, n) => t + Number(n || 0), 0));
  }

  // ------------------------------------------------------------ servers
  async function loadServers() {
    const data = await api('GET', 'admin/server/list');
    state.servers = Array.isArray(data) ? data : [];
    renderServers();
    renderSummary();
  }

  function renderServers() {
    const tbody = $('#servers-table tbody');
    const rows = [...state.servers].sort((a, b) => (Number(Boolean(b.alive)) - Number(Boolean(a.alive)))
      || String(a.server_id).localeCompare(String(b.server_id)));
    const frag = document.createDocumentFragment();
    for (const s of rows) {
      const alive = Boolean(s.alive);
      const queues = Array.isArray(s.queues) ? s.queues : [];
      const qcell = el('td', { className: 'chips', dataset: { field: 'queues' } });
      if (queues.length) for (const name of queues) qcell.append(el('span', { className: 'chip', text: name }));
      else qcell.append(el('span', { className: 'muted', text: 'none' }));
      const hostText = s.host ? String(s.host) : '';
      const hostTitle = [s.pid ? `pid ${s.pid}` : null, s.admin_address ? `admin ${s.admin_address}` : null,
        s.started_at ? `started ${fmtTime(s.started_at)}` : null].filter(Boolean).join(' · ');
      // The state is shown only when it says more than the badge does.
      const st = s.state ? String(s.state) : '';
      const routine = alive ? ['alive', 'running', 'online', 'active', 'up', 'ok'] : ['dead'];
      const stateText = st && !routine.includes(st.toLowerCase()) ? st : '';
      frag.append(el('tr', { dataset: { server: s.server_id }, className: alive ? '' : 'dead-row' },
        el('td', { dataset: { field: 'server_id' } }, el('strong', { text: s.server_id })),
        el('td', { dataset: { field: 'host' }, title: hostTitle || null, text: hostText || '–' }),
        el('td', { dataset: { field: 'alive' } },
          el('span', { className: `badge ${alive ? 'badge-alive' : 'badge-dead'}`, text: alive ? 'alive' : 'dead', title: st ? `state: ${st}` : null }),
          stateText ? el('span', { className: 'muted state-text', text: stateText }) : null),
        el('td', { className: 'num', dataset: { field: 'heartbeat_age' }, title: s.last_heartbeat ? `last heartbeat ${fmtTime(s.last_heartbeat)}` : null,
          text: s.heartbeat_age === null || s.heartbeat_age === undefined ? '–' : `${humanAge(s.heartbeat_age)} ago` }),
        qcell,
        el('td', { className: 'num', dataset: { field: 'running' }, text: fmtInt(s.running || 0) }),
      ));
    }
    tbody.replaceChildren(frag);
    $('#servers-empty').hidden = state.servers.length > 0;
  }

  // ------------------------------------------------------------ schedules
  async function loadSchedules() {
    const data = await api('GET', 'admin/schedule/list');
    state.schedules = Array.isArray(data) ? data : [];
    renderSchedules();
  }

  // "Every fifth minute" reads better than "*/5 * * * *"; both are shown.
  function cadenceCell(s) {
    const td = el('td', { className: 'sched-when', dataset: { field: 'cadence' } });
    const raw = s.cron ? String(s.cron) : `interval_seconds ${s.interval_seconds}`;
    td.append(el('span', { text: s.description || raw }));
    if (s.description) td.append(el('span', { className: 'muted cadence-raw', text: raw }));
    if (s.error) td.append(el('span', { className: 'cadence-error', text: s.error }));
    return td;
  }

  function nextFiresCell(s) {
    const fires = Array.isArray(s.next_fires) ? s.next_fires : [];
    const td = el('td', { className: 'sched-next', dataset: { field: 'next_fires' }, title: fires.map(fmtTime).join('\n') || null });
    if (!fires.length) { td.append(el('span', { className: 'muted', text: '–' })); return td; }
    td.append(el('span', { className: Number(s.status) === 1 ? '' : 'muted', text: fmtTime(fires[0]) }));
    if (fires.length > 1) {
      td.append(el('span', { className: 'muted later', text: `then ${fmtTimeShort(fires[1])}${fires.length > 2 ? ' …' : ''}` }));
    }
    return td;
  }

  function lastFireCell(s) {
    const td = el('td', { dataset: { field: 'last_fire' } });
    if (!s.last_fire_at) { td.append(el('span', { className: 'muted', text: 'never' })); return td; }
    td.append(el('span', { text: `${fmtTimeShort(s.last_fire_at)} ` }));
    if (s.last_task_status !== null && s.last_task_status !== undefined) {
      const b = badge(s.last_task_status);
      b.title = `task #${s.last_task_id} in ${s.last_task_table}`;
      td.append(b);
    } else if (s.last_task_id) {
      td.append(el('span', { className: 'muted', text: `task #${s.last_task_id} gone` }));
    }
    return td;
  }

  function scheduleButton(s, label, kind, extra) {
    return el('button', {
      type: 'button', className: `btn btn-small${extra ? ` ${extra}` : ''}`, text: label,
      dataset: { action: kind }, onclick: (ev) => scheduleAction(s, kind, ev.currentTarget),
    });
  }

  function renderSchedules() {
    const tbody = $('#schedules-table tbody');
    const frag = document.createDocumentFragment();
    for (const s of state.schedules) {
      const enabled = Number(s.status) === 1;
      const policy = `${s.misfire_policy}${s.misfire_policy === 'all' ? ` ≤ ${s.max_catchup}` : ''}`;
      frag.append(el('tr', { dataset: { schedule: s.name }, className: enabled ? '' : 'dead-row' },
        el('td', { dataset: { field: 'name' } }, el('strong', { text: s.name }),
          el('span', { className: 'muted cadence-raw', text: s.task_type })),
        el('td', { dataset: { field: 'queue' }, text: s.queue_name }),
        cadenceCell(s),
        el('td', { dataset: { field: 'timezone' }, text: s.interval_seconds ? '–' : s.timezone }),
        nextFiresCell(s),
        lastFireCell(s),
        el('td', { className: 'sched-policy', dataset: { field: 'policy' } },
          el('span', { text: policy }),
          el('span', { className: 'muted', text: `grace ${s.misfire_grace_seconds}s${s.overlap === 'skip' ? ' · no overlap' : ''}` })),
        el('td', { dataset: { field: 'status' } },
          el('span', { className: `badge ${enabled ? 'badge-enabled' : 'badge-paused'}`, text: enabled ? 'enabled' : 'paused' })),
        el('td', { className: 'sched-actions' },
          enabled ? scheduleButton(s, 'Pause', 'pause') : scheduleButton(s, 'Resume', 'resume', 'btn-primary'),
          scheduleButton(s, 'Run now', 'run'),
          scheduleButton(s, 'Edit', 'edit')),
      ));
    }
    tbody.replaceChildren(frag);
    $('#schedules-empty').hidden = state.schedules.length > 0;
  }

  async function scheduleAction(s, kind, button) {
    if (kind === 'edit') { openScheduleEditor(s); return; }
    button.disabled = true;
    try {
      const data = await api('POST', `admin/schedule/${kind}`, { id: s.id });
      clearError('action');
      if (kind === 'run' && data) button.title = `task #${data.task_id} in ${data.task_table}`;
      await refreshAfterChange();
    } catch (err) {
      reportActionError(err, `Could not ${kind} schedule ${s.name}`);
    } finally {
      button.disabled = false;
    }
  }

  const scheduleOverlay = $('#schedule-overlay');
  const scheduleForm = $('#schedule-form');
  const SCHEDULE_INPUTS = {
    cron: '#sf-cron', interval_seconds: '#sf-interval', timezone: '#sf-timezone', misfire_policy: '#sf-policy',
    misfire_grace_seconds: '#sf-grace', max_catchup: '#sf-catchup', overlap: '#sf-overlap', task_params: '#sf-params',
  };

  function openScheduleEditor(s) {
    state.editing = s;
    setText($('#sf-name'), s.name);
    for (const [field, sel] of Object.entries(SCHEDULE_INPUTS)) {
      let v = s[field];
      if (field === 'task_params') v = v === null || v === undefined ? '' : JSON.stringify(v, null, 2);
      $(sel).value = v === null || v === undefined ? '' : String(v);
    }
    $('#sf-error').hidden = true;
    scheduleOverlay.hidden = false;
    setTimeout(() => $('#sf-cron').focus(), 0);
  }

  function closeScheduleEditor() {
    state.editing = null;
    scheduleOverlay.hidden = true;
  }

  // Only what changed is sent; an emptied cron with an interval switches to a fixed rate and back.
  function scheduleChanges(s) {
    const body = {};
    const cron = $('#sf-cron').value.trim();
    const interval = $('#sf-interval').value.trim();
    if ((cron || null) !== (s.cron || null)) body.cron = cron || null;
    const iv = interval ? Number(interval) : null;
    if (iv !== (s.interval_seconds ?? null)) body.interval_seconds = iv;
    for (const field of ['timezone', 'misfire_policy', 'overlap']) {
      const v = $(SCHEDULE_INPUTS[field]).value.trim();
      if (v && v !== s[field]) body[field] = v;
    }
    for (const field of ['misfire_grace_seconds', 'max_catchup']) {
      const v = $(SCHEDULE_INPUTS[field]).value.trim();
      if (v && Number(v) !== Number(s[field])) body[field] = Number(v);
    }
    const text = $('#sf-params').value.trim();
    const params = text ? JSON.parse(text) : null;  // a SyntaxError is reported as such
    if (JSON.stringify(params) !== JSON.stringify(s.task_params ?? null)) body.task_params = params;
    return body;
  }

  scheduleForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const s = state.editing;
    if (!s) return;
    const problem = $('#sf-error');
    let body;
    try {
      body = scheduleChanges(s);
    } catch (err) {
      problem.textContent = `task_params: not valid JSON (${err.message})`;
      problem.hidden = false;
      return;
    }
    if (!Object.keys(body).length) { closeScheduleEditor(); return; }
    $('#sf-save').disabled = true;
    try {
      await api('PUT', 'admin/schedule/update', { id: s.id }, body);
      closeScheduleEditor();
      clearError('action');
      await refreshAfterChange();
    } catch (err) {
      if (err instanceof AuthRequired) { closeScheduleEditor(); return; }
      problem.textContent = err.message;  // names the field: "cron: Bad minute in '61 * * * *'"
      problem.hidden = false;
    } finally {
      $('#sf-save').disabled = false;
    }
  });
  $('#sf-cancel').addEventListener('click', closeScheduleEditor);
  scheduleOverlay.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeScheduleEditor(); });

  // ------------------------------------------------------------ throughput
  async function loadThroughput() {
    const [d30, d5] = await Promise.all([
      api('GET', 'admin/queue/throughput', { minutes: CHART_MINUTES }),
      api('GET', 'admin/queue/throughput', { minutes: 5 }),
    ]);
    state.throughput = (d30 && d30.queues && typeof d30.queues === 'object') ? d30.queues : {};
    state.throughputNow = d30 && typeof d30.now === 'string' ? d30.now : null;
    const done5 = {};
    const q5 = (d5 && d5.queues && typeof d5.queues === 'object') ? d5.queues : {};
    for (const [name, points] of Object.entries(q5)) {
      done5[name] = (Array.isArray(points) ? points : []).reduce((t, p) => t + Number(p.done || 0), 0);
    }
    state.done5 = done5;
    renderChart();
    renderQueues();
    renderSummary();
  }

  const minuteKey = (ms) => Math.floor(ms / 60000);

  function localNowMinute() {
    const d = new Date();
    return minuteKey(Date.UTC(d.getFullYear(), d.getMonth(), d.getDate(), d.getHours(), d.getMinutes()));
  }

  function fmtMinute(key) {
    const d = new Date(key * 60000);
    return `${String(d.getUTCHours()).padStart(2, '0')}:${String(d.getUTCMinutes()).padStart(2, '0')}`;
  }

  function chartSeries() {
    // Order: queues as listed, then any other names the endpoint reports.
    const names = state.queues.map((q) => q.queue_name);
    for (const n of Object.keys(state.throughput).sort()) if (!names.includes(n)) names.push(n);
    let maxKey = null;
    const parsed = new Map();
    for (const name of names) {
      const m = new Map();
      const pts = Array.isArray(state.throughput[name]) ? state.throughput[name] : [];
      for (const p of pts) {
        const t = parseTime(p && p.minute);
        if (t === null) continue;
        const k = minuteKey(t);
        const cur = m.get(k) || { done: 0, failed: 0 };
        cur.done += Number(p.done || 0);
        cur.failed += Number(p.failed || 0);
        m.set(k, cur);
        if (maxKey === null || k > maxKey) maxKey = k;
      }
      parsed.set(name, m);
    }
    // The minutes are on the database clock; prefer the server's "now" when it
    // sends one, else the browser's, unless the data shows the clocks differ.
    let end = state.throughputNow ? parseTime(state.throughputNow) : null;
    end = end !== null ? minuteKey(end) : localNowMinute();
    if (!state.throughputNow && maxKey !== null && (maxKey > end || maxKey < end - (CHART_MINUTES - 1))) end = maxKey;
    const start = end - (CHART_MINUTES - 1);
    const series = names.map((name, i) => {
      const m = parsed.get(name);
      const done = [];
      const failed = [];
      for (let k = start; k <= end; k++) {
        const v = m.get(k);
        done.push(v ? v.done : 0);
        failed.push(v ? v.failed : 0);
      }
      return {
        name, done, failed,
        doneColor: DONE_COLORS[i % DONE_COLORS.length],
        failColor: FAIL_COLORS[i % FAIL_COLORS.length],
        doneTotal: done.reduce((a, b) => a + b, 0),
        failTotal: failed.reduce((a, b) => a + b, 0),
      };
    });
    return { series, start, end };
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }

  function renderChart() {
    const box = $('#chart-box');
    const chart = $('#throughput-chart');
    const W = Math.max(320, Math.round(box.clientWidth || 640));
    const H = 240;
    const M = { l: 40, r: 14, t: 12, b: 26 };
    const iw = W - M.l - M.r;
    const ih = H - M.t - M.b;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    chart.setAttribute('width', String(W));
    chart.setAttribute('height', String(H));
    const { series, start } = chartSeries();
    const visible = series.filter((s) => !state.hiddenSeries.has(s.name));
    let vmax = 0;
    for (const s of visible) for (let i = 0; i < CHART_MINUTES; i++) vmax = Math.max(vmax, s.done[i], s.failed[i]);
    const ymax = niceMax(vmax);
    const x = (i) => M.l + (iw * i) / (CHART_MINUTES - 1);
    const y = (v) => M.t + ih - (ih * v) / ymax;
    const nodes = [];

    const grid = svg('g', { class: 'grid-lines' });
    // Whole-number steps where the scale allows (15 -> 0, 3, 6, ... rather than 3.75).
    const ticks = [4, 5, 3, 2].find((n) => Number.isInteger(ymax / n)) || 4;
    for (let t = 0; t <= ticks; t++) {
      const v = (ymax * t) / ticks;
      const yy = y(v);
      grid.append(svg('line', { x1: M.l, x2: W - M.r, y1: yy, y2: yy, class: t === 0 ? 'axis' : 'gridline' }));
      grid.append(svg('text', { x: M.l - 6, y: yy + 4, 'text-anchor': 'end', class: 'tick' }, Number.isInteger(v) ? v : v.toFixed(1)));
    }
    for (let i = 0; i < CHART_MINUTES; i += 5) {
      const idx = (CHART_MINUTES - 1) - (Math.floor((CHART_MINUTES - 1) / 5) * 5) + i; // end aligned
      if (idx >= CHART_MINUTES) break;
      grid.append(svg('line', { x1: x(idx), x2: x(idx), y1: M.t + ih, y2: M.t + ih + 4, class: 'axis' }));
      grid.append(svg('text', { x: x(idx), y: H - 8, 'text-anchor': 'middle', class: 'tick' }, fmtMinute(start + idx)));
    }
    nodes.push(grid);

    const path = (vals) => vals.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join('');
    const lines = svg('g', { class: 'series' });
    for (const s of visible) {
      lines.append(svg('path', { d: path(s.done), class: 'line line-done', stroke: s.doneColor, 'data-series': `${s.name}:done` }));
      if (s.failTotal > 0) {
        lines.append(svg('path', { d: path(s.failed), class: 'line line-failed', stroke: s.failColor, 'data-series': `${s.name}:failed` }));
      }
      s.done.forEach((v, i) => { if (v > 0) lines.append(svg('circle', { cx: x(i), cy: y(v), r: 2.5, fill: s.doneColor, class: 'dot' })); });
      s.failed.forEach((v, i) => { if (v > 0) lines.append(svg('circle', { cx: x(i), cy: y(v), r: 2.5, fill: s.failColor, class: 'dot' })); });
    }
    nodes.push(lines);

    // Hover columns: one transparent band per minute with a native tooltip.
    const hover = svg('g', { class: 'hover-cols' });
    const bw = iw / (CHART_MINUTES - 1);
    for (let i = 0; i < CHART_MINUTES; i++) {
      const rect = svg('rect', { x: Math.max(M.l, x(i) - bw / 2), y: M.t, width: bw, height: ih, class: 'hover-col' });
      const parts = visible.map((s) => `${s.name}: ${s.done[i]} done, ${s.failed[i]} failed`);
      rect.append(svg('title', null, `${fmtMinute(start + i)}\n${parts.length ? parts.join('\n') : 'no queues shown'}`));
      hover.append(rect);
    }
    nodes.push(hover);

    const total = visible.reduce((t, s) => t + s.doneTotal + s.failTotal, 0);
    if (total === 0) {
      nodes.push(svg('text', { x: M.l + iw / 2, y: M.t + ih / 2, 'text-anchor': 'middle', class: 'chart-empty' },
        series.length ? 'No tasks finished in the last 30 minutes' : (state.queuesLoaded ? 'No queues' : 'Loading…')));
    }
    chart.replaceChildren(...nodes);
    renderLegend(series);
  }

  function renderLegend(series) {
    const ul = $('#chart-legend');
    const frag = document.createDocumentFragment();
    for (const s of series) {
      const hidden = state.hiddenSeries.has(s.name);
      const btn = el('button', {
        type: 'button', className: `legend-item${hidden ? ' off' : ''}`, 'aria-pressed': hidden ? 'false' : 'true',
        title: hidden ? 'Show this queue' : 'Hide this queue', dataset: { series: s.name },
      },
      el('span', { className: 'swatch swatch-done', style: `border-color:${s.doneColor}` }),
      el('span', { className: 'legend-name', text: s.name }),
      el('span', { className: 'legend-count', text: `${fmtInt(s.doneTotal)} done` }),
      el('span', { className: 'swatch swatch-failed', style: `border-color:${s.failColor}` }),
      el('span', { className: `legend-count${s.failTotal ? ' bad' : ''}`, text: `${fmtInt(s.failTotal)} failed` }));
      btn.addEventListener('click', () => {
        if (state.hiddenSeries.has(s.name)) state.hiddenSeries.delete(s.name);
        else state.hiddenSeries.add(s.name);
        renderChart();
      });
      frag.append(el('li', null, btn));
    }
    ul.replaceChildren(frag);
  }

  if (typeof ResizeObserver === 'function') {
    let lastW = 0;
    new ResizeObserver((entries) => {
      const w = Math.round(entries[0].contentRect.width);
      if (w && Math.abs(w - lastW) > 2) { lastW = w; renderChart(); }
    }).observe($('#chart-box'));
  }

  // ------------------------------------------------------------ tasks
  const statusFilter = $('#status-filter');
  const typeFilter = $('#type-filter');
  const pageSize = $('#page-size');

  function selectedQueue() {
    return state.selectedQueue ? findQueue(state.selectedQueue) : null;
  }

  function resetPaging() {
    state.tasks.offset = 0;
    state.tasks.stack = [];
    state.tasks.nextOffset = null;
  }

  function selectQueue(name, { load = true } = {}) {
    if (name === state.selectedQueue) return;
    state.selectedQueue = name;
    try {
      if (name) window.sessionStorage.setItem(QUEUE_KEY, name);
      else window.sessionStorage.removeItem(QUEUE_KEY);
    } catch (_) { /* ignore */ }
    resetPaging();
    state.tasks.items = [];
    state.tasks.loaded = false;
    closeDetail();
    renderQueues();
    renderTasks();
    if (load) userLoadTasks();
  }

  async function loadTasks() {
    const q = selectedQueue();
    const seq = ++tasksSeq;
    if (!q) { state.tasks.items = []; state.tasks.loaded = false; renderTasks(); return; }
    const t = state.tasks;
    const params = { table: q.table_name, limit: t.limit, offset: t.offset };
    if (t.status !== '') params.status = t.status;
    if (t.type) params.task_type = t.type;
    $('#tasks-wrap').classList.add('loading');
    try {
      const data = await api('GET', 'admin/task/list', params);
      if (seq !== tasksSeq) return;
      t.items = data && Array.isArray(data.items) ? data.items : [];
      t.nextOffset = data && data.next_offset !== undefined && data.next_offset !== null ? data.next_offset : null;
      t.loaded = true;
      renderTasks();
    } finally {
      if (seq === tasksSeq) $('#tasks-wrap').classList.remove('loading');
    }
  }

  function userLoadTasks() {
    return loadTasks().then(() => clearError('action'), (err) => reportActionError(err, 'Could not load tasks'));
  }

  function renderTasks() {
    const q = selectedQueue();
    const t = state.tasks;
    const head = $('#tasks-queue');
    head.replaceChildren();
    if (q) head.append(el('span', { className: 'muted', text: '— ' }), el('strong', { text: q.queue_name }), el('code', { text: q.table_name }));
    const tbody = $('#tasks-table tbody');
    const frag = document.createDocumentFragment();
    const selId = state.detail ? state.detail.id : null;
    for (const task of t.items) {
      const tr = el('tr', { tabindex: '0', className: `clickable${String(task.id) === String(selId) ? ' selected' : ''}`, dataset: { taskId: task.id } },
        el('td', { className: 'num', text: task.id }),
        el('td', { text: task.task_type }),
        el('td', null, badge(task.status)),
        el('td', { className: 'time', title: fmtTime(task.schedule_time), text: fmtTimeShort(task.schedule_time) }),
        el('td', { className: 'time opt', title: fmtTime(task.start_time), text: fmtTimeShort(task.start_time) }),
        el('td', { className: 'time', title: fmtTime(task.end_time), text: fmtTimeShort(task.end_time) }),
        el('td', { className: 'num', text: `${task.retry_count ?? 0} / ${task.max_retries ?? 0}` }),
        el('td', { className: 'opt', text: task.server_id || '–' }),
        el('td', { className: 'error-cell', title: task.error_msg || null, text: task.error_msg || '' }),
      );
      tr.addEventListener('click', () => openTask(task.id));
      tr.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openTask(task.id); }
      });
      frag.append(tr);
    }
    tbody.replaceChildren(frag);
    const empty = $('#tasks-empty');
    if (!q) { empty.textContent = 'Select a queue to see its tasks.'; empty.hidden = false; }
    else if (!t.items.length) {
      empty.textContent = t.loaded ? (t.offset || t.stack.length ? 'No more tasks.' : 'No tasks match these filters.') : 'Loading tasks…';
      empty.hidden = false;
    } else empty.hidden = true;
    $('#btn-prev').disabled = t.stack.length === 0;
    $('#btn-next').disabled = t.nextOffset === null;
    $('#page-info').textContent = q ? `Page ${t.stack.length + 1}` : '';
  }

  statusFilter.addEventListener('change', () => {
    state.tasks.status = statusFilter.value;
    resetPaging();
    userLoadTasks();
  });
  let typeTimer = null;
  function applyType() {
    clearTimeout(typeTimer);
    const v = typeFilter.value.trim();
    if (v === state.tasks.type) return;
    state.tasks.type = v;
    resetPaging();
    userLoadTasks();
  }
  typeFilter.addEventListener('input', () => { clearTimeout(typeTimer); typeTimer = setTimeout(applyType, 400); });
  typeFilter.addEventListener('change', applyType);
  pageSize.addEventListener('change', () => {
    state.tasks.limit = Number(pageSize.value) || 20;
    resetPaging();
    userLoadTasks();
  });
  $('#task-filters').addEventListener('submit', (ev) => { ev.preventDefault(); applyType(); });
  $('#btn-next').addEventListener('click', () => {
    const t = state.tasks;
    if (t.nextOffset === null) return;
    t.stack.push(t.offset);
    t.offset = t.nextOffset;
    userLoadTasks();
  });
  $('#btn-prev').addEventListener('click', () => {
    const t = state.tasks;
    if (!t.stack.length) return;
    t.offset = t.stack.pop();
    userLoadTasks();
  });

  // ------------------------------------------------------------ task detail
  const detailPane = $('#task-detail');
  const logPre = $('#task-log');

  function openTask(id) {
    const q = selectedQueue();
    if (!q) return;
    const summary = state.tasks.items.find((x) => String(x.id) === String(id));
    state.detail = { table: q.table_name, id, task: summary || null };
    detailPane.hidden = false;
    $('#tasks-layout').classList.add('with-detail');
    logPre.textContent = '';
    logPre.dataset.state = 'loading';
    if (summary) renderDetail(summary);
    else setText($('#detail-id'), `#${id}`);
    renderTasks();
    fetchDetail().catch((err) => reportActionError(err, `Could not load task #${id}`));
    fetchLog(true);
  }

  function closeDetail() {
    state.detail = null;
    detailSeq++;
    logSeq++;
    detailPane.hidden = true;
    $('#tasks-layout').classList.remove('with-detail');
    for (const tr of document.querySelectorAll('#tasks-table tbody tr.selected')) tr.classList.remove('selected');
  }

  $('#btn-close-detail').addEventListener('click', closeDetail);
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape' || !state.detail || !overlay.hidden) return;
    if (ev.target instanceof Element && ev.target.closest('input, select, textarea')) return;
    closeDetail();
  });

  async function fetchDetail() {
    const d = state.detail;
    if (!d) return null;
    const seq = ++detailSeq;
    const task = await api('GET', 'admin/task/get', { table: d.table, id: d.id });
    if (seq !== detailSeq || state.detail !== d) return null;
    const prev = d.task;
    d.task = task;
    renderDetail(task);
    return { prev, task };
  }

  // Called by the refresh loop: re-read the task; re-read its log while it
  // runs or when its status changed.
  async function refreshDetail() {
    const r = await fetchDetail();
    if (!r) return;
    if (!r.prev || Number(r.prev.status) !== Number(r.task.status) || Number(r.task.status) === 1
        || r.prev.retry_count !== r.task.retry_count) {
      fetchLog(false);
    }
  }

  // A pending task that never started has no job log: do not ask for one.
  function neverRan(task) {
    return task && Number(task.status) === 0 && !Number(task.retry_count) && !task.start_time;
  }

  async function fetchLog(initial) {
    const d = state.detail;
    if (!d) return;
    const seq = ++logSeq;
    if (neverRan(d.task)) {
      logPre.textContent = '';
      logPre.dataset.state = 'none';
      return;
    }
    if (initial) { logPre.textContent = ''; logPre.dataset.state = 'loading'; }
    try {
      const data = await api('GET', 'admin/task/log', { table: d.table, id: d.id });
      if (seq !== logSeq || state.detail !== d) return;
      const text = data && typeof data.log === 'string' ? data.log : (typeof data === 'string' ? data : '');
      const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 8;
      const prevTop = logPre.scrollTop;
      if (logPre.textContent !== text) logPre.textContent = text;
      logPre.dataset.state = 'ok';
      logPre.scrollTop = initial || atBottom ? logPre.scrollHeight : prevTop;
    } catch (err) {
      if (seq !== logSeq || state.detail !== d) return;
      if (err instanceof AuthRequired) return;
      // Shown in the log box itself: a task that has not run yet has no log.
      logPre.textContent = `Log unavailable: ${err.message}`;
      logPre.dataset.state = 'error';
    }
  }

  $('#btn-reload-log').addEventListener('click', () => fetchLog(false));

  function renderDetail(task) {
    setText($('#detail-id'), `#${task.id}`);
    const st = $('#detail-status');
    st.className = `badge badge-${statusName(task.status)}`;
    setText(st, statusName(task.status));
    detailPane.dataset.status = statusName(task.status);
    setText($('#detail-type'), task.task_type);
    setText($('#task-attempts'), `${task.retry_count ?? 0} / ${task.max_retries ?? 0}`);
    setText($('#detail-server'), task.server_id || '–');
    setText($('#detail-schedule'), fmtTime(task.schedule_time));
    setText($('#detail-start'), fmtTime(task.start_time));
    setText($('#detail-end'), fmtTime(task.end_time));
    setText($('#detail-created'), fmtTime(task.created_at));
    setText($('#detail-updated'), fmtTime(task.updated_at));
    const t0 = parseTime(task.start_time);
    const t1 = parseTime(task.end_time);
    setText($('#detail-duration'), t0 !== null && t1 !== null ? humanAge((t1 - t0) / 1000) : '–');
    setText($('#task-error'), task.error_msg || '');
    let params = task.task_params;
    if (typeof params === 'string') {
      try { params = JSON.parse(params); } catch (_) { /* keep raw text */ }
    }
    setText($('#task-params'), typeof params === 'string' ? params : JSON.stringify(params, null, 2));
    const s = Number(task.status);
    $('#btn-retry').hidden = !(s === 3 || s === 4);
    // Pending: cancelled at once. Running: a cancel request its server acts on.
    $('#btn-cancel').hidden = !(s === 0 || s === 1);
    setText($('#btn-cancel'), s === 1 ? 'Stop running task' : 'Cancel task');
  }

  async function taskAction(kind) {
    const d = state.detail;
    if (!d) return;
    const btn = kind === 'retry' ? $('#btn-retry') : $('#btn-cancel');
    btn.disabled = true;
    try {
      const answer = await api('POST', `admin/task/${kind}`, { table: d.table, id: d.id });
      // A running task's cancel answers 202 {cancel_requested, server_id, task}.
      const requested = answer && answer.cancel_requested === true;
      const task = requested ? answer.task : answer;
      const note = $('#cancel-note');
      note.hidden = !requested;
      if (requested) setText(note, `Cancel requested: ${answer.server_id} stops it within about a second.`);
      if (state.detail === d && task && typeof task === 'object' && task.id !== undefined) {
        d.task = task;
        renderDetail(task);
      }
      clearError('action');
      await refreshAfterChange();
      if (state.detail === d) fetchLog(false);
    } catch (err) {
      reportActionError(err, `Could not ${kind} task #${d.id}`);
    } finally {
      btn.disabled = false;
    }
  }

  $('#btn-retry').addEventListener('click', () => taskAction('retry'));
  $('#btn-cancel').addEventListener('click', () => taskAction('cancel'));

  // ------------------------------------------------------------ start
  renderTasks();
  renderChart();
  refreshNow();
})();
