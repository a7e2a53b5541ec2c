// atlasgate console front end. Contract: console-spec (JSON API, CSP, selectors).
//
// Every string that comes from the API is agent-controlled and hostile. It is
// only ever put into the page as text nodes (textContent / createTextNode) or
// attribute values (setAttribute), never parsed as HTML. The CSP forbids
// inline script/style and eval, so there is none here either.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants
  const DECISIONS = ['allow', 'block', 'rate_limited', 'approved', 'denied', 'log_only', 'error', 'local'];
  const PAGES = ['live', 'approvals', 'agents', 'rules', 'credentials'];
  const MAX_ROWS = 500;       // decision rows kept in the DOM
  const MAX_LOADED = 1000;    // decisions kept in memory (what the server keeps)
  const CLIP = 400;           // table cells show at most this many characters
  const EXPIRED_MSG = 'Session expired or signed out — run `atlasgate console-url` for a new link';
  const NO_TOKEN_MSG = 'This tab is not signed in — open a new link from `atlasgate console-url`';
  const TOKEN_KEY = 'atlasgate.csrf';   // sessionStorage: this tab's CSRF token
  const STALE_MS = 10000;     // a card no longer held stays this long (pointer away)
  const MOVED_MS = 800;       // a click on a card that moved this recently is ignored

  const $ = (sel) => document.querySelector(sel);

  // ------------------------------------------------------------- DOM helpers

  // Control characters are shown as visible escapes in span.ctl (ESC -> \x1b,
  // bidi override U+202E -> \u202e, which could otherwise reorder the text
  // around it), never interpreted. So are the invisible ones that could hide
  // or join text: soft hyphen, Arabic letter mark, Mongolian vowel separator,
  // zero-width space/joiners and directional marks, line/paragraph
  // separators, bidi embeddings/overrides/isolates, word joiner and invisible
  // operators, BOM. ASCII escapes render in every font.
  // Newlines and tabs are kept as they are only in multi-line blocks.
  const CTL = /[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;
  const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

  function ctlEscape(ch) {
    const c = ch.charCodeAt(0);
    return NAMED[ch] || (c < 0xa0 ? '\\x' + c.toString(16).padStart(2, '0') : '\\u' + c.toString(16).padStart(4, '0'));
  }

  // Appends s to parent as text, with control characters in span.ctl.
  function putText(parent, s, keepLines = false) {
    s = s == null ? '' : String(s);
    let last = 0;
    for (const m of s.matchAll(CTL)) {
      if (keepLines && (m[0] === '\n' || m[0] === '\t' || m[0] === '\r')) continue;
      if (m.index > last) parent.append(s.slice(last, m.index));
      const span = document.createElement('span');
      span.className = 'ctl';
      span.textContent = ctlEscape(m[0]);
      parent.append(span);
      last = m.index + 1;
    }
    if (last < s.length) parent.append(s.slice(last));
    return parent;
  }

  function clip(s, n = CLIP) {
    s = s == null ? '' : String(s);
    return s.length > n ? s.slice(0, n) + '… (+' + (s.length - n) + ' chars)' : s;
  }

  // el('td', {class: 'x', title: t}, 'text', childNode...) — strings become
  // text (with control characters marked), nodes are appended as they are.
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const k of kids) {
      if (k == null) continue;
      if (typeof k === 'object') e.append(k); else putText(e, clip(k));
    }
    return e;
  }

  const decisionClass = (d) => 'd-' + (DECISIONS.includes(d) ? d : 'unknown');
  const pad2 = (n) => String(n).padStart(2, '0');

  function fmtTime(ts, withDate = false) {
    const d = new Date(ts);
    if (isNaN(d)) return String(ts == null ? '' : ts);
    const t = pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
    return withDate ? d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + t : t;
  }

  const num = (v) => (typeof v === 'number' && isFinite(v) ? v : 0);

  // Generic table: cols = [[header, row => string|Node, className?], ...].
  function renderTable(table, cols, rows, emptyText, rowAttrs) {
    const thead = el('thead', null, el('tr', null, ...cols.map(([h, , c]) => el('th', { class: c }, h))));
    const tbody = document.createElement('tbody');
    if (!rows.length) {
      tbody.append(el('tr', { class: 'empty-row' }, el('td', { colspan: cols.length }, emptyText)));
    }
    for (const r of rows) {
      tbody.append(el('tr', rowAttrs ? rowAttrs(r) : null, ...cols.map(([, f, c]) => el('td', { class: c }, f(r)))));
    }
    table.replaceChildren(thead, tbody);
  }

  // Errors that are not worth a page of their own go to one line under the header.
  const errors = new Map();
  function setError(key, msg) {
    if (msg) errors.set(key, msg); else errors.delete(key);
    const p = $('#errors');
    p.replaceChildren();
    putText(p, [...errors.values()].join(' · '));
    p.hidden = errors.size === 0;
  }

  // ---------------------------------------------------------------- API layer
  class ApiError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }

  let expired = false;

  // The session's CSRF token. The cookie alone opens nothing: browsers send
  // it to every port of 127.0.0.1, so any local process serving a page gets
  // it. The token reaches only this page, in the sign-in redirect's fragment
  // (/#csrf=…, which no server ever sees); this tab keeps it in its
  // sessionStorage, and every API request carries it. A tab opened by hand
  // has none: it is not signed in, whatever the cookie.
  let csrf = null;

  function takeToken() {
    let t = null;
    if (location.hash.startsWith('#csrf=')) {
      t = location.hash.slice('#csrf='.length);
      // Out of the address bar and the history at once; the router shows Live.
      history.replaceState(null, '', location.pathname + '#live');
      try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* no storage: this page load only */ }
    }
    if (!t) {
      try { t = sessionStorage.getItem(TOKEN_KEY); } catch (e) { /* no storage */ }
    }
    return t && /^[\x21-\x7e]+$/.test(t) ? t : null;   // a header value
  }

  function forgetToken() {
    csrf = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* no storage */ }
  }

  async function request(path, opts = {}) {
    if (expired) throw new ApiError(401, 'expired');
    let res;
    try {
      res = await fetch(path, {
        credentials: 'same-origin', ...opts,
        headers: { ...(opts.headers || {}), 'X-CSRF-Token': csrf || '' },
      });
    } catch (e) {
      throw new ApiError(0, 'console unreachable');
    }
    if (res.status === 401) { expire(); throw new ApiError(401, 'expired'); }
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    // This tab's token is not the session's (signed in again elsewhere in
    // this browser, or none): as good as expired. 401 keeps callers quiet.
    if (res.status === 403 && body && /csrf/i.test(String(body.error))) {
      expire(NO_TOKEN_MSG);
      throw new ApiError(401, 'not signed in');
    }
    if (!res.ok || (body && body.ok === false)) {
      throw new ApiError(res.status, (body && body.error) || ('HTTP ' + res.status));
    }
    return body || {};
  }

  const get = (path) => request(path);

  async function loadSession() {
    const s = await get('/api/v1/session');
    const until = new Date(s.expires_at);
    const label = isNaN(until) ? 'Signed in' : 'Signed in until ' + pad2(until.getHours()) + ':' + pad2(until.getMinutes());
    const st = $('#session-state');
    st.textContent = label;
    st.className = 'ok';
    // Check again just after the session ends, so the page says so even if idle.
    if (isFinite(s.expires_in_s) && s.expires_in_s > 0) {
      clearTimeout(timers.session);
      timers.session = setTimeout(() => loadSession().catch(() => {}), Math.min(s.expires_in_s * 1000 + 1000, 2 ** 31 - 1));
    }
    return s;
  }

  // POST JSON (request() adds the CSRF token).
  const post = (path, data = {}) => request(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(data),
  });

  // ------------------------------------------------------- timers & lifecycle
  // Named timers so that expiry / page changes can stop exactly what runs.
  const timers = {};
  function every(name, ms, fn) {
    clearInterval(timers[name]);
    timers[name] = setInterval(() => { if (!document.hidden) fn(); }, ms);
  }
  function stopTimer(name) { clearInterval(timers[name]); clearTimeout(timers[name]); delete timers[name]; }

  let es = null;

  function expire(msg = EXPIRED_MSG) {
    if (expired) return;
    expired = true;
    forgetToken();           // it dies with the session (or was never this session's)
    if (es) { es.close(); es = null; }
    Object.keys(timers).forEach(stopTimer);
    const st = $('#session-state');
    st.textContent = msg;
    st.className = 'expired';
    setLive('offline');
    document.body.classList.add('expired');
    $('#signout').disabled = true;
  }

  // ------------------------------------------------------------ live: stream
  function setLive(state) {
    const s = $('#live-state');
    s.textContent = state;
    s.className = 'live-state ' + (state === 'live' ? 'on' : state === 'offline' ? 'offline' : 'wait');
  }

  let filled = false;     // initial /decisions fill done?
  let buffered = [];      // stream decisions that arrived before it
  let lastSeq = 0;

  function openStream() {
    if (expired) return;
    // EventSource cannot send headers: the stream takes the token in its query.
    es = new EventSource('/api/v1/events?csrf=' + encodeURIComponent(csrf));
    es.onopen = () => setLive('live');
    es.onerror = () => {
      if (!es) return;
      if (es.readyState === EventSource.CONNECTING) {
        setLive('reconnecting…');
      } else {
        // Closed for good (e.g. HTTP error). Find out whether the session ended;
        // if not, open a new stream a little later.
        setLive('offline');
        es.close(); es = null;
      }
      // The stream also ends when the session expires: this turns that into
      // the expired message (request() calls expire() on 401).
      loadSession().catch(() => {}).then(() => {
        if (!es && !expired) timers.reopen = setTimeout(openStream, 5000);
      });
    };
    es.addEventListener('decision', (ev) => {
      let d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      if (!d || typeof d !== 'object') return;
      if (filled) addDecision(d); else buffered.push(d);
    });
    es.addEventListener('approvals', (ev) => {
      try { setBadge(num(JSON.parse(ev.data).pending)); } catch (e) { /* ignore */ }
      refreshApprovals();
    });
  }

  // ------------------------------------------------------- live: decisions
  // loaded: all decisions in memory, oldest first. The table shows the newest
  // MAX_ROWS of those that match the filters.
  const loaded = [];
  const filters = { agent: '', decision: '' };

  function matches(d) {
    if (filters.decision && d.decision !== filters.decision) return false;
    if (filters.agent && !String(d.agent || '').toLowerCase().includes(filters.agent)) return false;
    return true;
  }

  function requestText(d) {
    if (d.protocol === 'mongodb') {
      const ns = [d.database, d.collection].filter(Boolean).join('.');
      return [d.command, ns].filter(Boolean).join(' ');
    }
    return [d.method, d.path].filter(Boolean).join(' ');
  }

  function decisionRow(d) {
    const dec = String(d.decision || '');
    const status = num(d.status) ? String(d.status) : '—';
    const lat = typeof d.total_ms === 'number' ? d.total_ms.toFixed(1) + ' ms' : '';
    return el('tr', { 'data-seq': d.seq, 'data-decision': dec },
      el('td', { class: 'time', title: clip(d.ts) }, fmtTime(d.ts)),
      el('td', { class: 'agent', title: clip('pid ' + (d.pid ?? '?') + ' ' + (d.comm || '')) }, d.agent),
      el('td', { class: 'request', title: clip(d.protocol + ' ' + (d.host || '')) }, requestText(d)),
      el('td', { class: 'rule' }, d.rule),
      el('td', { class: 'decision' }, el('span', { class: 'pill ' + decisionClass(dec) }, dec)),
      el('td', { class: 'status' }, status, d.error ? el('span', { class: 'err' }, d.error) : null),
      el('td', { class: 'latency num', title: typeof d.upstream_ms === 'number' ? 'upstream ' + d.upstream_ms.toFixed(1) + ' ms' : null }, lat));
  }

  function updateCount() {
    const shown = $('#decisions tbody').rows.length;
    $('#decisions-count').textContent = shown + ' shown of ' + loaded.length + ' loaded';
  }

  // Rebuild the table from memory (initial fill and filter changes).
  function renderDecisions() {
    const frag = document.createDocumentFragment();
    for (let i = loaded.length - 1, n = 0; i >= 0 && n < MAX_ROWS; i--) {
      if (matches(loaded[i])) { frag.append(decisionRow(loaded[i])); n++; }
    }
    $('#decisions tbody').replaceChildren(frag);
    updateCount();
  }

  // Keeps d in memory; false if we already have it (fill/stream overlap).
  function remember(d) {
    const seq = num(d.seq);
    if (seq <= lastSeq) return false;
    lastSeq = seq;
    loaded.push(d);
    if (loaded.length > MAX_LOADED) loaded.splice(0, loaded.length - MAX_LOADED);
    return true;
  }

  // One streamed decision: memory, table top, and the chart's current minute.
  function addDecision(d) {
    if (!remember(d)) return;
    if (matches(d)) {
      const tbody = $('#decisions tbody');
      tbody.prepend(decisionRow(d));
      while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
    }
    updateCount();
    chartCount(d);
  }

  async function fillDecisions() {
    try {
      const r = await get('/api/v1/decisions?since=0&limit=' + MAX_LOADED);
      (r.decisions || []).forEach(remember);   // already counted in /stats
      lastSeq = Math.max(lastSeq, num(r.last));
      buffered.forEach((d) => { if (remember(d)) chartCount(d); });
      buffered = [];
      filled = true;
      renderDecisions();
      setError('decisions', null);
    } catch (e) {
      if (e.status === 401) return;
      setError('decisions', 'Could not load decisions: ' + e.message);
      timers.fill = setTimeout(fillDecisions, 5000);
    }
  }

  function initFilters() {
    const sel = $('#filter-decision');
    for (const d of DECISIONS) sel.append(el('option', { value: d }, d));
    $('#filter-agent').addEventListener('input', (e) => {
      filters.agent = e.target.value.toLowerCase();
      renderDecisions();
    });
    sel.addEventListener('change', (e) => { filters.decision = e.target.value; renderDecisions(); });
  }

  // ------------------------------------------------------------ live: chart
  // minutes: [{t: ms, counts: {decision: n}}], oldest first, up to 60.
  // A redraw rebuilds ~100 nodes whatever the traffic: one <path> per decision
  // holds all of its bar segments. The viewBox follows the element's width so
  // text is drawn at 1:1 and bars use the whole panel.
  const SVGNS = 'http://www.w3.org/2000/svg';
  const CH = { w: 760, h: 200, left: 40, right: 8, top: 30, bottom: 22 };
  let minutes = [];
  let chartQueued = false;
  let legendWidths = null;

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  // Legend label widths, measured once off-screen (same font as the CSS).
  function measureLegend() {
    const ctx = document.createElement('canvas').getContext('2d');
    if (!ctx) return DECISIONS.map((d) => d.length * 6.5);
    ctx.font = '11px ' + getComputedStyle(document.body).fontFamily;
    return DECISIONS.map((d) => ctx.measureText(d).width);
  }

  async function loadStats() {
    try {
      const r = await get('/api/v1/stats');
      minutes = (r.minutes || []).map((m) => {
        const counts = {};
        for (const d of DECISIONS) counts[d] = num(m[d]);
        return { t: Date.parse(m.t), counts };
      }).filter((m) => !isNaN(m.t)).slice(-60);
      drawChart();
      setError('stats', null);
    } catch (e) {
      if (e.status !== 401) setError('stats', 'Could not load statistics: ' + e.message);
    }
  }

  // Count a streamed decision into its minute, adding minutes as time moves on.
  function chartCount(d) {
    const t = Date.parse(d.ts);
    if (isNaN(t) || !minutes.length) return;
    const minute = t - (t % 60000);
    let last = minutes[minutes.length - 1].t;
    if (minute > last + 3600000) return;   // absurd clock jump: wait for /stats
    while (minute > last) {
      last += 60000;
      const counts = {};
      for (const k of DECISIONS) counts[k] = 0;
      minutes.push({ t: last, counts });
    }
    if (minutes.length > 60) minutes.splice(0, minutes.length - 60);
    const m = minutes.find((x) => x.t === minute);
    if (m && DECISIONS.includes(d.decision)) m.counts[d.decision]++;
    if (!chartQueued) {            // at most one redraw per second
      chartQueued = true;
      setTimeout(() => { chartQueued = false; drawChart(); }, 1000);
    }
  }

  // Smallest of 1, 2, 5 × 10^k that is ≥ v.
  function niceMax(v) {
    if (v <= 4) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((x) => x >= v);
  }

  function drawChart() {
    const chart = $('#chart');
    const width = Math.round(chart.getBoundingClientRect().width);
    if (width > 0) CH.w = width;            // hidden page: keep the last width
    chart.setAttribute('viewBox', '0 0 ' + CH.w + ' ' + CH.h);
    const pw = CH.w - CH.left - CH.right, ph = CH.h - CH.top - CH.bottom;
    const n = 60, slot = pw / n, gap = slot > 6 ? 2 : 1, bw = Math.max(1, slot - gap);
    const totals = minutes.map((m) => DECISIONS.reduce((s, d) => s + m.counts[d], 0));
    const max = niceMax(Math.max(0, ...totals));
    const y = (v) => CH.top + ph - (v / max) * ph;
    const x0 = CH.left + (n - minutes.length) * slot;   // right-align if < 60 minutes
    const nodes = [];

    // Grid and y-axis labels.
    for (const v of [0, max / 2, max]) {
      nodes.push(svg('line', { class: 'grid', x1: CH.left, x2: CH.w - CH.right, y1: y(v), y2: y(v) }));
      nodes.push(svg('text', { class: 'axis', x: CH.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, String(Math.round(v * 10) / 10)));
    }

    // One path per decision, stacked in DECISIONS order.
    const base = minutes.map(() => 0);
    for (const d of DECISIONS) {
      let path = '';
      minutes.forEach((m, i) => {
        const c = m.counts[d];
        if (!c) return;
        const top = y(base[i] + c), h = y(base[i]) - top;
        path += 'M' + (x0 + i * slot + gap / 2).toFixed(1) + ' ' + top.toFixed(1) + 'h' + bw.toFixed(1) + 'v' + h.toFixed(1) + 'h' + (-bw).toFixed(1) + 'z';
        base[i] += c;
      });
      if (path) nodes.push(svg('path', { class: 'bar ' + decisionClass(d), d: path }));
    }

    // Invisible per-minute hover targets with a tooltip.
    minutes.forEach((m, i) => {
      const parts = DECISIONS.filter((d) => m.counts[d]).map((d) => d + ' ' + m.counts[d]);
      const hit = svg('rect', { class: 'hit', x: x0 + i * slot, y: CH.top, width: slot, height: ph });
      hit.append(svg('title', null, fmtTime(m.t).slice(0, 5) + ' — ' + totals[i] + ' requests' + (parts.length ? ': ' + parts.join(', ') : '')));
      nodes.push(hit);
    });

    // X-axis: clock labels on the quarter hours, and "now" at the right.
    nodes.push(svg('line', { class: 'axis-line', x1: CH.left, x2: CH.w - CH.right, y1: y(0), y2: y(0) }));
    const lastI = minutes.length - 1;
    minutes.forEach((m, i) => {
      const quarter = new Date(m.t).getMinutes() % 15 === 0 && lastI - i > 4;
      if (!quarter && i !== lastI) return;
      nodes.push(svg('text', { class: 'axis', x: x0 + i * slot + slot / 2, y: CH.h - 6, 'text-anchor': i === lastI ? 'end' : 'middle' },
        i === lastI ? 'now' : fmtTime(m.t).slice(0, 5)));
    });
    if (!minutes.length) {
      nodes.push(svg('text', { class: 'axis', x: CH.left + pw / 2, y: CH.top + ph / 2, 'text-anchor': 'middle' }, 'no data yet'));
    }

    // Legend along the top.
    legendWidths = legendWidths || measureLegend();
    let lx = CH.left;
    DECISIONS.forEach((d, i) => {
      const g = svg('g', { class: 'legend' });
      g.append(svg('rect', { class: decisionClass(d), x: lx, y: 6, width: 10, height: 10, rx: 2 }));
      g.append(svg('text', { class: 'axis', x: lx + 14, y: 15 }, d));
      nodes.push(g);
      lx += 14 + legendWidths[i] + 16;
    });
    chart.replaceChildren(...nodes);
  }

  // -------------------------------------------------------------- approvals
  // The list never moves under the operator's cursor by itself: new cards go
  // at the end, and a card whose request went away (decided elsewhere, timed
  // out, agent gone) stays where it was, greyed and inert, until the operator
  // decides a card (the list moves then anyway), or it has been stale for
  // STALE_MS while the pointer is not over the list. A click on a card whose
  // position changed in the last MOVED_MS is ignored: it was aimed at what
  // was there before.
  const decided = new Set();     // ids answered here: ignore them in late refreshes
  const cardState = new WeakMap();   // card -> {top, movedAt, staleSince}
  let approvalsBusy = false;

  function setBadge(n) {
    const b = $('#approvals-count');
    b.textContent = String(n);
    b.classList.toggle('zero', n === 0);
    document.title = (n ? '(' + n + ') ' : '') + 'atlasgate console';
  }

  function waitingText(a) {
    const left = Math.max(0, num(a.timeout_s) - num(a.waiting_s));
    return 'waiting ' + num(a.waiting_s) + ' s · times out in ' + left + ' s';
  }

  // Records where card is on the page (document coordinates: scrolling is
  // not a move) and when that last changed. Not while the page is hidden.
  function measure(card, now = performance.now()) {
    const st = cardState.get(card);
    const r = card.getBoundingClientRect();
    if (!st || !r.height) return;
    const top = Math.round(r.top + window.scrollY);
    if (st.top != null && Math.abs(top - st.top) > 1) st.movedAt = now;
    st.top = top;
  }

  function measureCards() {
    const now = performance.now();
    for (const c of $('#approvals').children) measure(c, now);
  }

  const isStale = (card) => !!(cardState.get(card) || {}).staleSince;

  function markStale(card) {
    const st = cardState.get(card);
    if (!st || st.staleSince) return;
    st.staleSince = performance.now();
    card.classList.add('stale');
    card.setAttribute('aria-disabled', 'true');
    card.querySelectorAll('.actions button').forEach((b) => { b.disabled = true; });
    card.querySelector('.waiting').textContent = 'no longer held';
  }

  // Removes stale cards: all of them right after the operator decided one,
  // otherwise those stale for STALE_MS, and then only with the pointer away.
  function dropStale(all = false) {
    const box = $('#approvals');
    if (!all && box.matches(':hover')) return false;
    const now = performance.now();
    let dropped = false;
    for (const c of [...box.children]) {
      const st = cardState.get(c);
      if (st && st.staleSince && (all || now - st.staleSince >= STALE_MS)) { c.remove(); dropped = true; }
    }
    return dropped;
  }

  function approvalCard(a) {
    const body = el('pre', { class: 'body' });
    const lead = num(a.body_leading_whitespace);
    if (lead > 0) body.append(el('span', { class: 'note' }, '(' + lead + ' blank bytes before)'), '\n');
    if (a.body) putText(body, a.body, true);
    else if (!lead) body.append(el('span', { class: 'note' }, '(no body)'));

    let truncated = null;
    if (a.body_truncated) {
      // "first X": bytes of the original up to the end of the preview.
      const shown = Math.min(num(a.body_bytes), lead + new TextEncoder().encode(a.body || '').length);
      truncated = el('p', { class: 'truncated' }, '… truncated: showing the first ' + shown + ' of ' + num(a.body_bytes) + ' bytes');
    }

    const allow = el('button', { type: 'button', class: 'allow' }, 'Allow');
    const deny = el('button', { type: 'button', class: 'deny' }, 'Deny');
    const error = el('p', { class: 'error', hidden: true });
    const card = el('div', { class: 'approval', 'data-id': a.id },
      el('div', { class: 'line1' },
        el('span', { class: 'method' }, a.method),
        el('span', { class: 'host' }, a.host),
        el('span', { class: 'path' }, a.path)),
      el('div', { class: 'meta' },
        el('span', null, 'agent ', el('strong', { class: 'agent' }, a.agent)),
        el('span', null, 'rule ', el('strong', { class: 'rule' }, a.rule)),
        el('span', { class: 'waiting' }, waitingText(a))),
      body, truncated, error,
      el('div', { class: 'actions' }, allow, deny));
    const st = { top: null, movedAt: -Infinity, staleSince: 0 };
    cardState.set(card, st);

    const act = async (verb) => {
      if (st.staleSince) return;
      measure(card);             // a shift since the last refresh counts too
      if (performance.now() - st.movedAt < MOVED_MS) return;
      allow.disabled = deny.disabled = true;
      error.hidden = true;
      try {
        await post('/api/v1/approvals/' + encodeURIComponent(a.id) + '/' + verb, {});
        decided.add(String(a.id));
        card.remove();
        dropStale(true);         // the list moves now anyway
        afterApprovalsChange();
      } catch (e) {
        if (e.status === 401) return;
        error.textContent = '';
        putText(error, verb + ' failed: ' + e.message);
        error.hidden = false;
        if (e.status === 404) markStale(card);   // decided or gone meanwhile
        if (!st.staleSince) allow.disabled = deny.disabled = false;
        afterApprovalsChange();
      }
    };
    allow.addEventListener('click', () => act('allow'));
    deny.addEventListener('click', () => act('deny'));
    return card;
  }

  // Badge and "nothing is waiting" (above the list: shown only when the list
  // is empty, so that it never pushes cards down), then new positions.
  function afterApprovalsChange() {
    const box = $('#approvals');
    $('#no-approvals').hidden = box.children.length > 0;
    setBadge([...box.children].filter((c) => !isStale(c)).length);
    measureCards();
  }

  // Reconcile: keep existing cards where they are (their button/error
  // state), update their timers, mark those no longer held as stale, append
  // new ones at the end in server order.
  async function refreshApprovals() {
    if (approvalsBusy) { approvalsBusy = 'again'; return; }
    approvalsBusy = true;
    try {
      const r = await get('/api/v1/approvals');
      const held = new Map();
      for (const a of r.approvals || []) {
        if (!decided.has(String(a.id))) held.set(String(a.id), a);
      }
      const box = $('#approvals');
      for (const c of box.children) {
        const a = held.get(c.dataset.id);
        held.delete(c.dataset.id);
        if (!a) markStale(c);
        else if (!isStale(c)) c.querySelector('.waiting').textContent = waitingText(a);
      }
      dropStale();
      for (const a of held.values()) box.append(approvalCard(a));
      setError('approvals', null);
    } catch (e) {
      if (e.status !== 401) setError('approvals', 'Could not load approvals: ' + e.message);
    } finally {
      afterApprovalsChange();   // after the error line changed too: it moves the list
      const again = approvalsBusy === 'again';
      approvalsBusy = false;
      if (again) refreshApprovals();   // an event came in while we were fetching
    }
  }

  function initApprovals() {
    // Stale cards past their time go as soon as the pointer leaves the list.
    $('#approvals').addEventListener('mouseleave', () => { if (dropStale()) afterApprovalsChange(); });
  }

  // ----------------------------------------------------------------- agents
  const ago = (s) => num(s) + ' s';

  async function refreshAgents() {
    try {
      const r = await get('/api/v1/agents');
      renderTable($('#agents-table'), [
        ['Agent', (a) => a.agent, 'agent'],
        ['Requests', (a) => String(num(a.requests)), 'num'],
        ['Blocked', (a) => String(num(a.blocked)), 'num'],
        ['Last seen', (a) => fmtTime(a.last_seen, true), 'time'],
      ], r.agents || [], 'No agent has made a request yet.');
      renderTable($('#connections-table'), [
        ['ID', (c) => String(c.id), 'num'],
        ['Agent', (c) => c.agent, 'agent'],
        ['PID', (c) => String(c.pid), 'num'],
        ['Command', (c) => c.comm],
        ['Destination', (c) => c.dst],
        ['Requests', (c) => String(num(c.requests)), 'num'],
        ['Age', (c) => ago(c.age_s), 'num'],
      ], r.connections || [], 'No open connections.');
      renderTable($('#attached-table'), [
        ['Cgroup', (c) => c.cgroup],
        ['Cgroup ID', (c) => String(c.cgroup_id), 'num'],
      ], r.attached || [], 'No cgroups attached.');
      const pods = r.pods || [], ctrs = r.containers || [];
      $('#pods-block').hidden = !pods.length;
      $('#containers-block').hidden = !ctrs.length;
      if (pods.length) {
        renderTable($('#pods-table'), [['Pod', (p) => p.pod], ['UID', (p) => p.uid], ['Cgroup', (p) => p.cgroup]], pods, '');
      }
      if (ctrs.length) {
        renderTable($('#containers-table'), [['Container', (c) => c.container], ['ID', (c) => c.id],
          ['Cgroup', (c) => c.cgroup], ['State', (c) => c.state]], ctrs, '');
      }
      setError('agents', null);
    } catch (e) {
      if (e.status !== 401) setError('agents', 'Could not load agents: ' + e.message);
    }
  }

  // ------------------------------------------------------------------ rules
  async function loadRules() {
    const pre = $('#rules-table');
    try {
      const r = await get('/api/v1/rules');
      pre.replaceChildren();
      putText(pre, r.table || '(no rules)', true);
      pre.classList.remove('error');
    } catch (e) {
      if (e.status === 401) return;
      pre.textContent = 'Could not load rules: ' + e.message;
      pre.classList.add('error');
    }
  }

  function initExplain() {
    const form = $('#explain-form');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const out = $('#explain-result');
      const btn = form.querySelector('button[type=submit]');
      btn.disabled = true;
      try {
        const r = await post('/api/v1/explain', {
          method: $('#explain-method').value,
          path: $('#explain-path').value,
          agent: $('#explain-agent').value,
          host: $('#explain-host').value,
          body: $('#explain-body').value,
        });
        out.replaceChildren();
        putText(out, r.explanation || '', true);
        out.classList.remove('error');
      } catch (e) {
        if (e.status === 401) return;
        out.replaceChildren();
        putText(out, e.message);
        out.classList.add('error');
      } finally {
        out.hidden = false;
        btn.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------ credentials
  async function loadCredentials() {
    try {
      const r = await get('/api/v1/credentials');
      const capture = !!r.capture;
      $('#capture-off').hidden = capture;
      $('#captured-block').hidden = !capture;
      renderTable($('#captured-table'), [
        ['Name', (c) => c.name],
        ['Kind', (c) => c.kind],
        ['Target', (c) => c.target],
        ['Owner', (c) => c.owner],
        ['Scope', (c) => c.scope],
        ['Label', (c) => c.label],
        ['Created', (c) => fmtTime(c.created_at, true), 'time'],
        ['State', (c) => c.state],
        ['', (c) => el('button', { type: 'button', class: 'revoke danger', 'data-name': c.name, disabled: c.state === 'revoked' }, 'Revoke')],
      ], r.captured || [], 'No credentials captured yet.', (c) => ({ 'data-name': c.name }));
      renderTable($('#configured-table'), [
        ['Host', (c) => c.host],
        ['Credential', (c) => c.credential],
        ['State', (c) => c.state],
      ], r.configured || [], 'No credentials configured.');
      setError('credentials', null);
    } catch (e) {
      if (e.status !== 401) setError('credentials', 'Could not load credentials: ' + e.message);
    }
  }

  function initCredentials() {
    // One delegated handler; the name is read back from the attribute it was
    // stored in, so it is never re-parsed.
    $('#captured-table').addEventListener('click', async (ev) => {
      const btn = ev.target.closest('button.revoke');
      if (!btn) return;
      const name = btn.getAttribute('data-name');
      if (!confirm('Revoke ' + clip(name, 200) + '?\n\nThe credential stops working at once.')) return;
      btn.disabled = true;
      try {
        await post('/api/v1/credentials/revoke', { name });
        setError('revoke', null);
      } catch (e) {
        if (e.status === 401) return;
        setError('revoke', 'Revoke failed: ' + e.message);
      }
      loadCredentials();
    });
  }

  // ----------------------------------------------------------------- router
  // Each page: what to do when it is shown, and how often to refresh it.
  const pageSpec = {
    live: { show: drawChart },
    approvals: { show: refreshApprovals, every: 2000 },
    agents: { show: refreshAgents, every: 5000 },
    rules: { show: loadRules },
    credentials: { show: loadCredentials },
  };
  let current = null;

  function route() {
    const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'live';
    current = page;
    for (const p of PAGES) $('#page-' + p).hidden = p !== page;
    document.querySelectorAll('nav a[data-page]').forEach((a) => {
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    stopTimer('page');
    if (expired) return;
    const spec = pageSpec[page];
    spec.show();
    if (spec.every) every('page', spec.every, spec.show);
  }

  // ------------------------------------------------------------------- boot
  async function boot() {
    csrf = takeToken();      // first: the token leaves the address bar at once
    initFilters();
    initExplain();
    initCredentials();
    drawChart();
    window.addEventListener('hashchange', route);
    let resizeTimer = 0;
    window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawChart, 150); });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && !expired && current) pageSpec[current].show();
    });
    $('#signout').addEventListener('click', async () => {
      try { await post('/api/v1/signout', {}); } catch (e) { /* expire() either way */ }
      expire();
    });

    initApprovals();

    if (!csrf) expire(NO_TOKEN_MSG);   // no polling, no stream
    try {
      if (!expired) await loadSession();
    } catch (e) {
      if (e.status !== 401) setError('session', 'Could not reach the console: ' + e.message);
    }
    route();
    if (expired) return;
    openStream();            // before the fill, so nothing falls in between
    fillDecisions();
    loadStats();
    every('stats', 60000, loadStats);
    if (current !== 'approvals') refreshApprovals();   // for the badge
  }

  document.addEventListener('DOMContentLoaded', boot);
})();
