// hail operator console. Plain JS, no framework, no build step, nothing fetched from
// anywhere but this server (map tiles only when an operator sets a tile URL).
//
// Data flow: sign in with a REST call (so a wrong token gets a clear message), apply that
// snapshot, then open /v1/ops/ws. Every socket message updates `model`; rendering is
// decoupled from arrival: messages only mark what is dirty, the map is drawn at most once
// per animation frame and the side panels at most PANELS_EVERY_MS, so a busy fleet costs
// the same number of frames as a quiet one.
'use strict';

(() => {
  const SEOUL = { lat: 37.5665, lng: 126.978 };
  const TILE_PX = 256;
  const ZOOM_MIN = 3;
  const ZOOM_MAX = 19;
  const EARTH_RADIUS_M = 6_371_008.8;
  const EQUATOR_M = 2 * Math.PI * 6_378_137;
  /// Offer log lines kept and shown; the server keeps 200 for a resync.
  const OFFER_LOG_MAX = 200;
  /// Finished trips kept for clicking through; open trips are always all kept.
  const TERMINAL_TRIPS_KEPT = 200;
  /// Rows in the open-trips list; the count above it is always exact.
  const TRIP_LIST_MAX = 100;
  /// Drivers offered in the manual-assign list.
  const ASSIGN_CHOICES = 12;
  /// Figures arrive every 2 s: this long without any message means the socket is dead
  /// even if the browser has not noticed (a half-open TCP connection never says so).
  const SILENCE_LIMIT_MS = 10_000;
  const BACKOFF_MS = [1_000, 2_000, 4_000, 8_000, 15_000, 30_000];
  const PANELS_EVERY_MS = 250;
  const TILE_CACHE_MAX = 256;
  /// Below this many drivers on screen each is a ringed dot; above, a 3 px square, which
  /// is what keeps 50,000 drivers within a frame.
  const DETAILED_DRIVERS_MAX = 2_500;
  const TOKEN_KEY = 'hail.operator_token';
  const TILE_KEY = 'hail.tile_template';

  const OPEN_STATES = new Set(['requested', 'accepted', 'arrived', 'in_progress']);
  const ACTIVE_STATES = new Set(['accepted', 'arrived', 'in_progress']);
  const CANCELLABLE_STATES = new Set(['requested', 'accepted', 'arrived']);
  /// Drawing order: later categories are drawn on top.
  const CATEGORIES = ['offline', 'stale', 'available', 'to_pickup', 'on_trip', 'offered'];
  const CATEGORY_LABEL = {
    available: 'available',
    offered: 'holding an offer',
    to_pickup: 'heading to pickup',
    on_trip: 'on trip',
    stale: 'stale (no recent ping)',
    offline: 'offline (not taking rides)',
  };

  const $ = (id) => document.getElementById(id);
  const css = getComputedStyle(document.documentElement);
  const colour = (name) => css.getPropertyValue(`--${name}`).trim();
  const COLOURS = Object.fromEntries(
    [...CATEGORIES, 'request', 'map-bg', 'map-grid', 'map-label', 'accent', 'ink', 'muted',
      'trend-requested', 'trend-completed', 'trend-lost', 'line'].map((name) => [name, colour(name)]),
  );
  /// The category colours as opaque pixels (RGBA bytes in memory order, little-endian).
  const PIXEL_COLOURS = Object.fromEntries(CATEGORIES.map((name) => {
    const hex = /^#([0-9a-f]{6})$/i.exec(COLOURS[name]);
    const value = hex ? parseInt(hex[1], 16) : 0x808080;
    const [red, green, blue] = [(value >> 16) & 255, (value >> 8) & 255, value & 255];
    return [name, ((255 << 24) | (blue << 16) | (green << 8) | red) >>> 0];
  }));

  // ---------------------------------------------------------------- model

  const model = {
    /** id → {id, state, lat, lng, x, y, tripId, connected (as of the last snapshot)} */
    drivers: new Map(),
    /** id → trip as the server sent it (+ cached projections `_pickup`, `_dropoff`) */
    trips: new Map(),
    /** newest first, at most OFFER_LOG_MAX */
    offers: [],
    /** offer id → its `made` line, so later lines can show the ranking inputs too */
    madeOffers: new Map(),
    figures: null,
  };

  const session = { token: null };

  /// What the inspector shows: `{kind: 'driver' | 'trip', id}` or null.
  let selected = null;
  /// The selected trip as last fetched, for trips no longer in the live model.
  let fetchedTrip = null;
  /// `behind`: the highest seq that arrived live while a load was under way, which that
  /// load may have missed.
  const timeline = { tripId: null, events: [], loading: false, request: 0, behind: 0 };
  /// What the inspector last drew and the ids in the assign list, so a redraw happens
  /// only on change and never swaps an element out from under the pointer.
  let inspectorKey = '';
  let assignChoices = '';

  function isNumber(value) {
    return typeof value === 'number' && Number.isFinite(value);
  }

  /// Web-Mercator, as a fraction of the world: x, y in [0, 1], y growing south.
  function project(lat, lng) {
    const sin = Math.min(0.9999, Math.max(-0.9999, Math.sin((lat * Math.PI) / 180)));
    return { x: (lng + 180) / 360, y: 0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI) };
  }

  function unproject(x, y) {
    const lng = x * 360 - 180;
    const lat = (360 / Math.PI) * Math.atan(Math.exp((0.5 - y) * 2 * Math.PI)) - 90;
    return { lat, lng };
  }

  function distanceM(lat1, lng1, lat2, lng2) {
    const rad = Math.PI / 180;
    const dLat = (lat2 - lat1) * rad;
    const dLng = (lng2 - lng1) * rad;
    const a = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLng / 2) ** 2;
    return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(a)));
  }

  function place(driver, lat, lng) {
    if (isNumber(lat) && isNumber(lng)) {
      const point = project(lat, lng);
      driver.lat = lat;
      driver.lng = lng;
      driver.x = point.x;
      driver.y = point.y;
    } else {
      driver.lat = driver.lng = driver.x = driver.y = NaN;
    }
  }

  /// From a snapshot's full view; movement batches then update state, place and trip.
  function driverFromView(entry) {
    const driver = {
      id: String(entry.id),
      state: entry.state,
      tripId: entry.trip_id ?? null,
      connected: entry.connected ?? null,
    };
    place(driver, entry.position?.lat, entry.position?.lng);
    return driver;
  }

  /// Where a trip's pickup and drop-off are on the map; computed once per trip object.
  function tripPoints(trip) {
    if (!trip._pickup) {
      const ok = (p) => p && isNumber(p.lat) && isNumber(p.lng);
      trip._pickup = ok(trip.pickup) ? project(trip.pickup.lat, trip.pickup.lng) : null;
      trip._dropoff = ok(trip.dropoff) ? project(trip.dropoff.lat, trip.dropoff.lng) : null;
    }
    return trip;
  }

  function category(driver) {
    if (driver.state === 'busy') {
      const trip = driver.tripId ? model.trips.get(driver.tripId) : null;
      return trip && trip.state === 'in_progress' ? 'on_trip' : 'to_pickup';
    }
    return CATEGORY_LABEL[driver.state] ? driver.state : 'offline';
  }

  function storeTrip(trip) {
    if (!trip || typeof trip.id !== 'string') return false;
    const known = model.trips.get(trip.id);
    if (known && known.seq >= trip.seq) return false;
    model.trips.set(trip.id, trip);
    return true;
  }

  function pruneTerminalTrips() {
    const terminal = [];
    for (const trip of model.trips.values()) if (!OPEN_STATES.has(trip.state)) terminal.push(trip);
    if (terminal.length <= TERMINAL_TRIPS_KEPT) return;
    terminal.sort((a, b) => millis(b, 'updated_at') - millis(a, 'updated_at'));
    for (const trip of terminal.slice(TERMINAL_TRIPS_KEPT)) {
      if (!(selected && selected.kind === 'trip' && selected.id === trip.id)) model.trips.delete(trip.id);
    }
  }

  /// A trip's timestamp field in milliseconds, parsed once per trip object: sorting
  /// thousands of open trips must not parse thousands of dates on every comparison.
  function millis(trip, field) {
    const key = `_${field}`;
    if (trip[key] === undefined) trip[key] = Date.parse(trip[field]);
    return trip[key];
  }

  function rememberOffer(offer) {
    if (offer.outcome === 'made') {
      model.madeOffers.set(offer.offer_id, offer);
      // Insertion order is age order: drop the oldest beyond a bound.
      if (model.madeOffers.size > OFFER_LOG_MAX * 2) {
        model.madeOffers.delete(model.madeOffers.keys().next().value);
      }
    }
    model.offers.unshift(offer);
    if (model.offers.length > OFFER_LOG_MAX) model.offers.length = OFFER_LOG_MAX;
  }

  // ---------------------------------------------------------------- messages

  const dirty = { map: false, panels: false, offersRebuild: false, figures: false, prune: false };
  const pendingOfferRows = [];

  function receive(message) {
    if (!message || typeof message !== 'object') return;
    switch (message.type) {
      case 'snapshot':
        applySnapshot(message);
        break;
      case 'drivers':
        applyDrivers(message);
        break;
      case 'trip_event':
        applyTripEvent(message);
        break;
      case 'offer':
        rememberOffer(message);
        pendingOfferRows.push(message);
        invalidate('panels');
        break;
      case 'figures':
        model.figures = message.figures ?? model.figures;
        dirty.figures = true;
        invalidate('panels');
        break;
      case 'error':
        showBanner(`The server reported: ${message.message ?? message.code ?? 'an error'}`, 'error', 15_000);
        break;
      default:
        // A newer server may send more kinds; ignoring them keeps this page working.
        break;
    }
  }

  function applySnapshot(snapshot) {
    model.drivers = new Map();
    for (const entry of snapshot.drivers ?? []) {
      if (entry && entry.id != null) model.drivers.set(String(entry.id), driverFromView(entry));
    }
    model.trips = new Map();
    for (const trip of snapshot.trips ?? []) storeTrip(trip);
    pruneTerminalTrips();
    model.offers = [];
    model.madeOffers.clear();
    pendingOfferRows.length = 0;
    // The snapshot lists offers oldest first.
    for (const offer of snapshot.offers ?? []) rememberOffer(offer);
    model.figures = snapshot.figures ?? null;
    if (!view.placed) fitFleet();
    dirty.offersRebuild = true;
    dirty.figures = true;
    if (selected) {
      if (selected.kind === 'trip') loadTimeline(selected.id);
      renderInspector(true);
    }
    invalidate('map', 'panels');
  }

  function applyDrivers(message) {
    for (const row of message.drivers ?? []) {
      if (!Array.isArray(row) || row[0] == null) continue;
      const id = String(row[0]);
      let driver = model.drivers.get(id);
      if (!driver) {
        driver = { id, connected: null };
        model.drivers.set(id, driver);
      }
      driver.state = row[1];
      place(driver, row[2], row[3]);
      driver.tripId = row[4] ?? null;
    }
    for (const id of message.removed ?? []) model.drivers.delete(String(id));
    invalidate('map', 'panels');
  }

  function applyTripEvent(event) {
    if (!storeTrip(event.trip)) return;
    // Finished trips are pruned with the next panel render, not once per event.
    if (!OPEN_STATES.has(event.trip.state)) dirty.prune = true;
    if (selected && selected.kind === 'trip' && selected.id === event.trip_id && timeline.tripId === event.trip_id) {
      const last = timeline.events.length ? timeline.events[timeline.events.length - 1].seq : 0;
      if (timeline.loading) {
        timeline.behind = Math.max(timeline.behind, event.seq);
      } else if (event.seq === last + 1) {
        timeline.events.push(event);
        renderTimeline();
      } else if (event.seq > last + 1) {
        loadTimeline(event.trip_id);
      }
    }
    invalidate('map', 'panels');
  }

  // ---------------------------------------------------------------- scheduling

  let frameRequested = false;
  let panelsTimer = null;

  function invalidate(...what) {
    for (const part of what) dirty[part] = true;
    if (dirty.map && !frameRequested) {
      frameRequested = true;
      requestAnimationFrame(() => {
        frameRequested = false;
        if (dirty.map) {
          dirty.map = false;
          drawMap();
        }
      });
    }
    if (dirty.panels && panelsTimer === null) {
      panelsTimer = setTimeout(() => {
        panelsTimer = null;
        dirty.panels = false;
        renderPanels();
      }, PANELS_EVERY_MS);
    }
  }

  // ---------------------------------------------------------------- map

  const canvas = $('map');
  const context = canvas.getContext('2d', { alpha: false });
  const view = { cx: 0, cy: 0, zoom: 12, width: 0, height: 0, dpr: 1, placed: false };
  const lastFrame = { drivers: 0, requests: 0, trips: 0, ms: 0 };
  /// Reused between frames: screen coordinates of visible drivers, per category.
  const scratch = Object.fromEntries(CATEGORIES.map((name) => [name, []]));

  function centreOn(lat, lng, zoom) {
    const point = project(lat, lng);
    view.cx = point.x;
    view.cy = point.y;
    view.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom));
  }
  centreOn(SEOUL.lat, SEOUL.lng, 12);

  function worldScale() {
    return TILE_PX * 2 ** view.zoom;
  }

  function toWorld(sx, sy) {
    const scale = worldScale();
    return { x: (sx - view.width / 2) / scale + view.cx, y: (sy - view.height / 2) / scale + view.cy };
  }

  function resizeMap() {
    const rect = canvas.parentElement.getBoundingClientRect();
    view.dpr = window.devicePixelRatio || 1;
    view.width = Math.max(1, Math.round(rect.width));
    view.height = Math.max(1, Math.round(rect.height));
    canvas.width = Math.round(view.width * view.dpr);
    canvas.height = Math.round(view.height * view.dpr);
    invalidate('map');
  }

  /// Centre on the fleet (or the open requests), else on Seoul.
  function fitFleet() {
    let minX = Infinity;
    let maxX = -Infinity;
    let minY = Infinity;
    let maxY = -Infinity;
    const take = (x, y) => {
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    };
    for (const driver of model.drivers.values()) if (isNumber(driver.x)) take(driver.x, driver.y);
    for (const trip of model.trips.values()) {
      if (OPEN_STATES.has(trip.state) && tripPoints(trip)._pickup) take(trip._pickup.x, trip._pickup.y);
    }
    view.placed = true;
    if (minX === Infinity) {
      centreOn(SEOUL.lat, SEOUL.lng, 12);
    } else {
      view.cx = (minX + maxX) / 2;
      view.cy = (minY + maxY) / 2;
      const width = Math.max(view.width, 320) * 0.8;
      const height = Math.max(view.height, 240) * 0.8;
      const spanX = Math.max(maxX - minX, 1e-9);
      const spanY = Math.max(maxY - minY, 1e-9);
      const zoom = Math.log2(Math.min(width / (spanX * TILE_PX), height / (spanY * TILE_PX)));
      view.zoom = Math.min(15, Math.max(ZOOM_MIN, zoom));
    }
    invalidate('map');
  }

  function zoomAt(sx, sy, zoom) {
    const before = toWorld(sx, sy);
    view.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom));
    const after = toWorld(sx, sy);
    view.cx += before.x - after.x;
    view.cy += before.y - after.y;
    clampView();
    invalidate('map');
  }

  function clampView() {
    view.cx = Math.min(1, Math.max(0, view.cx));
    view.cy = Math.min(1, Math.max(0, view.cy));
  }

  function drawMap() {
    const started = performance.now();
    const { width, height } = view;
    context.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    context.fillStyle = COLOURS['map-bg'];
    context.fillRect(0, 0, width, height);
    const scale = worldScale();
    // Screen = world × scale + offset: two multiply-adds per point in the hot loops.
    const offsetX = width / 2 - view.cx * scale;
    const offsetY = height / 2 - view.cy * scale;
    const tiled = drawTiles(scale, offsetX, offsetY);
    const gridLabels = drawGrid(scale, tiled);
    drawTrips(scale, offsetX, offsetY);
    drawDrivers(scale, offsetX, offsetY);
    drawSelection(scale, offsetX, offsetY);
    // Labels last, haloed, so a dense fleet cannot hide where on Earth this is.
    context.font = '11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
    context.lineWidth = 3;
    context.strokeStyle = 'rgba(238,236,230,0.9)';
    context.fillStyle = COLOURS['map-label'];
    for (const [text, x, y] of gridLabels) {
      context.strokeText(text, x, y);
      context.fillText(text, x, y);
    }
    drawScaleBar();
    lastFrame.ms = performance.now() - started;
    canvas.dataset.drivers = String(lastFrame.drivers);
  }

  function drawDrivers(scale, offsetX, offsetY) {
    const { width, height } = view;
    for (const name of CATEGORIES) scratch[name].length = 0;
    let visible = 0;
    for (const driver of model.drivers.values()) {
      const sx = driver.x * scale + offsetX;
      const sy = driver.y * scale + offsetY;
      // NaN (no position yet) fails both comparisons and is skipped too.
      if (!(sx >= -6 && sx <= width + 6 && sy >= -6 && sy <= height + 6)) continue;
      const points = scratch[category(driver)];
      points.push(sx, sy);
      visible += 1;
    }
    lastFrame.drivers = visible;
    if (visible > DETAILED_DRIVERS_MAX) drawDenseDrivers();
    else drawDetailedDrivers();
  }

  /// Few drivers: ringed dots. A white halo pass first, then the colours, so a cluster
  /// reads as one blob with one outline rather than a tangle of rings.
  function drawDetailedDrivers() {
    const radius = view.zoom >= 14 ? 6 : 5;
    const circles = (points, r) => {
      context.beginPath();
      for (let i = 0; i < points.length; i += 2) {
        context.moveTo(points[i] + r, points[i + 1]);
        context.arc(points[i], points[i + 1], r, 0, 2 * Math.PI);
      }
    };
    context.fillStyle = 'rgba(255,255,255,0.92)';
    for (const name of CATEGORIES) {
      if (!scratch[name].length) continue;
      circles(scratch[name], radius + 1.5);
      context.fill();
    }
    for (const name of CATEGORIES) {
      const points = scratch[name];
      if (!points.length) continue;
      if (name === 'stale') {
        circles(points, radius - 1);
        context.lineWidth = 2;
        context.strokeStyle = COLOURS.stale;
        context.stroke();
      } else {
        circles(points, radius);
        context.fillStyle = COLOURS[name];
        context.fill();
      }
    }
  }

  /// Many drivers: a square of pixels each, written straight into an image. Canvas
  /// calls cost ~1 µs a shape in software rendering (30–40 ms for 40,000 drivers);
  /// writing pixels costs ~1 ms for the same, which is what keeps 50,000 fluid.
  const dense = { canvas: document.createElement('canvas'), image: null, pixels: null };

  function drawDenseDrivers() {
    const deviceWidth = canvas.width;
    const deviceHeight = canvas.height;
    if (!dense.image || dense.image.width !== deviceWidth || dense.image.height !== deviceHeight) {
      dense.canvas.width = deviceWidth;
      dense.canvas.height = deviceHeight;
      dense.image = new ImageData(deviceWidth, deviceHeight);
      dense.pixels = new Uint32Array(dense.image.data.buffer);
    }
    const pixels = dense.pixels;
    pixels.fill(0);
    const size = view.dpr >= 2 ? 5 : 3;
    const half = (size - 1) / 2;
    const dpr = view.dpr;
    for (const name of CATEGORIES) {
      const points = scratch[name];
      const rgba = PIXEL_COLOURS[name];
      for (let i = 0; i < points.length; i += 2) {
        const left = Math.round(points[i] * dpr) - half;
        const top = Math.round(points[i + 1] * dpr) - half;
        if (left < 0 || top < 0 || left + size > deviceWidth || top + size > deviceHeight) continue;
        for (let row = 0; row < size; row += 1) {
          const start = (top + row) * deviceWidth + left;
          pixels.fill(rgba, start, start + size);
        }
      }
    }
    dense.canvas.getContext('2d').putImageData(dense.image, 0, 0);
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.drawImage(dense.canvas, 0, 0);
    context.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function drawTrips(scale, offsetX, offsetY) {
    const { width, height } = view;
    const inView = (sx, sy) => sx >= -20 && sx <= width + 20 && sy >= -20 && sy <= height + 20;
    const requests = [];
    const toPickup = [];
    const onTrip = [];
    for (const trip of model.trips.values()) {
      if (!OPEN_STATES.has(trip.state)) continue;
      tripPoints(trip);
      if (!trip._pickup) continue;
      const px = trip._pickup.x * scale + offsetX;
      const py = trip._pickup.y * scale + offsetY;
      if (trip.state === 'requested') {
        if (inView(px, py)) requests.push(px, py);
        continue;
      }
      if (!trip._dropoff) continue;
      const dx = trip._dropoff.x * scale + offsetX;
      const dy = trip._dropoff.y * scale + offsetY;
      // A line is drawn if its bounding box meets the screen.
      if (Math.max(px, dx) < 0 || Math.min(px, dx) > width || Math.max(py, dy) < 0 || Math.min(py, dy) > height) continue;
      (trip.state === 'in_progress' ? onTrip : toPickup).push(px, py, dx, dy);
    }
    const many = toPickup.length + onTrip.length > 8_000;
    context.lineWidth = many ? 1 : 1.5;
    context.globalAlpha = many ? 0.25 : 0.5;
    for (const [lines, name] of [[toPickup, 'to_pickup'], [onTrip, 'on_trip']]) {
      if (!lines.length) continue;
      context.strokeStyle = COLOURS[name];
      context.beginPath();
      for (let i = 0; i < lines.length; i += 4) {
        context.moveTo(lines[i], lines[i + 1]);
        context.lineTo(lines[i + 2], lines[i + 3]);
      }
      context.stroke();
      if (!many) {
        // Drop-offs as small squares so the direction of each trip reads at a glance.
        context.fillStyle = COLOURS[name];
        for (let i = 0; i < lines.length; i += 4) context.fillRect(lines[i + 2] - 2.5, lines[i + 3] - 2.5, 5, 5);
      }
    }
    context.globalAlpha = 1;
    lastFrame.trips = (toPickup.length + onTrip.length) / 4;
    lastFrame.requests = requests.length / 2;
    if (!requests.length) return;
    context.strokeStyle = COLOURS.request;
    context.fillStyle = '#ffffff';
    if (requests.length / 2 > 2_000) {
      context.fillStyle = COLOURS.request;
      for (let i = 0; i < requests.length; i += 2) context.fillRect(requests[i] - 2, requests[i + 1] - 2, 4, 4);
      return;
    }
    context.lineWidth = 2.5;
    context.beginPath();
    for (let i = 0; i < requests.length; i += 2) {
      context.moveTo(requests[i] + 7, requests[i + 1]);
      context.arc(requests[i], requests[i + 1], 7, 0, 2 * Math.PI);
    }
    context.fill();
    context.stroke();
    context.fillStyle = COLOURS.request;
    context.beginPath();
    for (let i = 0; i < requests.length; i += 2) {
      context.moveTo(requests[i] + 2.5, requests[i + 1]);
      context.arc(requests[i], requests[i + 1], 2.5, 0, 2 * Math.PI);
    }
    context.fill();
  }

  function drawSelection(scale, offsetX, offsetY) {
    if (!selected) return;
    context.lineWidth = 2.5;
    context.strokeStyle = COLOURS.accent;
    if (selected.kind === 'driver') {
      const driver = model.drivers.get(selected.id);
      if (!driver || !isNumber(driver.x)) return;
      context.beginPath();
      context.arc(driver.x * scale + offsetX, driver.y * scale + offsetY, 11, 0, 2 * Math.PI);
      context.stroke();
      return;
    }
    const trip = selectedTrip();
    if (!trip) return;
    tripPoints(trip);
    if (!trip._pickup) return;
    const px = trip._pickup.x * scale + offsetX;
    const py = trip._pickup.y * scale + offsetY;
    const driver = trip.driver_id ? model.drivers.get(trip.driver_id) : null;
    if (driver && isNumber(driver.x) && (trip.state === 'accepted' || trip.state === 'arrived')) {
      context.setLineDash([5, 5]);
      context.beginPath();
      context.moveTo(driver.x * scale + offsetX, driver.y * scale + offsetY);
      context.lineTo(px, py);
      context.stroke();
      context.setLineDash([]);
    }
    if (trip._dropoff) {
      const dx = trip._dropoff.x * scale + offsetX;
      const dy = trip._dropoff.y * scale + offsetY;
      context.beginPath();
      context.moveTo(px, py);
      context.lineTo(dx, dy);
      context.stroke();
      context.fillStyle = COLOURS.accent;
      context.fillRect(dx - 5, dy - 5, 10, 10);
      label('drop-off', dx + 9, dy + 4);
    }
    context.beginPath();
    context.arc(px, py, 10, 0, 2 * Math.PI);
    context.stroke();
    label('pickup', px + 13, py + 4);
  }

  function label(text, x, y) {
    context.font = '600 12px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
    context.lineWidth = 3;
    context.strokeStyle = 'rgba(255,255,255,0.9)';
    context.strokeText(text, x, y);
    context.fillStyle = COLOURS.ink;
    context.fillText(text, x, y);
    context.lineWidth = 2.5;
    context.strokeStyle = COLOURS.accent;
  }

  const GRID_STEPS_DEG = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30];

  function drawGrid(scale, tiled) {
    const { width, height } = view;
    const pixelsPerDegree = scale / 360;
    const step = GRID_STEPS_DEG.find((s) => s * pixelsPerDegree >= 110) ?? 30;
    const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
    const topLeft = unproject(toWorld(0, 0).x, toWorld(0, 0).y);
    const bottomRight = unproject(toWorld(width, height).x, toWorld(width, height).y);
    context.lineWidth = 1;
    context.strokeStyle = tiled ? 'rgba(60,60,60,0.18)' : COLOURS['map-grid'];
    context.beginPath();
    const labels = [];
    for (let k = Math.ceil(topLeft.lng / step); k * step <= bottomRight.lng; k += 1) {
      const lng = k * step;
      const sx = Math.round(((lng + 180) / 360 - view.cx) * scale + width / 2) + 0.5;
      context.moveTo(sx, 0);
      context.lineTo(sx, height);
      labels.push([`${Math.abs(lng).toFixed(decimals)}°${lng >= 0 ? 'E' : 'W'}`, sx + 4, 14]);
    }
    for (let k = Math.ceil(bottomRight.lat / step); k * step <= topLeft.lat; k += 1) {
      const lat = k * step;
      const sy = Math.round((project(lat, 0).y - view.cy) * scale + height / 2) + 0.5;
      context.moveTo(0, sy);
      context.lineTo(width, sy);
      labels.push([`${Math.abs(lat).toFixed(decimals)}°${lat >= 0 ? 'N' : 'S'}`, 6, sy - 4]);
    }
    context.stroke();
    return labels;
  }

  function drawScaleBar() {
    const centre = unproject(view.cx, view.cy);
    const metresPerPixel = (Math.cos((centre.lat * Math.PI) / 180) * EQUATOR_M) / worldScale();
    const budget = 120 * metresPerPixel;
    const magnitude = 10 ** Math.floor(Math.log10(budget));
    const metres = [5, 2, 1].map((m) => m * magnitude).find((m) => m <= budget) ?? magnitude;
    const length = metres / metresPerPixel;
    // Bottom left, above the legend (which wraps on a narrow map): the inspector card
    // may cover the right side.
    const x = 22;
    const y = view.height - $('legend').offsetHeight - 24;
    context.fillStyle = 'rgba(255,255,255,0.85)';
    context.fillRect(x - 8, y - 18, length + 16, 26);
    context.strokeStyle = COLOURS.ink;
    context.lineWidth = 1.5;
    context.beginPath();
    context.moveTo(x, y - 5);
    context.lineTo(x, y);
    context.lineTo(x + length, y);
    context.lineTo(x + length, y - 5);
    context.stroke();
    context.fillStyle = COLOURS.ink;
    context.font = '12px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
    context.textAlign = 'center';
    context.fillText(metres >= 1000 ? `${metres / 1000} km` : `${metres} m`, x + length / 2, y - 6);
    context.textAlign = 'start';
  }

  // ---------------------------------------------------------------- tiles (optional)

  let tileTemplate = '';
  const tiles = new Map();

  function validTileTemplate(text) {
    return /^(https?:\/\/|\/)/.test(text) && ['{z}', '{x}', '{y}'].every((part) => text.includes(part));
  }

  function tileImage(z, x, y) {
    const url = tileTemplate
      .replaceAll('{z}', z)
      .replaceAll('{x}', x)
      .replaceAll('{y}', y)
      .replaceAll('{s}', 'abc'[(x + y) % 3]);
    let image = tiles.get(url);
    if (image) {
      // Map order is recency order: re-insert on use, evict from the front.
      tiles.delete(url);
      tiles.set(url, image);
      return image;
    }
    image = new Image();
    image.decoding = 'async';
    image.onload = () => invalidate('map');
    image.src = url;
    tiles.set(url, image);
    while (tiles.size > TILE_CACHE_MAX) tiles.delete(tiles.keys().next().value);
    return image;
  }

  function drawTiles(scale, offsetX, offsetY) {
    if (!tileTemplate) return false;
    const z = Math.max(0, Math.min(19, Math.round(view.zoom)));
    const count = 2 ** z;
    const size = scale / count;
    const topLeft = toWorld(0, 0);
    const bottomRight = toWorld(view.width, view.height);
    const firstX = Math.floor(topLeft.x * count);
    const lastX = Math.floor(bottomRight.x * count);
    const firstY = Math.max(0, Math.floor(topLeft.y * count));
    const lastY = Math.min(count - 1, Math.floor(bottomRight.y * count));
    for (let ty = firstY; ty <= lastY; ty += 1) {
      for (let tx = firstX; tx <= lastX; tx += 1) {
        const image = tileImage(z, ((tx % count) + count) % count, ty);
        if (image.complete && image.naturalWidth > 0) {
          const sx = (tx / count) * scale + offsetX;
          const sy = (ty / count) * scale + offsetY;
          context.drawImage(image, Math.floor(sx), Math.floor(sy), Math.ceil(size) + 1, Math.ceil(size) + 1);
        }
      }
    }
    return true;
  }

  function setTileTemplate(text) {
    tileTemplate = text;
    tiles.clear();
    const attribution = $('tile-attribution');
    if (text) {
      let source = text;
      try {
        source = new URL(text.replace(/[{}]/g, ''), location.href).host || 'this server';
      } catch {
        // Shown as typed.
      }
      attribution.textContent = `tiles: ${source}`;
      attribution.hidden = false;
    } else {
      attribution.hidden = true;
    }
    invalidate('map');
  }

  // ---------------------------------------------------------------- map input

  const pointer = { id: null, startX: 0, startY: 0, lastX: 0, lastY: 0, dragged: false };

  function canvasPoint(event) {
    const rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  canvas.addEventListener('pointerdown', (event) => {
    if (event.button !== 0) return;
    const point = canvasPoint(event);
    Object.assign(pointer, { id: event.pointerId, startX: point.x, startY: point.y, lastX: point.x, lastY: point.y, dragged: false });
    canvas.setPointerCapture(event.pointerId);
  });

  canvas.addEventListener('pointermove', (event) => {
    const point = canvasPoint(event);
    const at = toWorld(point.x, point.y);
    const where = unproject(at.x, at.y);
    $('cursor').textContent = `${where.lat.toFixed(5)}, ${where.lng.toFixed(5)}`;
    if (pointer.id !== event.pointerId) return;
    if (!pointer.dragged && Math.hypot(point.x - pointer.startX, point.y - pointer.startY) > 4) {
      pointer.dragged = true;
      canvas.classList.add('dragging');
    }
    if (pointer.dragged) {
      const scale = worldScale();
      view.cx -= (point.x - pointer.lastX) / scale;
      view.cy -= (point.y - pointer.lastY) / scale;
      clampView();
      invalidate('map');
    }
    pointer.lastX = point.x;
    pointer.lastY = point.y;
  });

  const endPointer = (event) => {
    if (pointer.id !== event.pointerId) return;
    pointer.id = null;
    canvas.classList.remove('dragging');
    if (event.type === 'pointerup' && !pointer.dragged) {
      const point = canvasPoint(event);
      const hit = hitTest(point.x, point.y);
      if (hit) select(hit.kind, hit.id);
    }
  };
  canvas.addEventListener('pointerup', endPointer);
  canvas.addEventListener('pointercancel', endPointer);
  canvas.addEventListener('pointerleave', () => {
    $('cursor').textContent = '';
  });

  canvas.addEventListener('wheel', (event) => {
    event.preventDefault();
    const point = canvasPoint(event);
    // Pixel deltas from touchpads are small and many, wheel notches ~100: both feel right.
    const delta = event.deltaMode === 1 ? event.deltaY * 33 : event.deltaY;
    zoomAt(point.x, point.y, view.zoom - Math.max(-2, Math.min(2, delta * 0.0025)));
  }, { passive: false });

  canvas.addEventListener('dblclick', (event) => {
    const point = canvasPoint(event);
    zoomAt(point.x, point.y, view.zoom + 1);
  });

  canvas.addEventListener('keydown', (event) => {
    const pan = 80 / worldScale();
    const moves = { ArrowLeft: [-pan, 0], ArrowRight: [pan, 0], ArrowUp: [0, -pan], ArrowDown: [0, pan] };
    if (moves[event.key]) {
      view.cx += moves[event.key][0];
      view.cy += moves[event.key][1];
      clampView();
      invalidate('map');
    } else if (event.key === '+' || event.key === '=') {
      zoomAt(view.width / 2, view.height / 2, view.zoom + 1);
    } else if (event.key === '-') {
      zoomAt(view.width / 2, view.height / 2, view.zoom - 1);
    } else if (event.key === 'f') {
      fitFleet();
    } else {
      return;
    }
    event.preventDefault();
  });

  $('zoom-in').addEventListener('click', () => zoomAt(view.width / 2, view.height / 2, view.zoom + 1));
  $('zoom-out').addEventListener('click', () => zoomAt(view.width / 2, view.height / 2, view.zoom - 1));
  $('zoom-fit').addEventListener('click', fitFleet);

  /// The trip marker or driver nearest the point, within a finger's width.
  function hitTest(sx, sy) {
    const scale = worldScale();
    const offsetX = view.width / 2 - view.cx * scale;
    const offsetY = view.height / 2 - view.cy * scale;
    let best = null;
    let bestSquared = 12 * 12;
    const consider = (x, y, kind, id, bias) => {
      const dx = x * scale + offsetX - sx;
      const dy = y * scale + offsetY - sy;
      const squared = dx * dx + dy * dy + bias;
      if (squared < bestSquared) {
        bestSquared = squared;
        best = { kind, id };
      }
    };
    for (const trip of model.trips.values()) {
      if (!OPEN_STATES.has(trip.state)) continue;
      tripPoints(trip);
      if (trip._pickup && trip.state === 'requested') consider(trip._pickup.x, trip._pickup.y, 'trip', trip.id, 0);
      if (trip._dropoff && ACTIVE_STATES.has(trip.state)) consider(trip._dropoff.x, trip._dropoff.y, 'trip', trip.id, 0);
    }
    // A driver sitting on a pickup wins only if clearly nearer to the click.
    for (const driver of model.drivers.values()) {
      if (isNumber(driver.x)) consider(driver.x, driver.y, 'driver', driver.id, 9);
    }
    return best;
  }

  // ---------------------------------------------------------------- formatting

  const integer = new Intl.NumberFormat('en-US');

  function clock(at) {
    const date = new Date(at);
    return Number.isNaN(date.getTime()) ? '—' : date.toLocaleTimeString('en-GB', { hour12: false });
  }

  function seconds(value) {
    if (!isNumber(value)) return '—';
    if (value < 10) return `${value.toFixed(1)} s`;
    if (value < 60) return `${Math.round(value)} s`;
    const whole = Math.round(value);
    return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  }

  function metres(value) {
    if (!isNumber(value)) return '—';
    return value < 1000 ? `${Math.round(value)} m` : `${(value / 1000).toFixed(1)} km`;
  }

  function age(at) {
    const ms = Date.now() - Date.parse(at);
    if (!isNumber(ms)) return '';
    if (ms < 60_000) return `${Math.max(0, Math.round(ms / 1000))} s`;
    if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min`;
    return `${Math.floor(ms / 3_600_000)} h ${Math.floor((ms % 3_600_000) / 60_000)} min`;
  }

  function money(value) {
    if (!value || !isNumber(value.amount)) return '—';
    try {
      return new Intl.NumberFormat('en-US', { style: 'currency', currency: value.currency }).format(value.amount);
    } catch {
      return `${integer.format(value.amount)} ${value.currency ?? ''}`;
    }
  }

  function position(lat, lng) {
    return isNumber(lat) && isNumber(lng) ? `${lat.toFixed(5)}, ${lng.toFixed(5)}` : 'unknown';
  }

  function words(name) {
    return String(name ?? '').replaceAll('_', ' ');
  }

  /// Builds an element; text always goes in as text, never as markup.
  function element(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text != null) node.textContent = options.text;
    if (options.title) node.title = options.title;
    if (options.type) node.type = options.type;
    for (const [key, value] of Object.entries(options.data ?? {})) node.dataset[key] = value;
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function tripLink(id) {
    const link = element('button', { className: 'link mono', text: id, type: 'button', title: 'Inspect this trip' });
    link.addEventListener('click', () => select('trip', id));
    return link;
  }

  function driverLink(id) {
    const link = element('button', { className: 'link mono', text: id, type: 'button', title: 'Inspect this driver' });
    link.addEventListener('click', () => select('driver', id));
    return link;
  }

  // ---------------------------------------------------------------- panels

  function renderPanels() {
    if (dirty.prune) {
      dirty.prune = false;
      pruneTerminalTrips();
    }
    renderStats();
    if (dirty.figures) {
      dirty.figures = false;
      renderFigures();
    }
    renderOfferLog();
    renderTrips();
    renderInspector(false);
  }

  function renderStats() {
    const counts = { available: 0, offered: 0, to_pickup: 0, on_trip: 0, stale: 0, offline: 0, request: 0 };
    for (const driver of model.drivers.values()) counts[category(driver)] += 1;
    let active = 0;
    for (const trip of model.trips.values()) {
      if (trip.state === 'requested') counts.request += 1;
      else if (ACTIVE_STATES.has(trip.state)) active += 1;
    }
    for (const node of document.querySelectorAll('[data-count]')) {
      node.textContent = integer.format(counts[node.dataset.count] ?? 0);
    }
    $('stat-online').textContent = integer.format(model.drivers.size);
    $('stat-available').textContent = integer.format(counts.available);
    $('stat-busy').textContent = integer.format(counts.to_pickup + counts.on_trip);
    $('stat-requests').textContent = integer.format(counts.request);
    $('stat-active').textContent = integer.format(active);
    $('stat-offered').textContent = integer.format(counts.offered);
    $('stat-stale').textContent = integer.format(counts.stale);
    $('stat-offline').textContent = integer.format(counts.offline);
  }

  function renderFigures() {
    const figures = model.figures ?? {};
    $('fig-requested').textContent = integer.format(figures.requested ?? 0);
    $('fig-completed').textContent = integer.format(figures.completed ?? 0);
    $('fig-cancelled').textContent = integer.format(figures.cancelled ?? 0);
    $('fig-expired').textContent = integer.format(figures.expired ?? 0);
    $('fig-accept').textContent = isNumber(figures.accept_p50_s)
      ? `${seconds(figures.accept_p50_s)} · ${seconds(figures.accept_p95_s)}`
      : '—';
    $('fig-rate').textContent = isNumber(figures.acceptance_rate) ? `${Math.round(figures.acceptance_rate * 100)} %` : '—';
    drawTrend(figures.trend ?? []);
  }

  function drawTrend(trend) {
    const chart = $('trend');
    const rect = chart.getBoundingClientRect();
    if (rect.width < 10) return;
    const dpr = window.devicePixelRatio || 1;
    chart.width = Math.round(rect.width * dpr);
    chart.height = Math.round(rect.height * dpr);
    const g = chart.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const width = rect.width;
    const height = rect.height;
    const left = 28;
    const bottom = height - 16;
    const top = 6;
    const minute = 60_000;
    const end = Math.floor(Date.now() / minute) * minute;
    const start = end - 29 * minute;
    const requested = new Array(30).fill(0);
    const completed = new Array(30).fill(0);
    const lost = new Array(30).fill(0);
    for (const entry of trend) {
      const index = Math.round((Date.parse(entry.at) - start) / minute);
      if (!(index >= 0 && index < 30)) continue;
      requested[index] = entry.requested ?? 0;
      completed[index] = entry.completed ?? 0;
      lost[index] = (entry.cancelled ?? 0) + (entry.expired ?? 0);
    }
    const peak = Math.max(1, ...requested, ...completed, ...lost);
    const magnitude = 10 ** Math.floor(Math.log10(peak));
    const ceiling = [1, 2, 5, 10].map((m) => m * magnitude).find((m) => m >= peak);
    const slot = (width - left) / 30;
    const yOf = (value) => bottom - (value / ceiling) * (bottom - top);
    g.clearRect(0, 0, width, height);
    g.font = '10px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
    g.fillStyle = COLOURS.muted;
    g.strokeStyle = COLOURS.line;
    g.lineWidth = 1;
    g.beginPath();
    g.moveTo(left, Math.round(top) + 0.5);
    g.lineTo(width, Math.round(top) + 0.5);
    g.moveTo(left, Math.round(bottom) + 0.5);
    g.lineTo(width, Math.round(bottom) + 0.5);
    g.stroke();
    g.textAlign = 'right';
    g.fillText(String(ceiling), left - 4, top + 8);
    g.fillText('0', left - 4, bottom + 3);
    g.textAlign = 'left';
    g.fillText('−30 min', left, height - 3);
    g.textAlign = 'right';
    g.fillText('now', width, height - 3);
    g.textAlign = 'start';
    g.fillStyle = COLOURS['trend-requested'];
    for (let i = 0; i < 30; i += 1) {
      if (requested[i]) g.fillRect(left + i * slot + 1, yOf(requested[i]), Math.max(1, slot - 2), bottom - yOf(requested[i]));
    }
    for (const [series, name] of [[lost, 'trend-lost'], [completed, 'trend-completed']]) {
      // A flat line at zero would read as data; an empty chart says "nothing yet".
      if (!series.some(Boolean)) continue;
      g.strokeStyle = COLOURS[name];
      g.lineWidth = 2;
      g.beginPath();
      for (let i = 0; i < 30; i += 1) {
        const x = left + i * slot + slot / 2;
        if (i === 0) g.moveTo(x, yOf(series[i]));
        else g.lineTo(x, yOf(series[i]));
      }
      g.stroke();
    }
  }

  function offerRow(offer) {
    // A line after `made` carries no ranking inputs; show the ones it was made with.
    const made = offer.outcome === 'made' ? offer : model.madeOffers.get(offer.offer_id) ?? offer;
    const cell = (text, className) => element('td', { text, className });
    const outcome = element('td', {}, [element('span', { className: `outcome ${offer.outcome}`, text: offer.outcome })]);
    const rank = isNumber(made.rank) ? `${made.rank} of ${made.candidates ?? '?'}` : '—';
    return element('tr', { data: { offerId: offer.offer_id ?? '', outcome: offer.outcome ?? '' } }, [
      cell(clock(offer.at)),
      outcome,
      element('td', {}, [tripLink(offer.trip_id)]),
      element('td', {}, [driverLink(offer.driver_id)]),
      cell(metres(made.pickup_distance_m), 'num'),
      cell(seconds(made.pickup_eta_s), 'num'),
      cell(rank, 'num'),
      cell(metres(made.radius_m), 'num'),
    ]);
  }

  function renderOfferLog() {
    const body = $('offers-body');
    if (dirty.offersRebuild) {
      dirty.offersRebuild = false;
      pendingOfferRows.length = 0;
      body.replaceChildren(...model.offers.map(offerRow));
    } else if (pendingOfferRows.length) {
      const fresh = pendingOfferRows.splice(0).slice(-OFFER_LOG_MAX).reverse().map(offerRow);
      body.prepend(...fresh);
      while (body.childElementCount > OFFER_LOG_MAX) body.lastElementChild.remove();
    }
    $('offers-empty').hidden = body.childElementCount > 0;
  }

  /// Trip id → its row in the open-trips list. Rows are updated in place and moved, not
  /// rebuilt, so a row keeps its identity while someone reaches for it.
  const tripRows = new Map();

  function tripRow(trip) {
    let row = tripRows.get(trip.id);
    if (!row) {
      const badge = element('span', { className: 'badge' });
      const when = element('span', { className: 'age' });
      const button = element('button', { type: 'button', data: { tripId: trip.id } }, [
        badge,
        element('span', { className: 'id', text: trip.id }),
        when,
      ]);
      button.addEventListener('click', () => select('trip', trip.id));
      row = { item: element('li', {}, [button]), button, badge, when, state: null };
      tripRows.set(trip.id, row);
    }
    if (row.state !== trip.state) {
      row.state = trip.state;
      row.badge.className = `badge ${trip.state}`;
      row.badge.textContent = words(trip.state);
      row.button.dataset.state = trip.state;
    }
    const waited = age(trip.requested_at);
    const text = trip.state === 'requested' ? `waiting ${waited}` : waited;
    if (row.when.textContent !== text) row.when.textContent = text;
    row.button.classList.toggle('selected', Boolean(selected && selected.kind === 'trip' && selected.id === trip.id));
    return row;
  }

  function renderTrips() {
    const open = [];
    for (const trip of model.trips.values()) if (OPEN_STATES.has(trip.state)) open.push(trip);
    // Waiting passengers first, longest wait on top; then trips under way.
    open.sort((a, b) => (a.state === 'requested' ? 0 : 1) - (b.state === 'requested' ? 0 : 1)
      || millis(a, 'requested_at') - millis(b, 'requested_at'));
    const requested = open.filter((trip) => trip.state === 'requested').length;
    $('trips-count').textContent = open.length
      ? `${integer.format(requested)} waiting · ${integer.format(open.length - requested)} under way`
      : '';
    const shown = open.slice(0, TRIP_LIST_MAX);
    const kept = new Set(shown.map((trip) => trip.id));
    for (const [id, row] of tripRows) {
      if (!kept.has(id)) {
        row.item.remove();
        tripRows.delete(id);
      }
    }
    const list = $('trips');
    let cursor = list.firstElementChild;
    for (const trip of shown) {
      const { item } = tripRow(trip);
      if (item === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(item, cursor);
    }
    $('trips-more').textContent = open.length > TRIP_LIST_MAX
      ? `and ${integer.format(open.length - TRIP_LIST_MAX)} more`
      : '';
    $('trips-empty').hidden = open.length > 0;
  }

  // Ages in the trip list move on their own.
  setInterval(() => {
    if (session.token) invalidate('panels');
  }, 5_000);

  // ---------------------------------------------------------------- cluster

  /// The nodes, the dispatch leader and the lease epoch, from whichever node serves this
  /// page: every node reads them from the store, so every node shows the same.
  const CLUSTER_EVERY_MS = 3_000;
  /// A node not heard from for this long is shown as down.
  const NODE_SILENT_MS = 5_000;

  async function refreshCluster() {
    if (!session.token) return;
    let cluster;
    try {
      cluster = await api('GET', '/v1/ops/cluster');
    } catch (error) {
      $('cluster-error').textContent = `Cluster view unavailable: ${describe(error)}`;
      $('cluster-error').hidden = false;
      return;
    }
    $('cluster-error').hidden = true;
    const now = Date.now();
    const up = cluster.nodes.filter((node) => now - Date.parse(node.last_seen) < NODE_SILENT_MS);
    $('cluster-summary').textContent = cluster.leader
      ? `${up.length} of ${cluster.nodes.length} up · leader ${cluster.leader} · epoch ${cluster.epoch}`
      : `${up.length} of ${cluster.nodes.length} up · no leader (epoch ${cluster.epoch})`;
    const body = $('cluster-body');
    body.replaceChildren(
      ...cluster.nodes.map((node) => {
        const silent = now - Date.parse(node.last_seen) >= NODE_SILENT_MS;
        const here = node.url.endsWith(`//${location.host}`);
        const name = element('td', {}, [
          element('span', { text: node.id, className: 'node-id' }),
          ...(node.leader ? [element('span', { text: 'leader', className: 'badge leader' })] : []),
          ...(here ? [element('span', { text: 'this page', className: 'badge muted' })] : []),
          ...(silent ? [element('span', { text: 'down', className: 'badge down' })] : []),
        ]);
        name.title = node.url;
        const row = element('tr', { className: silent ? 'silent' : '' }, [
          name,
          element('td', { text: integer.format(node.drivers_connected) }),
          element('td', { text: integer.format(node.sockets) }),
          element('td', { text: age(node.last_seen) }),
        ]);
        row.dataset.node = node.id;
        return row;
      }),
    );
  }
  setInterval(refreshCluster, CLUSTER_EVERY_MS);

  // ---------------------------------------------------------------- inspector

  function selectedTrip() {
    if (!selected || selected.kind !== 'trip') return null;
    const live = model.trips.get(selected.id);
    if (fetchedTrip && fetchedTrip.id === selected.id && (!live || fetchedTrip.seq > live.seq)) return fetchedTrip;
    return live ?? null;
  }

  function select(kind, id) {
    selected = { kind, id };
    fetchedTrip = null;
    assignChoices = '';
    $('inspector').hidden = false;
    $('cancel-confirm').hidden = true;
    $('cancel-reason').value = '';
    clearInspectorMessages();
    if (kind === 'trip') {
      loadTimeline(id);
      if (!model.trips.has(id)) fetchTrip(id);
    } else {
      timeline.tripId = null;
      timeline.events = [];
    }
    renderInspector(true);
    revealSelection();
    invalidate('map', 'panels');
  }

  /// Pans so that what was selected (from a list, say) is on screen and not under the
  /// inspector card.
  function revealSelection() {
    let point = null;
    if (selected?.kind === 'driver') point = model.drivers.get(selected.id);
    else if (selected?.kind === 'trip') point = selectedTrip() && tripPoints(selectedTrip())._pickup;
    if (!point || !isNumber(point.x)) return;
    const scale = worldScale();
    const sx = (point.x - view.cx) * scale + view.width / 2;
    const sy = (point.y - view.cy) * scale + view.height / 2;
    const card = $('inspector').getBoundingClientRect();
    const free = view.width - (card.width ? card.width + 72 : 0);
    // Room on the right for the "pickup" label beside the marker.
    if (sx >= 24 && sx <= free - 90 && sy >= 40 && sy <= view.height - 56) return;
    view.cx = point.x - (Math.max(24, free / 2) - view.width / 2) / scale;
    view.cy = point.y;
    clampView();
    invalidate('map');
  }

  function closeInspector() {
    selected = null;
    timeline.tripId = null;
    $('inspector').hidden = true;
    invalidate('map', 'panels');
  }

  $('inspector-close').addEventListener('click', closeInspector);
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && selected && !(event.target instanceof HTMLInputElement)) closeInspector();
  });

  function clearInspectorMessages() {
    $('inspector-error').hidden = true;
    $('inspector-notice').hidden = true;
  }

  function inspectorError(text) {
    const node = $('inspector-error');
    node.textContent = text;
    node.hidden = false;
    $('inspector-notice').hidden = true;
  }

  function inspectorNotice(text) {
    const node = $('inspector-notice');
    node.textContent = text;
    node.hidden = false;
    $('inspector-error').hidden = true;
  }

  async function fetchTrip(id) {
    try {
      const trip = await api('GET', `/v1/trips/${encodeURIComponent(id)}`);
      if (selected && selected.kind === 'trip' && selected.id === id) {
        fetchedTrip = trip;
        renderInspector(true);
        revealSelection();
        invalidate('map');
      }
    } catch (error) {
      if (selected && selected.id === id) inspectorError(`Could not load the trip: ${describe(error)}`);
    }
  }

  async function loadTimeline(tripId) {
    const request = ++timeline.request;
    timeline.tripId = tripId;
    timeline.loading = true;
    timeline.behind = 0;
    renderTimeline();
    try {
      const body = await api('GET', `/v1/trips/${encodeURIComponent(tripId)}/events?after=0`);
      if (request !== timeline.request) return;
      timeline.events = Array.isArray(body?.events) ? body.events : [];
      const last = timeline.events[timeline.events.length - 1];
      if (last && last.trip && storeTrip(last.trip)) invalidate('map', 'panels');
    } catch (error) {
      if (request !== timeline.request) return;
      timeline.events = [];
      inspectorError(`Could not load the timeline: ${describe(error)}`);
    } finally {
      if (request === timeline.request) {
        timeline.loading = false;
        renderTimeline();
        const last = timeline.events.length ? timeline.events[timeline.events.length - 1].seq : 0;
        if (timeline.events.length && timeline.behind > last) loadTimeline(tripId);
      }
    }
  }

  function renderTimeline() {
    const list = $('timeline');
    const showing = selected && selected.kind === 'trip' && timeline.tripId === selected.id;
    $('timeline-title').hidden = !showing;
    if (!showing) {
      list.replaceChildren();
      return;
    }
    if (timeline.loading && !timeline.events.length) {
      list.replaceChildren(element('li', { className: 'muted', text: 'loading…' }));
      return;
    }
    list.replaceChildren(...timeline.events.map((event) => {
      const details = [`seq ${event.seq}`];
      if (event.event === 'accepted' && event.trip?.driver_id) details.push(`driver ${event.trip.driver_id}`);
      if (event.event === 'completed' && event.trip?.fare) details.push(`fare ${money(event.trip.fare)}`);
      return element('li', { data: { event: event.event, seq: String(event.seq) } }, [
        element('span', { className: 'event', text: words(event.event) }),
        element('span', { className: 'when', text: clock(event.at) }),
        element('span', { className: 'detail', text: details.join(' · ') }),
      ]);
    }));
  }

  function field(list, name, value) {
    list.append(element('dt', { text: name }), element('dd', {}, [typeof value === 'string' ? document.createTextNode(value) : value]));
  }

  /// `full`: the selection changed, so rebuild everything (not only live fields).
  function renderInspector(full) {
    if (!selected) return;
    const trip = selected.kind === 'trip' ? selectedTrip() : null;
    if (trip && trip.state === 'requested') renderAssignChoices(trip);
    const driver = selected.kind === 'driver' ? model.drivers.get(selected.id) : null;
    const newest = model.offers[0];
    const key = JSON.stringify([
      selected,
      trip && [trip.seq, trip.state, trip.driver_id],
      driver && [driver.state, category(driver), driver.lat, driver.lng, driver.tripId, driver.connected],
      model.offers.length,
      newest && [newest.offer_id, newest.outcome],
    ]);
    if (!full && key === inspectorKey) return;
    inspectorKey = key;
    const fields = $('inspector-fields');
    const title = $('inspector-title');
    fields.replaceChildren();
    if (selected.kind === 'driver') {
      $('trip-actions').hidden = true;
      title.replaceChildren(`Driver `, element('span', { className: 'mono', text: selected.id }));
      if (!driver) {
        field(fields, 'state', 'not online');
      } else {
        const kind = category(driver);
        field(fields, 'state', element('span', { className: `badge ${kind}`, text: CATEGORY_LABEL[kind] }));
        field(fields, 'position', position(driver.lat, driver.lng));
        field(fields, 'trip', driver.tripId ? tripLink(driver.tripId) : '—');
        if (driver.connected != null) field(fields, 'socket', driver.connected ? 'open (at last snapshot)' : 'dropped (at last snapshot)');
      }
      renderRelatedOffers((offer) => offer.driver_id === selected.id, (offer) => [offer.trip_id, 'trip']);
      if (full) renderTimeline();
      return;
    }
    title.replaceChildren(`Trip `, element('span', { className: 'mono', text: selected.id }));
    if (!trip) {
      field(fields, 'state', 'loading…');
      $('trip-actions').hidden = true;
      renderRelatedOffers(() => false);
      return;
    }
    field(fields, 'state', element('span', { className: `badge ${trip.state}`, text: words(trip.state) }));
    field(fields, 'passenger', element('span', { className: 'mono', text: trip.passenger_id }));
    field(fields, 'driver', trip.driver_id ? driverLink(trip.driver_id) : '—');
    field(fields, 'requested', clock(trip.requested_at));
    field(fields, 'pickup', position(trip.pickup?.lat, trip.pickup?.lng));
    field(fields, 'drop-off', position(trip.dropoff?.lat, trip.dropoff?.lng));
    field(fields, 'fare', trip.fare ? money(trip.fare) : `${money(trip.fare_estimate)} estimated`);
    field(fields, 'updated', clock(trip.updated_at));
    const cancellable = CANCELLABLE_STATES.has(trip.state);
    $('trip-actions').hidden = !cancellable;
    $('cancel-box').hidden = !cancellable;
    $('assign-box').hidden = trip.state !== 'requested';
    if (!cancellable) $('cancel-confirm').hidden = true;
    renderRelatedOffers((offer) => offer.trip_id === trip.id, (offer) => [offer.driver_id, 'driver']);
    if (full) renderTimeline();
  }

  function renderRelatedOffers(matches, other) {
    const list = $('related-offers');
    const lines = model.offers.filter(matches).slice(0, 20);
    $('related-offers-title').hidden = lines.length === 0;
    list.replaceChildren(...lines.map((offer) => {
      const [id, kind] = other(offer);
      const link = kind === 'trip' ? tripLink(id) : driverLink(id);
      return element('li', {}, [`${clock(offer.at)} ${offer.outcome} · `, link]);
    }));
  }

  function renderAssignChoices(trip) {
    const choices = [];
    if (trip.pickup && isNumber(trip.pickup.lat)) {
      for (const driver of model.drivers.values()) {
        if (driver.state !== 'available' || !isNumber(driver.lat)) continue;
        const distance = distanceM(trip.pickup.lat, trip.pickup.lng, driver.lat, driver.lng);
        // Keep only the nearest few: an insertion into a short sorted list.
        if (choices.length < ASSIGN_CHOICES || distance < choices[choices.length - 1].distance) {
          choices.push({ id: driver.id, distance });
          choices.sort((a, b) => a.distance - b.distance);
          if (choices.length > ASSIGN_CHOICES) choices.pop();
        }
      }
    }
    // Distances change as drivers move; rebuild the list only when who is in it changes,
    // so an operator's pick is not reset under the pointer.
    const key = choices.map((choice) => choice.id).join(',');
    const picker = $('assign-driver');
    if (key === assignChoices) return;
    assignChoices = key;
    const previous = picker.value;
    if (!choices.length) {
      picker.replaceChildren(element('option', { text: 'no available driver online' }));
      picker.disabled = true;
      $('assign').disabled = true;
      return;
    }
    picker.disabled = false;
    $('assign').disabled = false;
    picker.replaceChildren(...choices.map((choice) => {
      const option = element('option', { text: `${metres(choice.distance)} · ${choice.id}` });
      option.value = choice.id;
      return option;
    }));
    if (choices.some((choice) => choice.id === previous)) picker.value = previous;
  }

  $('cancel-trip').addEventListener('click', () => {
    $('cancel-confirm').hidden = false;
    $('cancel-reason').focus();
  });
  $('cancel-keep').addEventListener('click', () => {
    $('cancel-confirm').hidden = true;
  });
  $('cancel-confirm-button').addEventListener('click', async () => {
    const trip = selectedTrip();
    if (!trip) return;
    const reason = $('cancel-reason').value.trim();
    await act($('cancel-confirm-button'), async () => {
      const updated = await api('POST', `/v1/trips/${encodeURIComponent(trip.id)}/cancel`, reason ? { reason } : {});
      storeTrip(updated);
      $('cancel-confirm').hidden = true;
      inspectorNotice(`Trip cancelled at ${clock(updated?.updated_at)}.`);
    }, 'Could not cancel the trip');
  });
  $('assign').addEventListener('click', async () => {
    const trip = selectedTrip();
    const driverId = $('assign-driver').value;
    if (!trip || !driverId) return;
    await act($('assign'), async () => {
      const updated = await api('POST', `/v1/trips/${encodeURIComponent(trip.id)}/assign`, { driver_id: driverId });
      storeTrip(updated);
      inspectorNotice(`Assigned to ${driverId}.`);
    }, 'Could not assign the trip');
  });

  async function act(button, work, failure) {
    button.disabled = true;
    clearInspectorMessages();
    try {
      await work();
      if (selected && selected.kind === 'trip') loadTimeline(selected.id);
    } catch (error) {
      inspectorError(`${failure}: ${describe(error)}`);
    } finally {
      button.disabled = false;
      renderInspector(false);
      invalidate('map', 'panels');
    }
  }

  // ---------------------------------------------------------------- REST

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function describe(error) {
    if (error instanceof ApiFailure) {
      return error.code ? `${error.message} (${error.code}, HTTP ${error.status})` : `${error.message} (HTTP ${error.status})`;
    }
    return 'the server could not be reached';
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${session.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const failure = new ApiFailure(response.status, data?.error?.code ?? null, data?.error?.message ?? response.statusText ?? 'request failed');
      if (response.status === 401) signOut('The operator token is no longer accepted. Sign in again.');
      throw failure;
    }
    return data;
  }

  // ---------------------------------------------------------------- connection

  const connection = {
    socket: null,
    // Bumped by every connect and disconnect: a ticket fetched for an older attempt is
    // dropped.
    generation: 0,
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    silenceTimer: null,
    lostAt: null,
    bannerTimer: null,
  };

  function setConnection(state, text) {
    const node = $('connection');
    node.dataset.state = state;
    node.textContent = text;
    $('map-wrap').classList.toggle('stale-data', state === 'disconnected');
  }

  function showBanner(text, kind = 'warn', hideAfterMs = 0) {
    const banner = $('banner');
    banner.textContent = text;
    banner.dataset.kind = kind;
    banner.hidden = false;
    clearTimeout(connection.bannerTimer);
    if (hideAfterMs) connection.bannerTimer = setTimeout(() => { banner.hidden = true; }, hideAfterMs);
  }

  async function connect() {
    clearTimeout(connection.retryTimer);
    clearInterval(connection.countdown);
    const attempt = ++connection.generation;
    setConnection(connection.lostAt ? 'disconnected' : 'connecting', connection.lostAt ? 'disconnected — reconnecting…' : 'connecting…');
    // The socket opens with a single-use ticket, never the token: URLs end up in logs.
    let ticket;
    try {
      ticket = (await api('POST', '/v1/ops/tickets')).ticket;
    } catch {
      // A 401 has signed out already; anything else is retried like a lost socket.
      if (attempt === connection.generation) lost(null, true);
      return;
    }
    if (attempt !== connection.generation || !session.token) return; // superseded meanwhile
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/v1/ops/ws?ticket=${encodeURIComponent(ticket)}`;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      lost(null, false);
      return;
    }
    connection.socket = socket;
    let heard = false;
    armSilence(socket);
    socket.onmessage = (event) => {
      if (connection.socket !== socket) return;
      armSilence(socket);
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!heard && message.type === 'snapshot') {
        heard = true;
        connection.attempt = 0;
        if (connection.lostAt) {
          const back = clock(Date.now());
          setConnection('live', `live · back since ${back}`);
          showBanner(`Reconnected at ${back}: the map shows fresh state.`, 'ok', 10_000);
          connection.lostAt = null;
        } else {
          setConnection('live', 'live');
          $('banner').hidden = true;
        }
      }
      try {
        receive(message);
      } catch (error) {
        // One malformed message must not stop the stream; the next snapshot repairs state.
        console.error('hail console: could not apply a message', message?.type, error);
      }
    };
    socket.onclose = () => lost(socket, heard);
    socket.onerror = () => {}; // a close event follows
  }

  function armSilence(socket) {
    clearTimeout(connection.silenceTimer);
    connection.silenceTimer = setTimeout(() => {
      if (connection.socket !== socket) return;
      // A dead connection may never finish a closing handshake: stop listening first.
      socket.onclose = null;
      socket.onmessage = null;
      socket.close();
      lost(socket, true);
    }, SILENCE_LIMIT_MS);
  }

  function lost(socket, heard) {
    if (socket && connection.socket !== socket) return;
    connection.socket = null;
    clearTimeout(connection.silenceTimer);
    if (!session.token) return;
    if (!connection.lostAt) connection.lostAt = Date.now();
    const base = BACKOFF_MS[Math.min(connection.attempt, BACKOFF_MS.length - 1)];
    connection.attempt += 1;
    // Jitter spreads a room full of consoles over the moment a node comes back.
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    connection.retryAt = Date.now() + delay;
    connection.retryTimer = setTimeout(connect, delay);
    setConnection('disconnected', 'disconnected — reconnecting');
    const since = clock(connection.lostAt);
    const tell = () => {
      const left = Math.max(0, Math.ceil((connection.retryAt - Date.now()) / 1000));
      showBanner(`Disconnected since ${since} — reconnecting in ${left} s (attempt ${connection.attempt}). The map shows the last known state.`);
    };
    tell();
    clearInterval(connection.countdown);
    connection.countdown = setInterval(tell, 1_000);
    // A socket refused before saying anything may mean the token was revoked: browsers
    // hide the HTTP status of a refused upgrade, so ask over REST (401 signs out).
    if (!heard) api('GET', '/v1/trips/token-check').catch(() => {});
  }

  function disconnect() {
    connection.generation += 1;
    const socket = connection.socket;
    connection.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.close();
    }
    clearTimeout(connection.retryTimer);
    clearTimeout(connection.silenceTimer);
    clearInterval(connection.countdown);
    connection.lostAt = null;
    connection.attempt = 0;
  }

  // ---------------------------------------------------------------- sign-in

  function signInError(text) {
    const node = $('signin-error');
    node.textContent = text;
    node.hidden = !text;
  }

  async function signIn(token, remembered) {
    const button = $('signin-submit');
    button.disabled = true;
    signInError('');
    let response;
    try {
      response = await fetch('/v1/ops/snapshot', { headers: { Authorization: `Bearer ${token}` } });
    } catch {
      button.disabled = false;
      signInError(`Cannot reach the hail server at ${location.host}. Is it running?`);
      return;
    }
    button.disabled = false;
    if (!response.ok) {
      if (remembered) sessionStorage.removeItem(TOKEN_KEY);
      let message = '';
      try {
        message = (await response.json())?.error?.message ?? '';
      } catch {
        // Not our error format: the status says enough.
      }
      if (response.status === 401) {
        signInError('That token was not accepted (401). Use the operator token printed by `hail serve` or set in HAIL_OPERATOR_TOKEN.');
      } else if (response.status === 403) {
        signInError('That is a passenger or driver token; the console needs the operator token (403).');
      } else {
        signInError(`The server answered ${response.status}${message ? `: ${message}` : ''}. Try again shortly.`);
      }
      return;
    }
    let snapshot;
    try {
      snapshot = await response.json();
    } catch {
      signInError('The server sent an unreadable snapshot. Try again.');
      return;
    }
    session.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('signin-token').value = '';
    $('signin').hidden = true;
    $('app').hidden = false;
    resizeMap();
    view.placed = false;
    applySnapshot(snapshot);
    connect();
    refreshCluster();
  }

  function signOut(message) {
    disconnect();
    session.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    selected = null;
    model.drivers = new Map();
    model.trips = new Map();
    model.offers = [];
    model.madeOffers.clear();
    model.figures = null;
    $('inspector').hidden = true;
    $('banner').hidden = true;
    $('app').hidden = true;
    $('signin').hidden = false;
    signInError(message ?? '');
    $('signin-token').focus();
  }

  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('signin-token').value.trim();
    if (token) signIn(token, false);
  });
  $('signout').addEventListener('click', () => signOut(''));

  // ---------------------------------------------------------------- settings

  $('settings-toggle').addEventListener('click', () => {
    $('settings').hidden = !$('settings').hidden;
    $('tile-template').value = tileTemplate;
    $('settings-message').textContent = '';
    resizeMap();
  });
  $('settings-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('tile-template').value.trim();
    if (text && !validTileTemplate(text)) {
      $('settings-message').textContent = 'A tile URL starts with http://, https:// or / and contains {z}, {x} and {y}.';
      return;
    }
    if (text) localStorage.setItem(TILE_KEY, text);
    else localStorage.removeItem(TILE_KEY);
    setTileTemplate(text);
    $('settings-message').textContent = text ? 'Tile layer on.' : 'Tile layer off.';
  });
  $('tile-clear').addEventListener('click', () => {
    localStorage.removeItem(TILE_KEY);
    $('tile-template').value = '';
    setTileTemplate('');
    $('settings-message').textContent = 'Tile layer off.';
  });

  // ---------------------------------------------------------------- start

  new ResizeObserver(() => {
    if (!$('app').hidden) {
      resizeMap();
      dirty.figures = true;
      invalidate('panels');
    }
  }).observe($('map-wrap'));

  const storedTiles = localStorage.getItem(TILE_KEY) ?? '';
  if (validTileTemplate(storedTiles)) setTileTemplate(storedTiles);

  /// For people and tests looking at the page from outside: read-only views of what is
  /// shown, and `receive` to feed a message as if it came from the socket (for trying
  /// the map with a synthetic fleet).
  window.hailConsole = Object.freeze({
    driverCount: () => model.drivers.size,
    driversDrawn: () => lastFrame.drivers,
    requestsDrawn: () => lastFrame.requests,
    frameMs: () => lastFrame.ms,
    tripState: (id) => model.trips.get(id)?.state ?? null,
    connection: () => $('connection').dataset.state,
    receive,
    view: () => ({ lat: unproject(view.cx, view.cy).lat, lng: unproject(view.cx, view.cy).lng, zoom: view.zoom }),
  });

  const remembered = sessionStorage.getItem(TOKEN_KEY);
  if (remembered) signIn(remembered, true);
  else $('signin-token').focus();
})();
