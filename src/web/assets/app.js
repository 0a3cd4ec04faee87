// Live Vélib' availability page. Vanilla JS, no dependencies, same-origin requests only.
//
// Data flow: GET /api/state paints the first picture quickly; /events (SSE) then
// sends a full `snapshot` (which REPLACES all client state, also after a reconnect)
// followed by one `epoch` diff per committed epoch. Every string from the data goes
// into the DOM through textContent / setAttribute, never through innerHTML.
'use strict';
(function () {
  const SVGNS = 'http://www.w3.org/2000/svg';
  const HISTORY_MAX = 120;
  const FUTURE_TOLERANCE_S = 60; // feed_time further ahead than this means a wrong clock
  const ROW_FIELDS = ['nbr_total', 'nbr_meca', 'nbr_elec', 'nbr_docks', 'nbr_stations_renting',
    'nbr_stations_empty', 'nbr_stations_full', 'nbr_stations_stale', 'occupancy'];
  // Shown as how long at the feed time shown, refreshed at every epoch: the
  // record holds since when, and is only written again when a station changes.
  const SINCE_FIELDS = { longest_empty: 'longest_empty_since' };

  const $ = (id) => document.getElementById(id);
  const el = {
    epoch: $('epoch'), feedTime: $('feed-time'), feedAge: $('feed-age'), feedLag: $('feed-lag'),
    stale: $('stale-warning'), clock: $('clock-warning'), waiting: $('waiting'), conn: $('connection'),
    chart: $('chart'), map: $('map'), stations: $('stations-layer'), labels: $('labels-layer'),
    note: $('map-note'), table: $('postcodes'), tbody: document.querySelector('#postcodes tbody'),
    search: $('search'), rowCount: $('row-count'),
  };

  // ---------- client state ----------
  const state = {
    loaded: false,         // some snapshot has been applied
    epoch: null,
    feedTime: null, feedAge: null, staleAfter: 300,
    serverTime: null, receivedAt: 0, // server clock at the last message, and performance.now() then
    totals: {},
    history: [],
    note: null,
    stations: new Map(),   // id -> {d: normalised station, el: <circle>|null, tip: <title>|null}
    postcodes: new Map(),  // postcode -> {rec, row, cells: {field: td}, label: {g, name, num, tip}|null}
  };

  // ---------- small helpers ----------
  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  function num(v) {
    if (typeof v === 'number') return Number.isFinite(v) ? v : null;
    if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(+v)) return +v;
    return null;
  }
  const fmtInt = (v) => (v == null ? '—' : String(Number.isInteger(v) ? v : Math.round(v)));
  const fmtOcc = (v) => (v == null ? '—' : (v * 100).toFixed(1) + ' %');
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  function svg(tag, attrs) {
    const n = document.createElementNS(SVGNS, tag);
    if (attrs) for (const k in attrs) n.setAttribute(k, attrs[k]);
    return n;
  }
  function fmtAge(s) {
    s = Math.floor(s);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min' + (s % 60 ? ' ' + String(s % 60).padStart(2, '0') + ' s' : '');
    if (s < 172800) return Math.floor(s / 3600) + ' h ' + String(Math.floor(s / 60) % 60).padStart(2, '0') + ' min';
    return Math.floor(s / 86400) + ' d ' + (Math.floor(s / 3600) % 24) + ' h';
  }
  const fmtTime = (t) => new Date(t * 1000).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const fmtClock = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  // Server "now", estimated from the last message's server_time plus local elapsed time,
  // so a skewed client clock does not distort the feed age.
  function serverNow() {
    if (state.serverTime == null) return Date.now() / 1000;
    return state.serverTime + (performance.now() - state.receivedAt) / 1000;
  }

  // Header fields shared by Snapshot and EpochEvent. A key that is present but null is taken
  // as null; an absent key keeps the previous value (an epoch diff may omit it).
  function applyMeta(m, at) {
    state.epoch = num(m.epoch);
    if ('feed_time' in m) state.feedTime = num(m.feed_time);
    if ('feed_age_s' in m) state.feedAge = num(m.feed_age_s);
    if ('stale_after_s' in m) state.staleAfter = num(m.stale_after_s) ?? 300;
    const st = num(m.server_time);
    if (st != null) { state.serverTime = st; state.receivedAt = at; }
  }

  // ---------- header / banners (tick() runs every second) ----------
  function renderHeader() {
    setText(el.epoch, state.epoch == null ? '—' : fmtInt(state.epoch));
    setText(el.feedTime, state.feedTime == null ? '—' : fmtTime(state.feedTime));
    setText(el.feedLag, state.feedAge == null ? '' : '(' + fmtAge(Math.max(0, state.feedAge)) + ' old when committed)');
    el.waiting.hidden = state.epoch != null;
    tick();
  }

  function tick() {
    const ft = state.feedTime;
    let stale = false, future = false, age = null;
    if (ft != null) {
      age = serverNow() - ft;
      stale = age > state.staleAfter;
      future = age < -FUTURE_TOLERANCE_S;
    }
    setText(el.feedAge, age == null ? '—' : future ? 'in the future' : fmtAge(Math.max(0, age)));
    el.feedAge.classList.toggle('bad', stale || future);
    if (stale) {
      setText(el.stale, 'Stale feed: the latest data is ' + fmtAge(age) + ' old (limit ' + fmtAge(state.staleAfter) +
        '). Availability shown below may be out of date.');
    }
    el.stale.hidden = !stale;
    if (future) {
      setText(el.clock, 'Feed time is ' + fmtAge(-age) + ' in the future compared with the server clock: ' +
        'a clock is wrong, so feed ages cannot be trusted.');
    }
    el.clock.hidden = !future;
  }

  function setConnection(live) {
    const s = live ? 'live' : 'reconnecting';
    setText(el.conn, s);
    el.conn.dataset.state = s;
  }

  // ---------- totals + chart ----------
  function renderTotals() {
    for (const n of document.querySelectorAll('#totals [data-field]')) {
      setText(n, fmtInt(num(state.totals[n.dataset.field])));
    }
  }

  function normHist(h) {
    return { epoch: num(h.epoch), feed_time: num(h.feed_time), nbr_total: num(h.nbr_total),
      nbr_meca: num(h.nbr_meca), nbr_elec: num(h.nbr_elec) };
  }

  function niceCeil(v) {
    if (!(v > 0)) return 10;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // The chart is a handful of elements: rebuilding it per epoch is cheaper than diffing.
  // Its viewBox is its own pixel size, so text is never stretched.
  function renderChart() {
    const c = el.chart;
    c.textContent = '';
    const W = Math.round(c.clientWidth) || 340, H = Math.round(c.clientHeight) || 62, L = 34, R = 6, T = 5, B = 13;
    c.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    const h = state.history;
    if (!h.length) {
      const t = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' });
      t.textContent = 'No history yet';
      c.appendChild(t);
      return;
    }
    // x by feed time when every point has one (shows gaps honestly), else by position.
    const byTime = h.length > 1 && h.every((p) => p.feed_time != null) && h[h.length - 1].feed_time > h[0].feed_time;
    const xv = h.map((p, i) => (byTime ? p.feed_time : i));
    const x0 = xv[0], x1 = xv[xv.length - 1];
    const X = (v) => (x1 === x0 ? (L + W - R) / 2 : L + ((v - x0) / (x1 - x0)) * (W - L - R));
    let max = 0;
    for (const p of h) max = Math.max(max, p.nbr_total || 0, p.nbr_meca || 0, p.nbr_elec || 0);
    const ymax = niceCeil(max);
    const Y = (v) => T + (1 - v / ymax) * (H - T - B);
    for (const g of [0, ymax / 2, ymax]) {
      c.appendChild(svg('line', { x1: L, x2: W - R, y1: Y(g), y2: Y(g), class: 'grid' }));
      const t = svg('text', { x: L - 4, y: Y(g) + 3, 'text-anchor': 'end', class: 'axis' });
      t.textContent = ymax >= 10000 ? g / 1000 + 'k' : String(g); // keep axis labels inside the margin
      c.appendChild(t);
    }
    const xl = (v, anchor, x) => {
      const t = svg('text', { x, y: H - 3, 'text-anchor': anchor, class: 'axis' });
      t.textContent = v;
      c.appendChild(t);
    };
    const lab = (p) => (p.feed_time != null ? fmtClock(p.feed_time) : p.epoch != null ? '#' + p.epoch : '');
    xl(lab(h[0]), 'start', L);
    if (h.length > 1) xl(lab(h[h.length - 1]), 'end', W - R);
    for (const [key, cls] of [['nbr_elec', 'l-elec'], ['nbr_meca', 'l-meca'], ['nbr_total', 'l-total']]) {
      const pts = [];
      h.forEach((p, i) => { if (p[key] != null) pts.push(X(xv[i]).toFixed(1) + ',' + Y(p[key]).toFixed(1)); });
      if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, (s) => String(+s + 2))); // a lone point: short dash
      c.appendChild(svg('polyline', { points: pts.join(' '), class: cls }));
    }
    const last = h[h.length - 1];
    const tip = svg('title');
    tip.textContent = 'Epoch ' + fmtInt(last.epoch) + ': ' + fmtInt(last.nbr_total) + ' bikes (' +
      fmtInt(last.nbr_meca) + ' mechanical, ' + fmtInt(last.nbr_elec) + ' e-bikes); ' + h.length + ' epochs shown';
    c.appendChild(tip);
  }

  // ---------- map: projection ----------
  // Equirectangular, x scaled by cos(mean latitude), fitted to the stations' bounding box.
  // Computed on a snapshot, and again only when a station shows up outside the box.
  const VIEW_W = 1000;
  const proj = { ok: false, kx: 1, minX: 0, maxX: 0, minY: 0, maxY: 0, scale: 1 };
  const view = { base: null, cur: null }; // viewBox rectangles: whole map, and current zoom/pan

  function computeProjection() {
    let sumLat = 0, n = 0;
    for (const s of state.stations.values()) if (s.d.lat != null) { sumLat += s.d.lat; n++; }
    if (!n) { proj.ok = false; return; }
    const kx = Math.cos((sumLat / n) * Math.PI / 180);
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const s of state.stations.values()) {
      if (s.d.lat == null) continue;
      const x = s.d.lon * kx;
      if (x < minX) minX = x; if (x > maxX) maxX = x;
      if (s.d.lat < minY) minY = s.d.lat; if (s.d.lat > maxY) maxY = s.d.lat;
    }
    // A lone station (or a line of them) still needs a non-zero box.
    const MIN_SPAN = 0.005;
    if (maxX - minX < MIN_SPAN) { const m = (minX + maxX) / 2; minX = m - MIN_SPAN / 2; maxX = m + MIN_SPAN / 2; }
    if (maxY - minY < MIN_SPAN) { const m = (minY + maxY) / 2; minY = m - MIN_SPAN / 2; maxY = m + MIN_SPAN / 2; }
    Object.assign(proj, { ok: true, kx, minX, maxX, minY, maxY, scale: VIEW_W / (maxX - minX) });
    const w = VIEW_W, h = (maxY - minY) * proj.scale, pad = 0.03 * Math.max(w, h);
    const base = { x: -pad, y: -pad, w: w + 2 * pad, h: h + 2 * pad + 0.06 * w }; // extra room under the legend
    const same = view.base && ['x', 'y', 'w', 'h'].every((k) => Math.abs(view.base[k] - base[k]) < 1e-6);
    view.base = base;
    setView(same && view.cur ? view.cur : base); // keep the user's zoom when nothing moved
  }
  const inBox = (d) => proj.ok && d.lat >= proj.minY && d.lat <= proj.maxY &&
    d.lon * proj.kx >= proj.minX && d.lon * proj.kx <= proj.maxX;
  const px = (d) => ((d.lon * proj.kx - proj.minX) * proj.scale).toFixed(2);
  const py = (d) => ((proj.maxY - d.lat) * proj.scale).toFixed(2);

  // ---------- map: zoom and pan (viewBox only; circle size and font size are CSS variables) ----------
  function setView(v) {
    view.cur = v;
    el.map.setAttribute('viewBox', v.x + ' ' + v.y + ' ' + v.w + ' ' + v.h);
    updateScale();
  }
  function unitsPerPixel() {
    const v = view.cur, cw = el.map.clientWidth || 800, ch = el.map.clientHeight || 600;
    return Math.max(v.w / cw, v.h / ch); // preserveAspectRatio "meet": the tighter axis rules
  }
  function updateScale() {
    if (!view.cur) return;
    const upp = unitsPerPixel(), zoom = view.base.w / view.cur.w;
    const n = Math.max(1, el.stations.childElementCount);
    // Dots shrink as the map gets denser (20,000 stations stay legible), and grow slowly when zoomed.
    const rpx = Math.min(12, clamp(140 / Math.sqrt(n), 1.4, 5) * Math.sqrt(zoom));
    el.map.style.setProperty('--r', (rpx * upp).toFixed(4) + 'px');
    el.map.style.setProperty('--fs', (12 * upp).toFixed(4) + 'px');
  }
  function toUser(cx, cy) {
    const m = el.map.getScreenCTM();
    if (!m) return { x: view.cur.x + view.cur.w / 2, y: view.cur.y + view.cur.h / 2 };
    const p = new DOMPoint(cx, cy).matrixTransform(m.inverse());
    return { x: p.x, y: p.y };
  }
  el.map.addEventListener('wheel', (e) => {
    if (!view.cur) return;
    e.preventDefault();
    const v = view.cur, p = toUser(e.clientX, e.clientY);
    const w = clamp(v.w * Math.exp(e.deltaY * 0.0015), view.base.w / 60, view.base.w);
    if (w >= view.base.w) { setView(view.base); return; }
    const s = w / v.w;
    setView({ x: p.x - (p.x - v.x) * s, y: p.y - (p.y - v.y) * s, w, h: v.h * s });
  }, { passive: false });
  let drag = null;
  el.map.addEventListener('pointerdown', (e) => {
    if (!view.cur || e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, v: view.cur, upp: unitsPerPixel(), moved: false, id: e.pointerId };
  });
  el.map.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 3) return; // a click is not a drag
    if (!drag.moved) { drag.moved = true; el.map.setPointerCapture(e.pointerId); el.map.classList.add('dragging'); }
    setView({ x: drag.v.x - dx * drag.upp, y: drag.v.y - dy * drag.upp, w: drag.v.w, h: drag.v.h });
  });
  const endDrag = () => { drag = null; el.map.classList.remove('dragging'); };
  el.map.addEventListener('pointerup', endDrag);
  el.map.addEventListener('pointercancel', endDrag);
  el.map.addEventListener('dblclick', () => { if (view.base) setView(view.base); });
  if (window.ResizeObserver) {
    new ResizeObserver(updateScale).observe(el.map);
    new ResizeObserver(() => renderChart()).observe(el.chart);
  }

  // ---------- map: stations ----------
  function normStation(s) {
    let lat = num(s.lat), lon = num(s.lon);
    // Drawn exactly when the server gives a position; an impossible one cannot be projected.
    if (lat == null || lon == null || Math.abs(lat) > 90 || Math.abs(lon) > 180) lat = lon = null;
    return {
      name: s.name == null ? '' : String(s.name), lat, lon,
      postcode: s.postcode == null ? null : String(s.postcode),
      bikes: num(s.bikes) ?? 0, mechanical: num(s.mechanical), ebikes: num(s.ebikes), docks: num(s.docks),
      renting: s.renting !== false, returning: s.returning !== false, stale: s.stale === true,
    };
  }
  function stationClass(d) {
    if (d.stale) return 'station stale';
    if (!d.renting) return 'station closed';
    const b = d.bikes;
    return 'station ' + (b <= 0 ? 'b0' : b <= 2 ? 'b1' : b <= 5 ? 'b3' : 'b6');
  }
  function stationTip(id, d) {
    let t = (d.name || 'Station ' + id) + '\n' + fmtInt(d.bikes) + ' bikes: ' + fmtInt(d.mechanical) +
      ' mechanical, ' + fmtInt(d.ebikes) + ' e-bikes\n' + fmtInt(d.docks) + ' free docks';
    if (d.postcode) t += '\nPostcode ' + d.postcode;
    const flags = [];
    if (!d.renting) flags.push('not renting');
    if (!d.returning) flags.push('not accepting returns');
    if (d.stale) flags.push('stale data');
    return flags.length ? t + '\n(' + flags.join(', ') + ')' : t;
  }
  // Create or update one station's circle; touches only what changed. `parent` lets a
  // snapshot build all circles in a fragment. Returns true when the box must be recomputed.
  function drawStation(id, s, parent) {
    const d = s.d;
    if (d.lat == null) { if (s.el) { s.el.remove(); s.el = s.tip = null; } return false; }
    if (!s.el) {
      s.el = svg('circle', { 'data-station': id, r: 3 });
      s.tip = svg('title');
      s.el.appendChild(s.tip);
      (parent || el.stations).appendChild(s.el);
    }
    const cls = stationClass(d);
    if (s.el.getAttribute('class') !== cls) s.el.setAttribute('class', cls);
    const b = String(d.bikes);
    if (s.el.getAttribute('data-bikes') !== b) s.el.setAttribute('data-bikes', b);
    setText(s.tip, stationTip(id, d));
    if (!inBox(d)) return true;
    const x = px(d), y = py(d);
    if (s.el.getAttribute('cx') !== x) s.el.setAttribute('cx', x);
    if (s.el.getAttribute('cy') !== y) s.el.setAttribute('cy', y);
    return false;
  }
  function redrawAllPositions() {
    computeProjection();
    for (const s of state.stations.values()) {
      if (!s.el) continue;
      s.el.setAttribute('cx', px(s.d));
      s.el.setAttribute('cy', py(s.d));
    }
  }

  // ---------- map: postcode labels at the centroid of their stations ----------
  function renderLabels(changed) {
    const acc = new Map();
    for (const s of state.stations.values()) {
      const d = s.d;
      if (d.lat == null || d.postcode == null || !s.el) continue;
      let a = acc.get(d.postcode);
      if (!a) acc.set(d.postcode, (a = { lat: 0, lon: 0, n: 0 }));
      a.lat += d.lat; a.lon += d.lon; a.n++;
    }
    for (const [pc, p] of state.postcodes) {
      const a = acc.get(pc);
      // "unknown" collects stations placed in no postcode: their centroid means nothing.
      if (!a || pc === 'unknown' || !proj.ok) { if (p.label) { p.label.g.remove(); p.label = null; } continue; }
      if (!p.label) {
        const g = svg('g', { class: 'pc' });
        const tip = svg('title');
        const name = svg('text', { class: 'postcode-name', dy: '-1.15em', 'data-postcode': pc });
        const n = svg('text', { class: 'postcode-label', dy: '0.35em', 'data-postcode': pc });
        name.textContent = pc;
        g.append(tip, name, n);
        el.labels.appendChild(g);
        p.label = { g, name, num: n, tip };
      }
      const c = { lat: a.lat / a.n, lon: a.lon / a.n };
      const x = px(c), y = py(c);
      for (const t of [p.label.name, p.label.num]) {
        if (t.getAttribute('x') !== x) t.setAttribute('x', x);
        if (t.getAttribute('y') !== y) t.setAttribute('y', y);
      }
      const r = p.rec;
      setText(p.label.num, fmtInt(num(r.nbr_total)));
      setText(p.label.tip, pc + ': ' + fmtInt(num(r.nbr_total)) + ' bikes (' + fmtInt(num(r.nbr_meca)) +
        ' mechanical, ' + fmtInt(num(r.nbr_elec)) + ' e-bikes), ' + fmtInt(num(r.nbr_docks)) + ' free docks, ' +
        fmtInt(num(r.nbr_stations_renting)) + '/' + fmtInt(num(r.nbr_stations)) + ' stations renting');
      p.label.g.classList.toggle('changed', !!(changed && changed.has(pc)));
    }
  }

  function renderNote() {
    let note = null;
    if (typeof state.note === 'string' && state.note) note = state.note;
    else if (state.loaded && state.epoch != null && !el.stations.childElementCount) note = 'No station positions to draw.';
    if (note != null) setText(el.note, note);
    el.note.hidden = note == null;
  }

  // ---------- postcode table ----------
  const sort = { key: 'postcode', dir: 1 };

  function makeRow(pc) {
    const row = document.createElement('tr');
    row.dataset.postcode = pc;
    const first = document.createElement('td');
    first.textContent = pc;
    row.appendChild(first);
    const cells = {};
    for (const f of ROW_FIELDS) {
      const td = document.createElement('td');
      td.dataset.field = f;
      row.appendChild(td);
      cells[f] = td;
    }
    for (const f in SINCE_FIELDS) {
      const td = document.createElement('td');
      td.dataset.field = f;
      row.appendChild(td);
      cells[f] = td;
    }
    return { rec: {}, row, cells, label: null };
  }
  // Whole minutes from a since-time to the feed time shown; '—' when none.
  function minutesSince(since) {
    const s = num(since), now = state.feedTime;
    if (s == null || now == null) return '—';
    return fmtInt(Math.max(0, Math.floor((now - s) / 60)));
  }
  function fillSince(p) {
    for (const f in SINCE_FIELDS) setText(p.cells[f], minutesSince(p.rec[SINCE_FIELDS[f]]));
  }
  const cellText = (rec, f) => (f === 'occupancy' ? fmtOcc(num(rec[f])) : fmtInt(num(rec[f])));
  // Fill a row; returns true when any displayed value changed.
  function fillRow(p, rec) {
    let changed = false;
    for (const f of ROW_FIELDS) {
      const td = p.cells[f], t = cellText(rec, f);
      const diff = td.textContent !== t;
      if (diff) { td.textContent = t; changed = true; }
      td.classList.toggle('diff', diff);
    }
    p.cells.nbr_total.classList.toggle('zero', num(rec.nbr_total) === 0);
    p.rec = rec;
    fillSince(p);
    return changed;
  }
  function upsertPostcode(pc, rec, parent) {
    let p = state.postcodes.get(pc), isNew = false;
    if (!p) { p = makeRow(pc); state.postcodes.set(pc, p); (parent || el.tbody).appendChild(p.row); isNew = true; }
    return fillRow(p, rec) || isNew;
  }
  function removePostcode(pc) {
    const p = state.postcodes.get(pc);
    if (!p) return;
    p.row.remove();
    if (p.label) p.label.g.remove();
    state.postcodes.delete(pc);
  }

  function compareRows(a, b) {
    if (sort.key !== 'postcode') {
      const va = num(a[1].rec[sort.key]), vb = num(b[1].rec[sort.key]);
      if (va == null || vb == null) { if (va != null) return -1; if (vb != null) return 1; } // nulls last
      else if (va !== vb) return (va - vb) * sort.dir;
      return a[0].localeCompare(b[0], 'en', { numeric: true });
    }
    return a[0].localeCompare(b[0], 'en', { numeric: true }) * sort.dir;
  }
  function applySort() {
    const rows = [...state.postcodes].sort(compareRows).map((e) => e[1].row);
    const cur = el.tbody.children;
    let same = cur.length === rows.length;
    for (let i = 0; same && i < rows.length; i++) same = cur[i] === rows[i];
    if (!same) for (const r of rows) el.tbody.appendChild(r); // appendChild moves existing rows
    for (const th of el.table.tHead.rows[0].cells) {
      if (th.dataset.key === sort.key) th.setAttribute('aria-sort', sort.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
  }
  function applyFilter() {
    const q = el.search.value.trim().toLowerCase();
    let shown = 0;
    for (const [pc, p] of state.postcodes) {
      const hide = q !== '' && !pc.toLowerCase().includes(q);
      if (p.row.hidden !== hide) p.row.hidden = hide;
      if (!hide) shown++;
    }
    const n = state.postcodes.size;
    setText(el.rowCount, q ? shown + ' of ' + n + ' postcodes' : n + ' postcode' + (n === 1 ? '' : 's'));
  }
  function highlightRows(changed) {
    for (const r of el.tbody.querySelectorAll('tr.changed')) r.classList.remove('changed');
    if (!changed.size) return;
    void el.tbody.offsetWidth; // reflow so the flash animation restarts on rows that changed again
    for (const pc of changed) { const p = state.postcodes.get(pc); if (p) p.row.classList.add('changed'); }
  }

  for (const th of el.table.tHead.rows[0].cells) {
    th.addEventListener('click', () => {
      const key = th.dataset.key;
      if (sort.key === key) sort.dir = -sort.dir; else { sort.key = key; sort.dir = 1; }
      applySort();
    });
  }
  el.search.addEventListener('input', applyFilter);

  // ---------- applying server data ----------
  function finish(changedPostcodes) {
    for (const p of state.postcodes.values()) fillSince(p);
    renderHeader();
    renderTotals();
    renderChart();
    renderLabels(changedPostcodes);
    renderNote();
    applySort();
    applyFilter();
    updateScale();
    // Set last: tests treat data-epoch as "the DOM is fully updated for this epoch".
    if (state.epoch == null) delete document.body.dataset.epoch;
    else document.body.dataset.epoch = String(state.epoch);
  }

  // A snapshot replaces everything (also the catch-up path after a reconnect).
  function applySnapshot(snap, at) {
    if (!isObj(snap)) throw new Error('snapshot is not an object');
    state.loaded = true;
    state.feedTime = state.feedAge = null;
    state.staleAfter = 300;
    applyMeta(snap, at);
    state.totals = isObj(snap.totals) ? snap.totals : {};
    state.history = (Array.isArray(snap.history) ? snap.history : []).filter(isObj).map(normHist).slice(-HISTORY_MAX);
    state.note = typeof snap.stations_note === 'string' ? snap.stations_note : null;
    // Why nothing is shown yet, when the server knows.
    const why = isObj(snap.reader) && typeof snap.reader.waiting_for === 'string' ? snap.reader.waiting_for : null;
    el.waiting.textContent = 'Waiting for the first committed epoch' + (why ? ': ' + why : '…');

    state.stations.clear();
    el.stations.textContent = '';
    if (isObj(snap.stations)) {
      for (const id in snap.stations) {
        const s = snap.stations[id];
        if (isObj(s)) state.stations.set(id, { d: normStation(s), el: null, tip: null });
      }
    }
    computeProjection();
    const frag = document.createDocumentFragment();
    for (const [id, s] of state.stations) {
      try { drawStation(id, s, frag); } catch (e) { console.error('velib: bad station', id, e); }
    }
    el.stations.appendChild(frag);

    state.postcodes.clear();
    el.tbody.textContent = '';
    el.labels.textContent = '';
    const rows = document.createDocumentFragment();
    if (isObj(snap.postcodes)) {
      for (const pc in snap.postcodes) {
        const r = snap.postcodes[pc];
        if (isObj(r)) upsertPostcode(pc, r, rows);
      }
    }
    el.tbody.appendChild(rows);
    highlightRows(new Set());
    finish(null);
  }

  function applyEpoch(ev, at) {
    if (!isObj(ev)) throw new Error('epoch event is not an object');
    const e = num(ev.epoch);
    if (e == null) throw new Error('epoch event without a numeric epoch');
    if (state.epoch != null && e <= state.epoch) return; // old or duplicate: already shown
    applyMeta(ev, at);
    if (isObj(ev.totals)) state.totals = ev.totals;
    if (isObj(ev.history_entry)) {
      const h = normHist(ev.history_entry);
      state.history = state.history.filter((x) => x.epoch == null || h.epoch == null || x.epoch < h.epoch);
      state.history.push(h);
      if (state.history.length > HISTORY_MAX) state.history.splice(0, state.history.length - HISTORY_MAX);
    }

    let reproject = false;
    if (isObj(ev.stations)) {
      for (const id in ev.stations) {
        try {
          const s = ev.stations[id];
          if (s === null) {
            const old = state.stations.get(id);
            if (old && old.el) old.el.remove();
            state.stations.delete(id);
          } else if (isObj(s)) {
            let cur = state.stations.get(id);
            if (!cur) state.stations.set(id, (cur = { d: null, el: null, tip: null }));
            cur.d = normStation(s);
            if (drawStation(id, cur)) reproject = true;
          }
        } catch (err) { console.error('velib: bad station update', id, err); }
      }
    }
    if (reproject || (!proj.ok && el.stations.childElementCount)) redrawAllPositions();

    const changed = new Set();
    if (isObj(ev.postcodes)) {
      for (const pc in ev.postcodes) {
        try {
          const r = ev.postcodes[pc];
          if (r === null) removePostcode(pc);
          else if (isObj(r) && upsertPostcode(pc, r)) changed.add(pc);
        } catch (err) { console.error('velib: bad postcode update', pc, err); }
      }
    }
    highlightRows(changed);
    finish(changed);
  }

  // One malformed message must never break the page: parse and apply inside try/catch.
  function handle(kind, data, at) {
    try {
      const v = typeof data === 'string' ? JSON.parse(data) : data;
      if (kind === 'snapshot') applySnapshot(v, at); else applyEpoch(v, at);
    } catch (err) {
      console.error('velib: ignoring malformed ' + kind + ' message:', err);
    }
  }

  // ---------- connection ----------
  // EventSource reconnects by itself after a dropped stream; if it gives up for good
  // (readyState CLOSED, e.g. an HTTP error), we open a new one with backoff. Data stays visible.
  let es = null, retryTimer = 0, failures = 0, sawSnapshot = false;
  function connect() {
    clearTimeout(retryTimer);
    if (es) es.close();
    es = new EventSource('/events');
    const me = es;
    es.addEventListener('open', () => { if (me === es) setConnection(true); });
    es.addEventListener('snapshot', (m) => {
      if (me !== es) return;
      sawSnapshot = true; failures = 0;
      setConnection(true);
      handle('snapshot', m.data, performance.now());
    });
    es.addEventListener('epoch', (m) => {
      if (me !== es) return;
      setConnection(true);
      handle('epoch', m.data, performance.now());
    });
    es.addEventListener('error', () => {
      if (me !== es) return;
      setConnection(false);
      if (es.readyState === EventSource.CLOSED) {
        failures++;
        retryTimer = setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, Math.min(failures, 5))));
      }
    });
  }

  setConnection(false);
  renderHeader();
  renderChart();
  applyFilter();
  setInterval(tick, 1000);
  connect();
  // Fallback when /events is slow or blocked (e.g. a buffering proxy): fetch /api/state once.
  // Not done up front, because applying a 20,000-station snapshot twice costs a visible pause.
  setTimeout(() => {
    if (sawSnapshot) return;
    fetch('/api/state', { cache: 'no-store' })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error('HTTP ' + r.status))))
      .then((t) => { if (!sawSnapshot) handle('snapshot', t, performance.now()); }) // SSE data always wins
      .catch((err) => console.warn('velib: /api/state failed:', err));
  }, 1500);
})();
