// hail operator console. Plain JS, no framework, no build step, nothing fetched from
// anywhere but this server (map tiles only when an operator sets a tile URL).
//
// Data flow: sign in with a REST call (so a wrong token gets a clear message), apply that
// snapshot, then open /v1/ops/ws. Every socket message updates `model`; rendering is
// decoupled from arrival: messages only mark what is dirty, the map is drawn at most once
// per animation frame and the side panels at most PANELS_EVERY_MS, so a busy fleet costs
// the same number of frames as a quiet one.
//
// Sections, in order: model, messages, scheduling; the map (drawing, optional tiles,
// legend filters, edge markers for requests off screen, the offline basemap from
// /basemap.json, supply and demand per district, pointer input); formatting; panels
// (figures, the dispatch log with one row per offer, open trips); alerts (trips in
// trouble, by thresholds kept in this browser); cluster; the inspector card and its
// actions (assign from ranked candidates, cancel, resolve); links (#trip=, #driver=);
// search; REST; connection; sign-in; settings; start.
//
// Endpoints newer than this page's oldest server (search, candidates) fall back to what
// the page holds when the server answers "route not found".
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
  /// Drivers offered in the manual-assign list when the server cannot rank them.
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
  const SETTINGS_KEY = 'hail.alert_settings';
  /// Alert thresholds, changeable under Settings and kept in this browser.
  const DEFAULT_SETTINGS = Object.freeze({ waitS: 60, expiryS: 30, etaMin: 10, confirmKm: 5 });
  /// hail's own defaults, used until a snapshot brings the server's dispatch policy.
  const DEFAULT_POLICY = Object.freeze({
    offer_timeout_ms: 15_000,
    dispatch_deadline_ms: 120_000,
    search_radii_m: [3_000, 6_000, 10_000],
    stale_after_ms: 30_000,
    driver_lost_after_ms: 90_000,
    detour_factor: 1.3,
    urban_speed_mps: 7,
  });
  /// Alerts are recomputed at most this often: waits and countdowns move by the second.
  const ALERTS_EVERY_MS = 1_000;
  /// Rows in the alert list; the count in the title and the panel is always exact.
  const ALERTS_SHOWN_MAX = 60;
  /// District names are drawn from this zoom in; below it they would overlap.
  const DISTRICT_LABEL_ZOOM = 11;
  const TITLE = 'hail console';

  const OPEN_STATES = new Set(['requested', 'accepted', 'arrived', 'in_progress']);
  const ACTIVE_STATES = new Set(['accepted', 'arrived', 'in_progress']);
  /// An operator may cancel in any active state (a reason is required after pickup).
  const CANCELLABLE_STATES = OPEN_STATES;
  /// Drawing order: later categories are drawn on top.
  const CATEGORIES = ['offline', 'stale', 'available', 'to_pickup', 'on_trip', 'offered'];
  const CATEGORY_LABEL = {
    available: 'available',
    offered: 'holding an offer',
    to_pickup: 'heading to pickup',
    on_trip: 'on trip',
    stale: 'stale (no recent ping)',
    offline: 'not taking rides',
  };
  /// What an outcome is called on screen: an offer that "expired" reads like a trip that
  /// expired, so it is the offer that lapsed.
  const OUTCOME_LABEL = {
    made: 'pending',
    accepted: 'accepted',
    declined: 'declined',
    expired: 'offer lapsed',
    withdrawn: 'withdrawn',
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
    /** One entry per offer, newest first, at most OFFER_LOG_MAX: the `made` line's ranking
        inputs with the outcome line merged in (`outcome`, `decided_at`). */
    offers: [],
    /** offer id → its entry in `offers`, so an outcome line finds the row it closes */
    offersById: new Map(),
    figures: null,
    policy: DEFAULT_POLICY,
    /** trip id → {at, reason}: in_progress trips whose driver is lost (snapshot `flags`,
        then `driver_lost` events), cleared when the trip leaves in_progress */
    flags: new Map(),
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
  /// The selected driver's card from `GET /v1/ops/drivers/{id}` (name, plate, last ping),
  /// or `{error}`; refreshed while the card is open.
  let driverCard = null;
  /// The assign box's candidates for `tripId`: from the server, or ranked here.
  const candidates = { tripId: null, list: [], source: '', loading: false, pending: null };

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
      lastPingAt: entry.last_ping_at ?? null,
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

  /// Merges a log line into its offer's entry: `made` opens an entry, the outcome line
  /// closes it. Returns the entry and whether it is new (so the log adds a row) or
  /// changed (so the log redraws that row).
  function rememberOffer(line) {
    let entry = model.offersById.get(line.offer_id);
    if (entry) {
      if (line.outcome !== 'made') {
        entry.outcome = line.outcome;
        entry.decided_at = line.at;
      }
      return { entry, fresh: false };
    }
    // An outcome whose `made` line is older than the log kept: a row of its own.
    entry = { ...line, decided_at: line.outcome === 'made' ? null : line.at };
    model.offersById.set(entry.offer_id, entry);
    model.offers.unshift(entry);
    while (model.offers.length > OFFER_LOG_MAX) model.offersById.delete(model.offers.pop().offer_id);
    return { entry, fresh: true };
  }

  // ---------------------------------------------------------------- messages

  const dirty = { map: false, panels: false, offersRebuild: false, figures: false, prune: false, alerts: true };
  const pendingOfferRows = [];
  const changedOfferRows = [];

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
      case 'offer': {
        const { entry, fresh } = rememberOffer(message);
        (fresh ? pendingOfferRows : changedOfferRows).push(entry);
        invalidate('panels');
        break;
      }
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
    model.offersById.clear();
    pendingOfferRows.length = 0;
    changedOfferRows.length = 0;
    // The snapshot lists offers oldest first.
    for (const offer of snapshot.offers ?? []) rememberOffer(offer);
    model.figures = snapshot.figures ?? null;
    model.policy = { ...DEFAULT_POLICY, ...(snapshot.policy ?? {}) };
    model.flags = new Map();
    for (const flag of snapshot.flags ?? []) {
      if (flag && flag.trip_id) model.flags.set(flag.trip_id, { at: flag.at, reason: flag.reason ?? null });
    }
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
    if (event.event === 'driver_lost' && event.trip.state === 'in_progress') {
      model.flags.set(event.trip_id, { at: event.at, reason: event.reason ?? null });
    } else if (event.trip.state !== 'in_progress') {
      model.flags.delete(event.trip_id);
    }
    dirty.alerts = true;
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

  /// The value at fraction `q` of a sorted array.
  function quantile(sorted, q) {
    return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
  }

  /// Frames the bulk of the fleet and the open requests: the 2nd to 98th percentile of
  /// their positions, so one far outlier does not shrink the city to a dot. Seoul when
  /// there is nothing to show.
  function fitFleet() {
    const xs = [];
    const ys = [];
    for (const driver of model.drivers.values()) {
      if (isNumber(driver.x)) {
        xs.push(driver.x);
        ys.push(driver.y);
      }
    }
    for (const trip of model.trips.values()) {
      if (OPEN_STATES.has(trip.state) && tripPoints(trip)._pickup) {
        xs.push(trip._pickup.x);
        ys.push(trip._pickup.y);
      }
    }
    view.placed = true;
    if (!xs.length) {
      centreOn(SEOUL.lat, SEOUL.lng, 12);
      invalidate('map');
      return;
    }
    xs.sort((a, b) => a - b);
    ys.sort((a, b) => a - b);
    // Below 20 points each one counts; percentiles would drop real drivers.
    const low = xs.length >= 20 ? 0.02 : 0;
    const [minX, maxX] = [quantile(xs, low), quantile(xs, 1 - low)];
    const [minY, maxY] = [quantile(ys, low), quantile(ys, 1 - low)];
    view.cx = (minX + maxX) / 2;
    view.cy = (minY + maxY) / 2;
    const width = Math.max(view.width, 320) * 0.8;
    const height = Math.max(view.height, 240) * 0.8;
    const spanX = Math.max(maxX - minX, 1e-9);
    const spanY = Math.max(maxY - minY, 1e-9);
    const zoom = Math.log2(Math.min(width / (spanX * TILE_PX), height / (spanY * TILE_PX)));
    view.zoom = Math.min(15, Math.max(ZOOM_MIN, zoom));
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
    drawBasemap(scale, offsetX, offsetY, tiled);
    if (zones.on) drawZones(scale, offsetX, offsetY);
    const gridLabels = drawGrid(scale, tiled || basemap.features.length > 0);
    drawAlertHalos(scale, offsetX, offsetY);
    drawTrips(scale, offsetX, offsetY);
    drawDrivers(scale, offsetX, offsetY);
    drawSelection(scale, offsetX, offsetY);
    drawDistrictLabels(scale, offsetX, offsetY);
    drawEdgeMarkers();
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
      const kind = category(driver);
      if (hiddenKinds.has(kind)) continue;
      const points = scratch[kind];
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
    edgeMarkers.clear();
    for (const trip of model.trips.values()) {
      if (!OPEN_STATES.has(trip.state) || hiddenKinds.has(tripKind(trip))) continue;
      tripPoints(trip);
      if (!trip._pickup) continue;
      const px = trip._pickup.x * scale + offsetX;
      const py = trip._pickup.y * scale + offsetY;
      if (trip.state === 'requested') {
        if (inView(px, py)) requests.push(px, py);
        else markOffScreen(px, py);
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
  /// Tiles loaded and failed since the template was set: a layer whose every tile fails
  /// says "failing", not "on".
  const tileCounts = { loaded: 0, failed: 0 };

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
    image.onload = () => {
      tileCounts.loaded += 1;
      renderTileStatus();
      invalidate('map');
    };
    image.onerror = () => {
      tileCounts.failed += 1;
      renderTileStatus();
    };
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

  function renderTileStatus() {
    const node = $('tile-status');
    let state = 'off';
    let text = 'off';
    if (tileTemplate) {
      const { loaded, failed } = tileCounts;
      if (loaded === 0 && failed > 0) {
        state = 'failing';
        text = `failing: all ${integer.format(failed)} tiles failed to load — check the URL or the network`;
      } else if (loaded === 0) {
        state = 'loading';
        text = 'loading…';
      } else {
        state = 'on';
        text = failed ? `on · ${integer.format(failed)} of ${integer.format(loaded + failed)} tiles failed` : 'on';
      }
    }
    if (node.textContent !== text) node.textContent = text;
    node.dataset.state = state;
    const attribution = $('tile-attribution');
    attribution.classList.toggle('failing', state === 'failing');
    if (tileTemplate) attribution.textContent = `tiles: ${tileSource}${state === 'failing' ? ' (failing)' : ''}`;
  }

  let tileSource = '';

  function setTileTemplate(text) {
    tileTemplate = text;
    tiles.clear();
    tileCounts.loaded = 0;
    tileCounts.failed = 0;
    const attribution = $('tile-attribution');
    if (text) {
      let source = text;
      try {
        source = new URL(text.replace(/[{}]/g, ''), location.href).host || 'this server';
      } catch {
        // Shown as typed.
      }
      tileSource = source;
      attribution.hidden = false;
    } else {
      attribution.hidden = true;
    }
    renderTileStatus();
    invalidate('map');
  }


  // ---------------------------------------------------------------- legend filters

  /// Driver categories and trip kinds ('request', 'to_pickup', 'on_trip') hidden from the
  /// map and the lists by clicking their legend entry.
  const hiddenKinds = new Set();

  /// Which legend entry a trip falls under.
  function tripKind(trip) {
    if (trip.state === 'requested') return 'request';
    return trip.state === 'in_progress' ? 'on_trip' : 'to_pickup';
  }

  function renderLegend() {
    for (const button of document.querySelectorAll('#legend button[data-filter]')) {
      const shown = !hiddenKinds.has(button.dataset.filter);
      button.setAttribute('aria-pressed', String(shown));
      button.title = shown ? 'Shown: click to hide these from the map and the lists' : 'Hidden: click to show';
    }
  }

  $('legend').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-filter]');
    if (!button) return;
    const kind = button.dataset.filter;
    if (hiddenKinds.has(kind)) hiddenKinds.delete(kind);
    else hiddenKinds.add(kind);
    renderLegend();
    invalidate('map', 'panels');
  });

  // ---------------------------------------------------------------- edge markers

  /// Open requests off screen, binned along the border: key → {x, y, count}, where x, y
  /// is where the border meets the line from the centre towards them.
  const edgeMarkers = new Map();
  const EDGE_INSET_PX = 16;
  const EDGE_BIN_PX = 56;

  function markOffScreen(px, py) {
    const { width, height } = view;
    const cx = width / 2;
    const cy = height / 2;
    const dx = px - cx;
    const dy = py - cy;
    if (!isNumber(dx) || !isNumber(dy)) return;
    // Scale the direction until it meets the inset rectangle.
    const limitX = cx - EDGE_INSET_PX;
    const limitY = cy - EDGE_INSET_PX;
    const t = Math.min(dx ? limitX / Math.abs(dx) : Infinity, dy ? limitY / Math.abs(dy) : Infinity);
    const x = cx + dx * t;
    const y = cy + dy * t;
    const key = `${Math.round(x / EDGE_BIN_PX)}:${Math.round(y / EDGE_BIN_PX)}`;
    const bin = edgeMarkers.get(key);
    if (bin) {
      bin.count += 1;
    } else {
      edgeMarkers.set(key, { x, y, angle: Math.atan2(dy, dx), count: 1 });
    }
  }

  /// An arrow at the border for each bin, pointing at the requests, with their count.
  function drawEdgeMarkers() {
    for (const { x, y, angle, count } of edgeMarkers.values()) {
      context.save();
      context.translate(x, y);
      context.rotate(angle);
      context.beginPath();
      context.moveTo(10, 0);
      context.lineTo(-6, -8);
      context.lineTo(-6, 8);
      context.closePath();
      context.fillStyle = COLOURS.request;
      context.strokeStyle = '#ffffff';
      context.lineWidth = 2;
      context.stroke();
      context.fill();
      context.restore();
      const text = count > 1 ? String(count) : '1';
      context.font = '600 11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
      const lx = x - Math.cos(angle) * 18;
      const ly = y - Math.sin(angle) * 18 + 4;
      context.textAlign = 'center';
      context.lineWidth = 3;
      context.strokeStyle = 'rgba(255,255,255,0.95)';
      context.strokeText(text, lx, ly);
      context.fillStyle = COLOURS.request;
      context.fillText(text, lx, ly);
      context.textAlign = 'start';
    }
    canvas.dataset.edgeMarkers = String(edgeMarkers.size);
  }

  /// An orange ring under each trip in trouble, so the map shows what the alert list says.
  function drawAlertHalos(scale, offsetX, offsetY) {
    if (!alerts.list.length) return;
    context.lineWidth = 3;
    context.strokeStyle = 'rgba(224,123,18,0.85)';
    context.fillStyle = 'rgba(224,123,18,0.16)';
    context.beginPath();
    for (const alert of alerts.list) {
      const trip = model.trips.get(alert.tripId);
      if (!trip || hiddenKinds.has(tripKind(trip))) continue;
      const point = alertPoint(trip);
      if (!point) continue;
      const sx = point.x * scale + offsetX;
      const sy = point.y * scale + offsetY;
      if (sx < -20 || sy < -20 || sx > view.width + 20 || sy > view.height + 20) continue;
      context.moveTo(sx + 13, sy);
      context.arc(sx, sy, 13, 0, 2 * Math.PI);
    }
    context.fill();
    context.stroke();
  }

  /// Where a trip in trouble is: its driver once it has one (that is where the trouble
  /// is), else its pickup.
  function alertPoint(trip) {
    const driver = trip.driver_id ? model.drivers.get(trip.driver_id) : null;
    if (driver && isNumber(driver.x) && trip.state !== 'requested') return driver;
    return tripPoints(trip)._pickup;
  }

  // ---------------------------------------------------------------- basemap

  /// The offline city from `/basemap.json` (GeoJSON, served by hail): features projected
  /// once to world coordinates, each with a bounding box so a frame skips what is off
  /// screen. Drawn in KIND_ORDER; kinds not listed are drawn as thin lines after roads.
  const basemap = { state: 'idle', features: [], districts: [], attribution: '' };
  const KIND_ORDER = ['land', 'district', 'park', 'water', 'coast', 'river', 'road'];
  const KIND_STYLE = {
    land: { fill: '#f8f7f3', stroke: 'rgba(150,140,125,0.55)', width: 1.2 },
    district: { fill: 'rgba(255,255,255,0.35)', stroke: 'rgba(120,112,98,0.7)', width: 1.2, dash: [5, 3] },
    park: { fill: 'rgba(168,201,150,0.45)' },
    water: { fill: '#b9d3e6', stroke: '#9fc1da', width: 1 },
    coast: { fill: '#c6dbea', stroke: '#8fb3cf', width: 1.5 },
    river: { fill: '#b9d3e6', stroke: '#a9c9e2', width: 3 },
    road: { stroke: 'rgba(255,255,255,0.95)', casing: 'rgba(190,182,168,0.9)', width: 2 },
    other: { stroke: 'rgba(140,132,118,0.6)', width: 1 },
  };

  function projectRing(ring) {
    const points = new Float64Array(ring.length * 2);
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    let n = 0;
    for (const coordinate of ring) {
      if (!Array.isArray(coordinate) || !isNumber(coordinate[0]) || !isNumber(coordinate[1])) continue;
      const { x, y } = project(coordinate[1], coordinate[0]);
      points[n++] = x;
      points[n++] = y;
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    }
    return { points: points.subarray(0, n), minX, minY, maxX, maxY };
  }

  /// One GeoJSON feature as {kind, name, area (rings) | line (rings), box}.
  function basemapFeature(feature) {
    const geometry = feature?.geometry;
    if (!geometry || !Array.isArray(geometry.coordinates)) return null;
    const kind = String(feature.properties?.kind ?? 'other');
    const name = feature.properties?.name ?? feature.properties?.name_en ?? null;
    const label = feature.properties?.label;
    let rings;
    let area;
    switch (geometry.type) {
      case 'Polygon': rings = geometry.coordinates; area = true; break;
      case 'MultiPolygon': rings = geometry.coordinates.flat(); area = true; break;
      case 'LineString': rings = [geometry.coordinates]; area = false; break;
      case 'MultiLineString': rings = geometry.coordinates; area = false; break;
      default: return null;
    }
    const projected = rings.filter(Array.isArray).map(projectRing).filter((ring) => ring.points.length >= 4);
    if (!projected.length) return null;
    const box = {
      minX: Math.min(...projected.map((r) => r.minX)),
      minY: Math.min(...projected.map((r) => r.minY)),
      maxX: Math.max(...projected.map((r) => r.maxX)),
      maxY: Math.max(...projected.map((r) => r.maxY)),
    };
    // Polygons as GeoJSON lists them: outer ring, then holes. Even-odd filling draws both.
    const outer = area ? (geometry.type === 'Polygon' ? [geometry.coordinates[0]] : geometry.coordinates.map((p) => p[0])) : [];
    // The file's own label point (inside the district) beats a computed centroid.
    const labelAt = Array.isArray(label) && isNumber(label[0]) && isNumber(label[1]) ? project(label[1], label[0]) : null;
    return { kind, name, area, rings: projected, box, outer: outer.filter(Array.isArray).map(projectRing), labelAt, stats: null };
  }

  async function loadBasemap() {
    if (basemap.state !== 'idle') return;
    basemap.state = 'loading';
    let collection;
    try {
      const response = await fetch('/basemap.json');
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      collection = await response.json();
    } catch (error) {
      // The grid and scale bar still say where things are; the console works without it.
      basemap.state = 'missing';
      canvas.dataset.basemap = 'missing';
      console.info('hail console: no offline basemap', String(error));
      return;
    }
    const features = (Array.isArray(collection?.features) ? collection.features : []).map(basemapFeature).filter(Boolean);
    const rank = (kind) => {
      const index = KIND_ORDER.indexOf(kind);
      return index === -1 ? KIND_ORDER.length : index;
    };
    features.sort((a, b) => rank(a.kind) - rank(b.kind));
    basemap.features = features;
    basemap.districts = features.filter((f) => f.kind === 'district' && f.area);
    for (const district of basemap.districts) district.labelAt = district.labelAt ?? labelPoint(district);
    basemap.attribution = typeof collection.attribution === 'string' ? collection.attribution : '';
    const credit = $('basemap-attribution');
    credit.textContent = basemap.attribution ? `Map: ${basemap.attribution}` : '';
    credit.title = basemap.attribution;
    credit.hidden = !basemap.attribution;
    basemap.state = 'ready';
    canvas.dataset.basemap = 'ready';
    canvas.dataset.basemapKinds = [...new Set(features.map((f) => f.kind))].join(',');
    districtCache.clear();
    dirty.zones = true;
    invalidate('map', 'panels');
  }

  /// The centroid of a district's largest outer ring (area-weighted), which for the
  /// shapes of city districts falls inside them.
  function labelPoint(feature) {
    let best = null;
    let bestArea = 0;
    for (const ring of feature.outer) {
      const p = ring.points;
      let area = 0;
      let x = 0;
      let y = 0;
      for (let i = 0; i < p.length; i += 2) {
        const j = (i + 2) % p.length;
        const cross = p[i] * p[j + 1] - p[j] * p[i + 1];
        area += cross;
        x += (p[i] + p[j]) * cross;
        y += (p[i + 1] + p[j + 1]) * cross;
      }
      if (Math.abs(area) > bestArea) {
        bestArea = Math.abs(area);
        best = { x: x / (3 * area), y: y / (3 * area) };
      }
    }
    return best ?? { x: (feature.box.minX + feature.box.maxX) / 2, y: (feature.box.minY + feature.box.maxY) / 2 };
  }

  function traceRings(feature, scale, offsetX, offsetY, close) {
    for (const ring of feature.rings) {
      const p = ring.points;
      context.moveTo(p[0] * scale + offsetX, p[1] * scale + offsetY);
      for (let i = 2; i < p.length; i += 2) context.lineTo(p[i] * scale + offsetX, p[i + 1] * scale + offsetY);
      if (close) context.closePath();
    }
  }

  function drawBasemap(scale, offsetX, offsetY, tiled) {
    if (!basemap.features.length) return;
    const topLeft = toWorld(0, 0);
    const bottomRight = toWorld(view.width, view.height);
    const onScreen = (box) => box.maxX >= topLeft.x && box.minX <= bottomRight.x && box.maxY >= topLeft.y && box.minY <= bottomRight.y;
    // Over raster tiles the basemap keeps only its lines: the tiles have the colours.
    context.globalAlpha = tiled ? 0.5 : 1;
    const roadWidth = Math.max(0.6, Math.min(5, (view.zoom - 9) * 0.9));
    // The Han is about 1 km wide: drawn to scale, at least 3 px.
    const centre = unproject(view.cx, view.cy);
    const metresPerPixel = (Math.cos((centre.lat * Math.PI) / 180) * EQUATOR_M) / scale;
    const riverWidth = Math.max(3, Math.min(60, 900 / metresPerPixel));
    let kind = null;
    let batch = [];
    const flush = () => {
      if (batch.length) drawKind(kind, batch, scale, offsetX, offsetY, tiled, { road: roadWidth, river: riverWidth });
      batch = [];
    };
    for (const feature of basemap.features) {
      if (!onScreen(feature.box)) continue;
      if (feature.kind !== kind) {
        flush();
        kind = feature.kind;
      }
      batch.push(feature);
    }
    flush();
    context.globalAlpha = 1;
    context.setLineDash([]);
  }

  /// One kind in as few canvas calls as its style allows: one path for its areas, one
  /// for its lines.
  function drawKind(kind, features, scale, offsetX, offsetY, tiled, widths) {
    const style = KIND_STYLE[kind] ?? KIND_STYLE.other;
    const areas = features.filter((f) => f.area);
    const lines = features.filter((f) => !f.area);
    if (areas.length) {
      context.beginPath();
      for (const feature of areas) traceRings(feature, scale, offsetX, offsetY, true);
      if (style.fill && !tiled) {
        context.fillStyle = style.fill;
        context.fill('evenodd');
      }
      if (style.stroke) {
        context.setLineDash(style.dash ?? []);
        context.strokeStyle = style.stroke;
        context.lineWidth = style.width ?? 1;
        context.stroke();
        context.setLineDash([]);
      }
    }
    if (lines.length) {
      context.beginPath();
      for (const feature of lines) traceRings(feature, scale, offsetX, offsetY, false);
      context.lineJoin = 'round';
      context.lineCap = 'round';
      const width = widths[kind] ?? style.width ?? 1;
      if (style.casing) {
        context.strokeStyle = style.casing;
        context.lineWidth = width + 1.5;
        context.stroke();
      }
      context.strokeStyle = style.stroke ?? KIND_STYLE.other.stroke;
      context.lineWidth = width;
      context.stroke();
      context.lineJoin = 'miter';
      context.lineCap = 'butt';
    }
  }

  /// District names (and, with the zones layer, their supply : demand) where there is
  /// room: from DISTRICT_LABEL_ZOOM in, or always with the zones layer on. A label that
  /// would overlap one already drawn is left out rather than drawn as a smudge.
  function drawDistrictLabels(scale, offsetX, offsetY) {
    if (!basemap.districts.length || (view.zoom < DISTRICT_LABEL_ZOOM && !zones.on)) return;
    const taken = [];
    const fits = (x, y, width, height) => {
      const box = { left: x - width / 2 - 2, right: x + width / 2 + 2, top: y - height, bottom: y + 2 };
      if (taken.some((t) => box.left < t.right && box.right > t.left && box.top < t.bottom && box.bottom > t.top)) return false;
      taken.push(box);
      return true;
    };
    const write = (text, x, y, font, fill) => {
      context.font = font;
      if (!fits(x, y, context.measureText(text).width, 12)) return;
      context.strokeStyle = 'rgba(255,255,255,0.9)';
      context.fillStyle = fill;
      context.strokeText(text, x, y);
      context.fillText(text, x, y);
    };
    context.textAlign = 'center';
    context.lineWidth = 3;
    for (const district of basemap.districts) {
      const x = district.labelAt.x * scale + offsetX;
      const y = district.labelAt.y * scale + offsetY;
      if (x < -60 || y < -20 || x > view.width + 60 || y > view.height + 20) continue;
      // The figures first: with the zones layer on they are what the operator looks for.
      if (zones.on && district.stats && (district.stats.available || district.stats.waiting)) {
        write(`${district.stats.available} : ${district.stats.waiting}`, x, y + 14, '700 12px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif', COLOURS.ink);
      }
      if (district.name && view.zoom >= DISTRICT_LABEL_ZOOM) {
        write(district.name, x, y, '600 11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif', 'rgba(92,86,76,0.9)');
      }
    }
    context.textAlign = 'start';
  }

  /// Whether world point (x, y) is inside a feature's area (even-odd over every ring, so
  /// holes are out).
  function insideArea(feature, x, y) {
    const { box } = feature;
    if (x < box.minX || x > box.maxX || y < box.minY || y > box.maxY) return false;
    let inside = false;
    for (const ring of feature.rings) {
      if (x < ring.minX || x > ring.maxX || y < ring.minY || y > ring.maxY) continue;
      const p = ring.points;
      for (let i = 0, j = p.length - 2; i < p.length; j = i, i += 2) {
        const yi = p[i + 1];
        const yj = p[j + 1];
        if ((yi > y) !== (yj > y) && x < ((p[j] - p[i]) * (y - yi)) / (yj - yi) + p[i]) inside = !inside;
      }
    }
    return inside;
  }

  /// Point → district, memoised on a ~100 m grid: 50,000 drivers fall in far fewer cells,
  /// so each polygon test runs once per cell, not once per driver and frame.
  const districtCache = new Map();
  const DISTRICT_CACHE_MAX = 200_000;

  function districtAt(lat, lng) {
    if (!basemap.districts.length || !isNumber(lat) || !isNumber(lng)) return null;
    const key = `${Math.round(lat * 1000)}:${Math.round(lng * 1000)}`;
    let district = districtCache.get(key);
    if (district === undefined) {
      const { x, y } = project(lat, lng);
      district = basemap.districts.find((d) => insideArea(d, x, y)) ?? null;
      if (districtCache.size >= DISTRICT_CACHE_MAX) districtCache.clear();
      districtCache.set(key, district);
    }
    return district;
  }

  /// A place as an operator says it: the district if the basemap has one, and the
  /// position to about 10 m.
  function placeName(point) {
    if (!point || !isNumber(point.lat) || !isNumber(point.lng)) return 'unknown';
    const district = districtAt(point.lat, point.lng);
    const rounded = `${point.lat.toFixed(4)}, ${point.lng.toFixed(4)}`;
    return district?.name ? `${district.name} (${rounded})` : rounded;
  }

  // ---------------------------------------------------------------- zones (supply and demand)

  /// Per district: available drivers against waiting requests. Counted at most every
  /// ZONES_EVERY_MS while the layer is on.
  const zones = { on: false, countedAt: 0 };
  const ZONES_EVERY_MS = 2_000;

  function countZones() {
    for (const district of basemap.districts) district.stats = { available: 0, waiting: 0 };
    for (const driver of model.drivers.values()) {
      if (driver.state !== 'available') continue;
      const district = districtAt(driver.lat, driver.lng);
      if (district) district.stats.available += 1;
    }
    for (const trip of model.trips.values()) {
      if (trip.state !== 'requested') continue;
      const district = districtAt(trip.pickup?.lat, trip.pickup?.lng);
      if (district) district.stats.waiting += 1;
    }
    zones.countedAt = Date.now();
  }

  /// Red where requests outnumber available drivers, amber where they are about even,
  /// green where drivers are plenty; the stronger, the larger the gap.
  function zoneFill({ available, waiting }) {
    if (!available && !waiting) return null;
    if (!waiting) return 'rgba(46,158,91,0.18)';
    const ratio = available / waiting;
    if (ratio < 1) return `rgba(209,73,91,${(0.25 + 0.35 * (1 - ratio)).toFixed(2)})`;
    if (ratio < 2) return 'rgba(227,154,18,0.3)';
    return 'rgba(46,158,91,0.3)';
  }

  function drawZones(scale, offsetX, offsetY) {
    if (!basemap.districts.length) return;
    if (Date.now() - zones.countedAt >= ZONES_EVERY_MS || dirty.zones) {
      dirty.zones = false;
      countZones();
    }
    for (const district of basemap.districts) {
      const fill = district.stats && zoneFill(district.stats);
      if (!fill) continue;
      context.beginPath();
      traceRings(district, scale, offsetX, offsetY, true);
      context.fillStyle = fill;
      context.fill('evenodd');
    }
  }

  function setZones(on) {
    if (on && basemap.state !== 'ready') {
      showBanner('Zones need the offline basemap (/basemap.json), which this server does not have.', 'error', 8_000);
      on = false;
    }
    zones.on = on;
    zones.countedAt = 0;
    $('zones-toggle').setAttribute('aria-pressed', String(on));
    $('zones-key').hidden = !on;
    invalidate('map');
  }

  $('zones-toggle').addEventListener('click', () => setZones(!zones.on));

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
    $('tooltip').hidden = true;
  });

  /// The tooltip follows the pointer at most once a frame: a hit test walks the fleet.
  let hoverAt = null;
  canvas.addEventListener('pointermove', (event) => {
    if (pointer.dragged) {
      $('tooltip').hidden = true;
      return;
    }
    const first = hoverAt === null;
    hoverAt = canvasPoint(event);
    if (first) requestAnimationFrame(showTooltip);
  });

  function showTooltip() {
    const at = hoverAt;
    hoverAt = null;
    const tip = $('tooltip');
    const hit = at && hitTest(at.x, at.y);
    if (!hit) {
      tip.hidden = true;
      return;
    }
    tip.textContent = hoverText(hit);
    tip.hidden = false;
    // Beside the pointer, flipped to stay inside the map.
    const left = at.x + 14 + tip.offsetWidth > view.width ? at.x - 14 - tip.offsetWidth : at.x + 14;
    tip.style.left = `${Math.max(0, left)}px`;
    tip.style.top = `${Math.max(0, at.y - 28)}px`;
  }

  function hoverText(hit) {
    if (hit.kind === 'driver') {
      const driver = model.drivers.get(hit.id);
      return `driver ${hit.id} · ${driver ? CATEGORY_LABEL[category(driver)] : 'gone'}`;
    }
    const trip = model.trips.get(hit.id);
    const alert = alerts.byTrip.get(hit.id);
    const state = trip ? words(trip.state) : 'unknown';
    return `trip ${hit.id} · ${state}${alert ? ` · ${alert.label}` : ''}`;
  }

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
    } else if (event.key === 'z') {
      setZones(!zones.on);
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
      if (hiddenKinds.has(tripKind(trip))) continue;
      if (trip._pickup && trip.state === 'requested') consider(trip._pickup.x, trip._pickup.y, 'trip', trip.id, 0);
      if (trip._dropoff && ACTIVE_STATES.has(trip.state)) consider(trip._dropoff.x, trip._dropoff.y, 'trip', trip.id, 0);
    }
    // A driver sitting on a pickup wins only if clearly nearer to the click.
    for (const driver of model.drivers.values()) {
      if (isNumber(driver.x) && !hiddenKinds.has(category(driver))) consider(driver.x, driver.y, 'driver', driver.id, 9);
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

  /// A duration for a narrow column: "42 s", "3 min".
  function shortDuration(value) {
    if (!isNumber(value)) return '—';
    return value < 90 ? `${Math.round(value)} s` : `${Math.round(value / 60)} min`;
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
    if (dirty.alerts || Date.now() - alerts.computedAt >= ALERTS_EVERY_MS) {
      dirty.alerts = false;
      computeAlerts(Date.now());
      renderAlerts();
      invalidate('map');
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
    $('stat-alerts').textContent = integer.format(alerts.list.length);
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
    const elapsedNow = Math.max(0.2, Math.min(1, (Date.now() - end) / minute));
    const peak = Math.max(1, ...requested, ...completed, ...lost,
      requested[29] / elapsedNow, completed[29] / elapsedNow, lost[29] / elapsedNow);
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
    g.fillText('now (so far)', width, height - 3);
    g.textAlign = 'start';
    // The current minute is not over: its counts are drawn at the pace so far (count ÷
    // elapsed fraction, hatched and dashed), not as a plunge. Early in a minute the pace is
    // noise, so the fraction counts as at least a fifth.
    const elapsed = Math.max(0.2, Math.min(1, (Date.now() - end) / minute));
    const pace = (value) => value / elapsed;
    const current = 29;
    const xCurrent = left + current * slot;
    g.fillStyle = 'rgba(47,95,138,0.06)';
    g.fillRect(xCurrent, top, slot, bottom - top);
    g.fillStyle = COLOURS['trend-requested'];
    for (let i = 0; i < current; i += 1) {
      if (requested[i]) g.fillRect(left + i * slot + 1, yOf(requested[i]), Math.max(1, slot - 2), bottom - yOf(requested[i]));
    }
    if (requested[current]) {
      const y = yOf(pace(requested[current]));
      g.save();
      g.beginPath();
      g.rect(xCurrent + 1, y, Math.max(1, slot - 2), bottom - y);
      g.clip();
      g.strokeStyle = COLOURS['trend-requested'];
      g.lineWidth = 1.5;
      g.beginPath();
      for (let d = -height; d < slot + height; d += 4) {
        g.moveTo(xCurrent + d, bottom);
        g.lineTo(xCurrent + d + height, bottom - height);
      }
      g.stroke();
      g.restore();
    }
    for (const [series, name] of [[lost, 'trend-lost'], [completed, 'trend-completed']]) {
      // A flat line at zero would read as data; an empty chart says "nothing yet".
      if (!series.some(Boolean)) continue;
      g.strokeStyle = COLOURS[name];
      g.lineWidth = 2;
      g.beginPath();
      const x = (i) => left + i * slot + slot / 2;
      for (let i = 0; i < current; i += 1) {
        if (i === 0) g.moveTo(x(i), yOf(series[i]));
        else g.lineTo(x(i), yOf(series[i]));
      }
      g.stroke();
      g.setLineDash([3, 3]);
      g.beginPath();
      g.moveTo(x(current - 1), yOf(series[current - 1]));
      g.lineTo(x(current), yOf(pace(series[current])));
      g.stroke();
      g.setLineDash([]);
    }
  }

  /// What makes an offer worth a second look: not the best-ranked driver, a search
  /// radius wider than the first, or a driver who let it lapse.
  function unusual(offer) {
    const firstRadius = model.policy.search_radii_m?.[0] ?? DEFAULT_POLICY.search_radii_m[0];
    return {
      rank: isNumber(offer.rank) && offer.rank > 1,
      radius: isNumber(offer.radius_m) && offer.radius_m > firstRadius,
      lapsed: offer.outcome === 'expired',
    };
  }

  /// The log's filters as the operator set them.
  const offerFilter = { outcome: '', driver: '', trip: '' };

  function offerShown(offer) {
    if (offerFilter.outcome === 'unusual') {
      const odd = unusual(offer);
      if (!(odd.rank || odd.radius || odd.lapsed)) return false;
    } else if (offerFilter.outcome && offer.outcome !== offerFilter.outcome) {
      return false;
    }
    if (offerFilter.driver && !String(offer.driver_id).startsWith(offerFilter.driver)) return false;
    if (offerFilter.trip && !String(offer.trip_id).startsWith(offerFilter.trip)) return false;
    return true;
  }

  function offerRow(offer) {
    const odd = unusual(offer);
    const cell = (text, className, title) => element('td', { text, className, title });
    const label = OUTCOME_LABEL[offer.outcome] ?? words(offer.outcome);
    const decided = offer.decided_at ? ` at ${clock(offer.decided_at)}` : '';
    const outcome = element('td', {}, [element('span', {
      className: `outcome ${offer.outcome}`,
      text: label,
      title: offer.outcome === 'expired'
        ? `The driver let this offer lapse${decided}; the trip itself goes on being dispatched.`
        : `${label}${decided}`,
    })]);
    const rank = isNumber(offer.rank) ? `${offer.rank} of ${offer.candidates ?? '?'}` : '—';
    const pickup = `${metres(offer.pickup_distance_m)} · ${shortDuration(offer.pickup_eta_s)}`;
    const row = element('tr', { data: { offerId: offer.offer_id ?? '', outcome: offer.outcome ?? '' } }, [
      cell(clock(offer.at)),
      outcome,
      element('td', {}, [tripLink(offer.trip_id)]),
      element('td', {}, [driverLink(offer.driver_id)]),
      cell(pickup, 'num'),
      cell(rank, `num${odd.rank ? ' unusual' : ''}${offer.batch ? ' batched' : ''}`, rankTitle(offer, odd)),
      cell(metres(offer.radius_m), odd.radius ? 'num unusual' : 'num', odd.radius ? 'Found only in a widened search radius' : ''),
    ]);
    if (odd.rank || odd.radius || odd.lapsed) row.classList.add('unusual');
    return row;
  }

  /// Why a rank reads as it does: not the best-ranked driver, or chosen with other trips
  /// in a batch (HAIL_MATCHING=batch), where the best for all is not each one's nearest.
  function rankTitle(offer, odd) {
    const parts = [];
    if (odd.rank) parts.push('Not the best-ranked driver');
    const batch = offer.batch;
    if (batch && isNumber(batch.size)) {
      parts.push(`Chosen in a batch of ${batch.size} trip${batch.size === 1 ? '' : 's'} (window ${batch.window_ms} ms, solved in ${batch.solve_us} µs)`);
    }
    return parts.join('. ');
  }

  /// Offer id → its row, so an outcome redraws the row it closes.
  const offerRows = new Map();

  function renderOfferLog() {
    const body = $('offers-body');
    const build = (offer) => {
      const row = offerRow(offer);
      offerRows.set(offer.offer_id, row);
      return row;
    };
    if (dirty.offersRebuild) {
      dirty.offersRebuild = false;
      pendingOfferRows.length = 0;
      changedOfferRows.length = 0;
      offerRows.clear();
      body.replaceChildren(...model.offers.filter(offerShown).map(build));
    } else {
      for (const offer of changedOfferRows.splice(0)) {
        const old = offerRows.get(offer.offer_id);
        if (!old) continue;
        if (offerShown(offer)) old.replaceWith(build(offer));
        else {
          old.remove();
          offerRows.delete(offer.offer_id);
        }
      }
      if (pendingOfferRows.length) {
        const fresh = pendingOfferRows.splice(0).slice(-OFFER_LOG_MAX).reverse().filter(offerShown).map(build);
        body.prepend(...fresh);
      }
      while (body.childElementCount > OFFER_LOG_MAX) {
        offerRows.delete(body.lastElementChild.dataset.offerId);
        body.lastElementChild.remove();
      }
    }
    const empty = $('offers-empty');
    empty.hidden = body.childElementCount > 0;
    empty.textContent = model.offers.length ? 'No offer matches the filters.' : 'No offers yet.';
  }

  for (const [id, key] of [['filter-outcome', 'outcome'], ['filter-driver', 'driver'], ['filter-trip', 'trip']]) {
    const apply = () => {
      const value = $(id).value.trim();
      if (offerFilter[key] === value) return;
      offerFilter[key] = value;
      dirty.offersRebuild = true;
      invalidate('panels');
    };
    // `change` too: clearing a field programmatically (or by WebDriver) fires only that.
    $(id).addEventListener('input', apply);
    $(id).addEventListener('change', apply);
  }
  $('offers-filter').addEventListener('submit', (event) => event.preventDefault());

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
    const alert = alerts.byTrip.get(trip.id);
    row.button.classList.toggle('alerting', Boolean(alert));
    row.button.title = alert ? alert.label : '';
    return row;
  }

  function renderTrips() {
    const open = [];
    for (const trip of model.trips.values()) {
      if (OPEN_STATES.has(trip.state) && !hiddenKinds.has(tripKind(trip))) open.push(trip);
    }
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
    $('trips-empty').textContent = hiddenKinds.size ? 'No open trips shown: some kinds are hidden in the legend.' : 'No open trips.';
  }

  // Ages, waits and countdowns move on their own.
  setInterval(() => {
    if (session.token) invalidate('panels');
  }, ALERTS_EVERY_MS);

  // ---------------------------------------------------------------- alerts

  /// Trips in trouble, most urgent first: `list` of {tripId, kind, label, detail, fixes},
  /// one per trip (its most urgent trouble; the others in `detail`).
  const alerts = { list: [], byTrip: new Map(), computedAt: 0 };
  /// Most urgent first. `fixes` are the actions offered one click away.
  const ALERT_KINDS = {
    driver_lost: { rank: 0, fixes: ['resolve'] },
    driver_gone: { rank: 1, fixes: ['cancel'] },
    expiring: { rank: 2, fixes: ['assign'] },
    no_candidate: { rank: 3, fixes: ['assign'] },
    slow_pickup: { rank: 4, fixes: ['cancel'] },
    waiting: { rank: 5, fixes: ['assign'] },
  };
  const FIX_LABEL = { assign: 'Assign…', cancel: 'Cancel…', resolve: 'Resolve…' };

  function loadSettings() {
    let stored = {};
    try {
      stored = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}') ?? {};
    } catch {
      stored = {};
    }
    const settings = { ...DEFAULT_SETTINGS };
    for (const key of Object.keys(DEFAULT_SETTINGS)) {
      if (isNumber(stored[key]) && stored[key] > 0) settings[key] = stored[key];
    }
    return settings;
  }

  let settings = loadSettings();

  /// Pickup ETA in seconds as hail estimates it: straight-line metres × detour ÷ speed.
  function etaS(metresAway) {
    const { detour_factor: detour, urban_speed_mps: speed } = model.policy;
    return (metresAway * (detour || DEFAULT_POLICY.detour_factor)) / (speed || DEFAULT_POLICY.urban_speed_mps);
  }

  /// When a waiting trip expires, in ms since the epoch.
  function expiresAt(trip) {
    return millis(trip, 'requested_at') + (model.policy.dispatch_deadline_ms ?? DEFAULT_POLICY.dispatch_deadline_ms);
  }

  /// Available drivers bucketed by a grid of GRID_DEG degrees, rebuilt per computation:
  /// "anyone within the widest radius?" then looks at a few cells, not the whole fleet.
  const GRID_DEG = 0.05;

  function availableGrid() {
    const grid = new Map();
    for (const driver of model.drivers.values()) {
      if (driver.state !== 'available' || !isNumber(driver.lat)) continue;
      const key = `${Math.floor(driver.lat / GRID_DEG)}:${Math.floor(driver.lng / GRID_DEG)}`;
      let cell = grid.get(key);
      if (!cell) grid.set(key, (cell = []));
      cell.push(driver);
    }
    return grid;
  }

  function anyAvailableWithin(grid, lat, lng, radiusM) {
    const rowSpan = Math.ceil(radiusM / 111_195 / GRID_DEG);
    const columnSpan = Math.ceil(radiusM / (111_195 * Math.max(0.1, Math.cos((lat * Math.PI) / 180))) / GRID_DEG);
    const row = Math.floor(lat / GRID_DEG);
    const column = Math.floor(lng / GRID_DEG);
    for (let r = row - rowSpan; r <= row + rowSpan; r += 1) {
      for (let c = column - columnSpan; c <= column + columnSpan; c += 1) {
        for (const driver of grid.get(`${r}:${c}`) ?? []) {
          if (distanceM(lat, lng, driver.lat, driver.lng) <= radiusM) return true;
        }
      }
    }
    return false;
  }

  /// Every trip in trouble, by the thresholds under Settings and the server's policy.
  function computeAlerts(now) {
    const grid = availableGrid();
    const radii = model.policy.search_radii_m ?? DEFAULT_POLICY.search_radii_m;
    const widest = Math.max(...radii);
    // Trips with an offer out to someone are being dispatched: not "no candidate".
    const offered = new Set();
    for (const offer of model.offers) if (offer.outcome === 'made') offered.add(offer.trip_id);
    const found = [];
    for (const trip of model.trips.values()) {
      if (!OPEN_STATES.has(trip.state)) continue;
      const troubles = tripTroubles(trip, now, grid, widest, offered);
      if (!troubles.length) continue;
      troubles.sort((a, b) => ALERT_KINDS[a.kind].rank - ALERT_KINDS[b.kind].rank);
      const [first, ...others] = troubles;
      found.push({
        tripId: trip.id,
        kind: first.kind,
        label: first.label,
        detail: [first.detail, ...others.map((t) => t.label)].filter(Boolean).join(' · '),
        fixes: ALERT_KINDS[first.kind].fixes,
        urgency: first.urgency ?? 0,
      });
    }
    found.sort((a, b) => ALERT_KINDS[a.kind].rank - ALERT_KINDS[b.kind].rank || b.urgency - a.urgency);
    alerts.list = found;
    alerts.byTrip = new Map(found.map((alert) => [alert.tripId, alert]));
    alerts.computedAt = now;
  }

  /// What is wrong with one trip, if anything: [{kind, label, detail, urgency}].
  function tripTroubles(trip, now, grid, widest, offered) {
    const troubles = [];
    if (trip.state === 'requested') {
      const waitedMs = now - millis(trip, 'requested_at');
      const leftMs = expiresAt(trip) - now;
      if (leftMs <= settings.expiryS * 1000) {
        troubles.push({ kind: 'expiring', label: `expires in ${seconds(Math.max(0, leftMs / 1000))}`, urgency: -leftMs });
      }
      const pickup = trip.pickup;
      if (pickup && isNumber(pickup.lat) && !offered.has(trip.id) && !anyAvailableWithin(grid, pickup.lat, pickup.lng, widest)) {
        troubles.push({ kind: 'no_candidate', label: `no available driver within ${metres(widest)}`, urgency: waitedMs });
      }
      if (waitedMs >= settings.waitS * 1000) {
        troubles.push({ kind: 'waiting', label: `waiting ${seconds(waitedMs / 1000)}`, urgency: waitedMs });
      }
      return troubles;
    }
    const flag = model.flags.get(trip.id);
    if (flag && trip.state === 'in_progress') {
      troubles.push({ kind: 'driver_lost', label: 'driver lost mid-ride', detail: flag.reason ?? '', urgency: now - Date.parse(flag.at) });
      return troubles;
    }
    const driver = trip.driver_id ? model.drivers.get(trip.driver_id) : null;
    if (!driver) {
      // Before pickup hail dispatches again once the driver counts as lost; after pickup
      // only an operator can close the trip.
      const kind = trip.state === 'in_progress' ? 'driver_lost' : 'driver_gone';
      troubles.push({ kind, label: 'driver not online', detail: trip.driver_id ? `driver ${trip.driver_id}` : '' });
      return troubles;
    }
    if (trip.state === 'accepted' && isNumber(driver.lat) && trip.pickup) {
      const eta = etaS(distanceM(driver.lat, driver.lng, trip.pickup.lat, trip.pickup.lng));
      if (eta > settings.etaMin * 60) {
        troubles.push({ kind: 'slow_pickup', label: `pickup ETA ${minutes(eta)}`, detail: `driver ${driver.id}`, urgency: eta });
      }
    }
    return troubles;
  }

  function minutes(valueS) {
    return isNumber(valueS) ? `${Math.round(valueS / 60)} min` : '—';
  }

  /// Rows keyed by trip id, updated in place so a button does not move from under a click
  /// that is on its way.
  const alertRows = new Map();

  function alertRow(alert) {
    let row = alertRows.get(alert.tripId);
    if (!row) {
      const label = element('b');
      const detail = element('span', { className: 'detail' });
      const fix = element('div', { className: 'fix' });
      const item = element('li', { data: { tripId: alert.tripId } }, [
        element('div', { className: 'what' }, [label, ' ', tripLink(alert.tripId), detail]),
        fix,
      ]);
      row = { item, label, detail, fix, fixes: '' };
      alertRows.set(alert.tripId, row);
    }
    row.item.dataset.kind = alert.kind;
    if (row.label.textContent !== alert.label) row.label.textContent = alert.label;
    if (row.detail.textContent !== alert.detail) row.detail.textContent = alert.detail;
    const fixes = alert.fixes.join(',');
    if (row.fixes !== fixes) {
      row.fixes = fixes;
      row.fix.replaceChildren(...alert.fixes.map((action) => {
        const button = element('button', { type: 'button', text: FIX_LABEL[action], data: { action } });
        button.addEventListener('click', () => openAction(alert.tripId, action));
        return button;
      }));
    }
    return row;
  }

  function renderAlerts() {
    const count = alerts.list.length;
    document.title = count ? `(${count}) ${TITLE}` : TITLE;
    $('alerts-count').textContent = integer.format(count);
    $('alerts-panel').dataset.alerts = String(count);
    const shown = alerts.list.slice(0, ALERTS_SHOWN_MAX);
    const kept = new Set(shown.map((alert) => alert.tripId));
    for (const [id, row] of alertRows) {
      if (!kept.has(id)) {
        row.item.remove();
        alertRows.delete(id);
      }
    }
    const list = $('alerts');
    let cursor = list.firstElementChild;
    for (const alert of shown) {
      const { item } = alertRow(alert);
      if (item === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(item, cursor);
    }
    $('alerts-more').textContent = count > ALERTS_SHOWN_MAX ? `and ${integer.format(count - ALERTS_SHOWN_MAX)} more` : '';
    $('alerts-empty').hidden = count > 0;
    const chip = $('inspector-alerts');
    chip.hidden = count === 0;
    chip.textContent = `⚠ ${integer.format(count)} trip${count === 1 ? ' needs' : 's need'} attention: see the list`;
  }

  $('inspector-alerts').addEventListener('click', () => {
    closeInspector();
    document.querySelector('.right').scrollTop = 0;
  });

  /// The settings form shows the thresholds in force; saving checks and stores them.
  const SETTING_FIELDS = [['alert-wait-s', 'waitS'], ['alert-expiry-s', 'expiryS'], ['alert-eta-min', 'etaMin'], ['alert-confirm-km', 'confirmKm']];

  function showSettings() {
    for (const [id, key] of SETTING_FIELDS) $(id).value = String(settings[key]);
  }

  $('alert-settings').addEventListener('submit', (event) => {
    event.preventDefault();
    const next = {};
    for (const [id, key] of SETTING_FIELDS) {
      const value = Number($(id).value);
      if (!(isNumber(value) && value > 0)) {
        $('alert-settings-message').textContent = 'Each threshold is a number above 0.';
        return;
      }
      next[key] = value;
    }
    settings = next;
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
    $('alert-settings-message').textContent = 'Thresholds saved in this browser.';
    dirty.alerts = true;
    invalidate('panels');
  });

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

  /// Opens the card for a trip or a driver and makes the address point at it, so the URL
  /// can be shared (`#trip=<id>`, `#driver=<id>`).
  function select(kind, id) {
    const same = selected && selected.kind === kind && selected.id === id;
    selected = { kind, id };
    setHash(kind, id);
    if (!same) {
      fetchedTrip = null;
      driverCard = null;
      closeActionBoxes();
      clearInspectorMessages();
    }
    $('inspector').hidden = false;
    $('layout').classList.add('inspecting');
    if (kind === 'trip') {
      loadTimeline(id);
      if (!model.trips.has(id)) fetchTrip(id);
    } else {
      timeline.tripId = null;
      timeline.events = [];
      loadDriverCard(id);
    }
    renderInspector(true);
    revealSelection();
    resizeMap();
    invalidate('map', 'panels');
  }

  /// Opens a trip's card with the box of one action open: what an alert's button does.
  function openAction(tripId, action) {
    select('trip', tripId);
    if (action === 'assign') openAssign();
    else if (action === 'cancel') openCancel();
    else if (action === 'resolve') openResolve();
  }

  /// Pans so that what was selected (from a list, say) is on screen.
  function revealSelection() {
    let point = null;
    if (selected?.kind === 'driver') point = model.drivers.get(selected.id);
    else if (selected?.kind === 'trip') point = selectedTrip() && tripPoints(selectedTrip())._pickup;
    if (!point || !isNumber(point.x)) return;
    const scale = worldScale();
    const sx = (point.x - view.cx) * scale + view.width / 2;
    const sy = (point.y - view.cy) * scale + view.height / 2;
    // Room on the right for the "pickup" label beside the marker.
    if (sx >= 24 && sx <= view.width - 110 && sy >= 40 && sy <= view.height - 56) return;
    view.cx = point.x;
    view.cy = point.y;
    clampView();
    invalidate('map');
  }

  function closeInspector() {
    selected = null;
    timeline.tripId = null;
    driverCard = null;
    $('inspector').hidden = true;
    $('layout').classList.remove('inspecting');
    setHash(null);
    resizeMap();
    invalidate('map', 'panels');
  }

  $('inspector-close').addEventListener('click', closeInspector);
  // "/" jumps to the search box, as in most consoles, unless the operator is typing.
  document.addEventListener('keydown', (event) => {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
    if (event.key !== '/' || typing || !session.token) return;
    event.preventDefault();
    $('search-input').focus();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return;
    if (!$('search-results').hidden) {
      $('search-results').hidden = true;
      return;
    }
    if (selected && !(event.target instanceof HTMLInputElement)) closeInspector();
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
      if (selected && selected.id === id) {
        inspectorError(error instanceof ApiFailure && error.status === 404
          ? `No trip with id ${id}.`
          : `Could not load the trip: ${describe(error)}`);
      }
    }
  }

  /// Name, plate and last ping are not in the live stream; the card asks for them.
  async function loadDriverCard(id) {
    try {
      const card = await api('GET', `/v1/ops/drivers/${encodeURIComponent(id)}`);
      if (selected?.kind === 'driver' && selected.id === id) driverCard = card;
    } catch (error) {
      if (selected?.kind === 'driver' && selected.id === id) {
        driverCard = {
          error: error instanceof ApiFailure && error.status === 404 && error.code === 'not_found' && !model.drivers.has(id)
            ? `No driver with id ${id}.`
            : `Name, plate and last ping unavailable: ${describe(error)}`,
        };
      }
    }
    if (selected?.kind === 'driver' && selected.id === id) renderInspector(true);
  }

  // Last ping and state move on their own while a driver's card is open.
  setInterval(() => {
    if (session.token && selected?.kind === 'driver') loadDriverCard(selected.id);
  }, 5_000);

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
      if (!(error instanceof ApiFailure && error.status === 404)) inspectorError(`Could not load the timeline: ${describe(error)}`);
    } finally {
      if (request === timeline.request) {
        timeline.loading = false;
        renderTimeline();
        const last = timeline.events.length ? timeline.events[timeline.events.length - 1].seq : 0;
        if (timeline.events.length && timeline.behind > last) loadTimeline(tripId);
      }
    }
  }

  /// "operator ana", "driver drv_…", "system": who caused an event.
  function actorText(actor) {
    if (!actor || !actor.role) return '';
    return actor.id ? `${actor.role} ${actor.id}` : actor.role;
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
      const who = actorText(event.actor);
      return element('li', { data: { event: event.event, seq: String(event.seq) } }, [
        element('span', { className: 'event', text: words(event.event) }),
        element('span', { className: 'when', text: clock(event.at) }),
        who ? element('span', { className: 'who', text: `by ${who}` }) : null,
        event.reason ? element('span', { className: 'why', text: `“${event.reason}”` }) : null,
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
    const driver = selected.kind === 'driver' ? model.drivers.get(selected.id) : null;
    const newest = model.offers[0];
    const alert = trip ? alerts.byTrip.get(trip.id) : null;
    const key = JSON.stringify([
      selected,
      trip && [trip.seq, trip.state, trip.driver_id],
      driver && [driver.state, category(driver), driver.lat, driver.lng, driver.tripId, driver.connected],
      model.offers.length,
      newest && [newest.offer_id, newest.outcome],
      alert && [alert.label, alert.detail],
      // Waits, countdowns and "ago" move by the second.
      Math.floor(Date.now() / 1000),
    ]);
    if (!full && key === inspectorKey) return;
    inspectorKey = key;
    renderDeepLink();
    const note = $('inspector-alert');
    note.hidden = !alert;
    if (alert) note.textContent = `Needs attention: ${alert.label}${alert.detail ? ` — ${alert.detail}` : ''}`;
    if (selected.kind === 'driver') renderDriverCard(driver);
    else renderTripCard(trip);
    if (full) renderTimeline();
  }

  function renderDriverCard(driver) {
    const fields = $('inspector-fields');
    fields.replaceChildren();
    $('trip-actions').hidden = true;
    $('inspector-title').replaceChildren('Driver ', element('span', { className: 'mono', text: selected.id }));
    const card = driverCard;
    if (card && !card.error) {
      field(fields, 'name', card.name ?? '—');
      field(fields, 'plate', card.plate ?? '—');
    } else if (card?.error) {
      field(fields, 'details', card.error);
    } else {
      field(fields, 'details', 'loading…');
    }
    const online = card && !card.error ? card.online : null;
    const lastPing = online?.last_ping_at ?? driver?.lastPingAt ?? null;
    if (!driver) {
      field(fields, 'state', 'not online');
    } else {
      const kind = category(driver);
      field(fields, 'state', element('span', { className: `badge ${kind}`, text: CATEGORY_LABEL[kind] }));
      field(fields, 'position', placeName(driver));
    }
    field(fields, 'last ping', lastPing ? `${age(lastPing)} ago (${clock(lastPing)})` : '—');
    const tripId = driver?.tripId ?? card?.trip?.id ?? null;
    field(fields, 'trip', tripId ? tripLink(tripId) : '—');
    const connected = online ? online.connected : driver?.connected;
    if (connected != null) field(fields, 'app', connected ? 'connected' : 'socket dropped');
    if (online?.node) field(fields, 'node', online.node);
    renderRelatedOffers((offer) => offer.driver_id === selected.id, (offer) => [offer.trip_id, 'trip']);
  }

  function renderTripCard(trip) {
    const fields = $('inspector-fields');
    fields.replaceChildren();
    $('inspector-title').replaceChildren('Trip ', element('span', { className: 'mono', text: selected.id }));
    if (!trip) {
      field(fields, 'state', 'loading…');
      $('trip-actions').hidden = true;
      renderRelatedOffers(() => false);
      return;
    }
    const now = Date.now();
    field(fields, 'state', element('span', { className: `badge ${trip.state}`, text: words(trip.state) }));
    if (trip.state === 'requested') {
      field(fields, 'waiting', seconds((now - millis(trip, 'requested_at')) / 1000));
      const left = (expiresAt(trip) - now) / 1000;
      field(fields, 'expires', left > 0 ? `in ${seconds(left)} (${clock(expiresAt(trip))})` : 'due now');
    }
    const driver = trip.driver_id ? model.drivers.get(trip.driver_id) : null;
    if ((trip.state === 'accepted' || trip.state === 'arrived') && trip.pickup) {
      if (trip.state === 'arrived') field(fields, 'pickup ETA', 'at the pickup');
      else if (driver && isNumber(driver.lat)) {
        const away = distanceM(driver.lat, driver.lng, trip.pickup.lat, trip.pickup.lng);
        field(fields, 'pickup ETA', `${seconds(etaS(away))} (${metres(away)} away)`);
      } else field(fields, 'pickup ETA', 'driver not online');
    }
    field(fields, 'passenger', element('span', { className: 'mono', text: trip.passenger_id }));
    field(fields, 'driver', trip.driver_id ? driverLink(trip.driver_id) : '—');
    field(fields, 'requested', clock(trip.requested_at));
    field(fields, 'pickup', placeName(trip.pickup));
    field(fields, 'drop-off', placeName(trip.dropoff));
    field(fields, 'fare', trip.fare ? money(trip.fare) : `${money(trip.fare_estimate)} estimated`);
    field(fields, 'updated', clock(trip.updated_at));
    const open = OPEN_STATES.has(trip.state);
    $('trip-actions').hidden = !open;
    $('assign-open').hidden = trip.state !== 'requested';
    $('resolve-open').hidden = trip.state !== 'in_progress';
    $('cancel-trip').hidden = !CANCELLABLE_STATES.has(trip.state);
    if (!open) closeActionBoxes();
    if (trip.state !== 'requested') $('assign-box').hidden = true;
    if (trip.state !== 'in_progress') $('resolve-box').hidden = true;
    $('cancel-reason').placeholder = trip.state === 'in_progress' ? 'reason (required after pickup)' : 'reason (optional)';
    renderRelatedOffers((offer) => offer.trip_id === trip.id, (offer) => [offer.driver_id, 'driver']);
  }

  function renderRelatedOffers(matches, other) {
    const list = $('related-offers');
    const lines = model.offers.filter(matches).slice(0, 20);
    $('related-offers-title').hidden = lines.length === 0;
    list.replaceChildren(...lines.map((offer) => {
      const [id, kind] = other(offer);
      const link = kind === 'trip' ? tripLink(id) : driverLink(id);
      return element('li', {}, [`${clock(offer.at)} ${OUTCOME_LABEL[offer.outcome] ?? offer.outcome} · `, link]);
    }));
  }

  // ------------------------------------------------ actions: assign, cancel, resolve

  function closeActionBoxes() {
    $('assign-box').hidden = true;
    $('assign-confirm').hidden = true;
    $('cancel-box').hidden = true;
    $('resolve-box').hidden = true;
    $('cancel-reason').value = '';
    $('resolve-reason').value = '';
    candidates.pending = null;
  }

  function openAssign() {
    const trip = selectedTrip();
    if (!trip || trip.state !== 'requested') return;
    $('cancel-box').hidden = true;
    $('resolve-box').hidden = true;
    $('assign-box').hidden = false;
    $('assign-confirm').hidden = true;
    loadCandidates(trip);
  }

  function openCancel() {
    $('assign-box').hidden = true;
    $('resolve-box').hidden = true;
    $('cancel-box').hidden = false;
    $('cancel-reason').focus();
  }

  function openResolve() {
    const trip = selectedTrip();
    if (!trip || trip.state !== 'in_progress') return;
    $('assign-box').hidden = true;
    $('cancel-box').hidden = true;
    $('resolve-box').hidden = false;
    $('resolve-reason').focus();
  }

  /// Drivers who said no to this trip or let its offer lapse, from the log this page holds
  /// (the server's `excluded` says the same for the ones it ranks).
  function refusals(tripId) {
    const refused = new Map();
    for (const offer of model.offers) {
      if (offer.trip_id !== tripId) continue;
      if (offer.outcome === 'declined') refused.set(offer.driver_id, 'declined');
      else if (offer.outcome === 'expired' && !refused.has(offer.driver_id)) refused.set(offer.driver_id, 'lapsed');
    }
    return refused;
  }

  /// Candidates ranked by the server (pickup ETA, who was excluded); if this server has
  /// no such endpoint, the available drivers this page holds, nearest first.
  async function loadCandidates(trip) {
    candidates.tripId = trip.id;
    candidates.loading = true;
    candidates.list = [];
    renderCandidates();
    let list;
    let source;
    try {
      const body = await api('GET', `/v1/ops/trips/${encodeURIComponent(trip.id)}/candidates`);
      list = (body?.candidates ?? []).map((c) => ({
        id: c.driver_id, name: c.name, plate: c.plate, state: c.state,
        distance: c.distance_m, eta: c.eta_s, excluded: c.excluded ?? null,
      }));
      source = 'server';
    } catch (error) {
      if (!(missingRoute(error))) {
        if (candidates.tripId === trip.id) {
          candidates.loading = false;
          candidates.list = [];
          $('candidates-note').textContent = `Could not rank drivers: ${describe(error)}`;
          $('candidates').replaceChildren();
        }
        return;
      }
      list = localCandidates(trip);
      source = 'local';
    }
    if (candidates.tripId !== trip.id) return;
    const refused = refusals(trip.id);
    for (const candidate of list) candidate.excluded = candidate.excluded ?? refused.get(candidate.id) ?? null;
    candidates.list = list;
    candidates.source = source;
    candidates.loading = false;
    renderCandidates();
  }

  function localCandidates(trip) {
    const choices = [];
    if (!trip.pickup || !isNumber(trip.pickup.lat)) return choices;
    for (const driver of model.drivers.values()) {
      if (driver.state !== 'available' || !isNumber(driver.lat)) continue;
      const distance = distanceM(trip.pickup.lat, trip.pickup.lng, driver.lat, driver.lng);
      choices.push({ id: driver.id, state: driver.state, distance, eta: etaS(distance), excluded: null });
    }
    choices.sort((a, b) => a.eta - b.eta);
    return choices.slice(0, ASSIGN_CHOICES);
  }

  function renderCandidates() {
    const list = $('candidates');
    const note = $('candidates-note');
    if (candidates.loading) {
      list.replaceChildren();
      note.textContent = 'ranking drivers…';
      return;
    }
    const excluded = { declined: 'declined this trip', lapsed: 'let this trip’s offer lapse', driver_cancelled: 'gave this trip back', driver_lost: 'was lost on this trip' };
    list.replaceChildren(...candidates.list.map((candidate) => {
      const who = [candidate.name, candidate.plate, candidate.id].filter(Boolean).join(' · ');
      const button = element('button', { type: 'button', data: { driverId: candidate.id }, title: `Assign to ${candidate.id}` }, [
        element('span', { className: 'who', text: who }),
        element('span', { className: 'how', text: `${metres(candidate.distance)} · ETA ${seconds(candidate.eta)}` }),
        candidate.excluded ? element('span', { className: 'excluded', text: `⚠ ${excluded[candidate.excluded] ?? candidate.excluded}` }) : null,
      ]);
      button.addEventListener('click', () => chooseCandidate(candidate));
      return element('li', {}, [button]);
    }));
    note.textContent = !candidates.list.length
      ? 'No available driver online.'
      : candidates.source === 'local'
        ? 'Ranked here by straight-line ETA (this server does not rank candidates).'
        : `Confirmation asked beyond ${settings.confirmKm} km.`;
  }

  /// Far drivers (beyond the confirmation distance) and drivers who already refused this
  /// trip need a second click, with what is unusual said plainly.
  function chooseCandidate(candidate) {
    const far = isNumber(candidate.distance) && candidate.distance > settings.confirmKm * 1000;
    if (!far && !candidate.excluded) {
      assignTo(candidate.id);
      return;
    }
    const reasons = [];
    if (far) reasons.push(`${metres(candidate.distance)} from the pickup (ETA ${seconds(candidate.eta)})`);
    if (candidate.excluded) reasons.push(`marked “${candidate.excluded}” for this trip`);
    candidates.pending = candidate.id;
    $('assign-confirm-text').textContent = `Driver ${candidate.id} is ${reasons.join(' and ')}. Assign anyway?`;
    $('assign-confirm').hidden = false;
    $('assign-confirm-button').focus();
  }

  $('assign-open').addEventListener('click', openAssign);
  $('assign-confirm-button').addEventListener('click', () => {
    if (candidates.pending) assignTo(candidates.pending);
  });
  $('assign-keep').addEventListener('click', () => {
    candidates.pending = null;
    $('assign-confirm').hidden = true;
  });

  async function assignTo(driverId) {
    const trip = selectedTrip();
    if (!trip) return;
    await act($('assign-confirm-button'), async () => {
      const updated = await api('POST', `/v1/trips/${encodeURIComponent(trip.id)}/assign`, { driver_id: driverId });
      storeTrip(updated);
      closeActionBoxes();
      inspectorNotice(`Assigned to ${driverId}.`);
    }, 'Could not assign the trip');
  }

  $('cancel-trip').addEventListener('click', openCancel);
  $('cancel-keep').addEventListener('click', () => {
    $('cancel-box').hidden = true;
  });
  $('cancel-confirm-button').addEventListener('click', async () => {
    const trip = selectedTrip();
    if (!trip) return;
    const reason = $('cancel-reason').value.trim();
    if (!reason && trip.state === 'in_progress') {
      inspectorError('Say why: a trip under way is cancelled only with a reason.');
      $('cancel-reason').focus();
      return;
    }
    await act($('cancel-confirm-button'), async () => {
      const updated = await api('POST', `/v1/trips/${encodeURIComponent(trip.id)}/cancel`, reason ? { reason } : {});
      storeTrip(updated);
      closeActionBoxes();
      inspectorNotice(`Trip cancelled at ${clock(updated?.updated_at)}.`);
    }, 'Could not cancel the trip');
  });

  $('resolve-open').addEventListener('click', openResolve);
  for (const [id, ending] of [['resolve-complete', 'complete'], ['resolve-cancel', 'cancel']]) {
    $(id).addEventListener('click', async () => {
      const trip = selectedTrip();
      if (!trip) return;
      const reason = $('resolve-reason').value.trim();
      if (!reason) {
        inspectorError('Say why: resolving a trip by hand needs a reason.');
        $('resolve-reason').focus();
        return;
      }
      await act($(id), async () => {
        const updated = await api('POST', `/v1/trips/${encodeURIComponent(trip.id)}/${ending}`, { reason });
        storeTrip(updated);
        model.flags.delete(trip.id);
        closeActionBoxes();
        inspectorNotice(ending === 'complete'
          ? `Trip completed at the estimate (${money(updated?.fare ?? updated?.fare_estimate)}).`
          : `Trip cancelled at ${clock(updated?.updated_at)}.`);
      }, ending === 'complete' ? 'Could not complete the trip' : 'Could not cancel the trip');
    });
  }

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
      dirty.alerts = true;
      renderInspector(true);
      invalidate('map', 'panels');
    }
  }

  // ---------------------------------------------------------------- links

  /// The address of a card: this page with `#trip=<id>` or `#driver=<id>`.
  function cardUrl(kind, id) {
    return `${location.origin}${location.pathname}#${kind}=${encodeURIComponent(id)}`;
  }

  function setHash(kind, id) {
    const hash = kind ? `#${kind}=${encodeURIComponent(id)}` : '';
    if (location.hash === hash) return;
    // pushState: Back returns to the previous card, and no hashchange fires for our own change.
    history.pushState(null, '', hash || `${location.pathname}${location.search}`);
  }

  /// Opens the card the address names. Called after sign-in and on hashchange.
  function followHash() {
    const hash = location.hash;
    if (!hash || hash === '#') return;
    const match = /^#(trip|driver)=([^&]+)$/.exec(hash);
    let id = null;
    try {
      id = match ? decodeURIComponent(match[2]).trim() : null;
    } catch {
      id = null;
    }
    if (!match || !id || id.length > 100) {
      showBanner(`This link does not name a trip or a driver (${hash.slice(0, 60)}): links look like #trip=<id> or #driver=<id>.`, 'error', 10_000);
      $('banner').dataset.link = 'bad';
      return;
    }
    // A good link clears the message a bad one left.
    if ($('banner').dataset.link === 'bad') $('banner').hidden = true;
    if (selected && selected.kind === match[1] && selected.id === id) return;
    select(match[1], id);
  }

  window.addEventListener('hashchange', () => {
    if (session.token) followHash();
  });

  function renderDeepLink() {
    const url = cardUrl(selected.kind, selected.id);
    $('inspector-link').hidden = false;
    if ($('inspector-url').value !== url) $('inspector-url').value = url;
  }

  $('inspector-copy').addEventListener('click', async () => {
    const input = $('inspector-url');
    try {
      await navigator.clipboard.writeText(input.value);
      inspectorNotice('Link copied.');
    } catch {
      // No clipboard permission (or not a secure context): select it for Ctrl+C.
      input.focus();
      input.select();
      inspectorNotice('Link selected: press Ctrl+C to copy it.');
    }
  });

  // ---------------------------------------------------------------- search

  /// Asks the server (ids by prefix, names, plates); without that endpoint, looks through
  /// what this page holds. Typing searches after a pause; Enter opens the first result.
  const search = { timer: null, request: 0, first: null };
  const SEARCH_PAUSE_MS = 250;

  function localSearch(q) {
    const needle = q.toLowerCase();
    const trips = [];
    const passengers = new Map();
    for (const trip of model.trips.values()) {
      if (trip.id.toLowerCase().startsWith(needle)) trips.push(trip);
      if (String(trip.passenger_id).toLowerCase().startsWith(needle)) passengers.set(trip.passenger_id, { id: trip.passenger_id, name: null });
    }
    const drivers = [];
    for (const driver of model.drivers.values()) {
      if (driver.id.toLowerCase().startsWith(needle)) drivers.push({ id: driver.id, name: null, plate: null, online: { state: driver.state } });
    }
    return { trips: trips.slice(0, 20), drivers: drivers.slice(0, 20), passengers: [...passengers.values()].slice(0, 20), local: true };
  }

  async function runSearch(q) {
    const request = ++search.request;
    let result;
    try {
      result = await api('GET', `/v1/ops/search?q=${encodeURIComponent(q)}`);
    } catch (error) {
      if (missingRoute(error)) {
        result = localSearch(q);
      } else {
        if (request === search.request) showSearchMessage(`Search failed: ${describe(error)}`);
        return;
      }
    }
    if (request === search.request) renderSearch(q, result);
  }

  function showSearchMessage(text) {
    const box = $('search-results');
    box.replaceChildren(element('p', { className: 'hint muted', text }));
    box.hidden = false;
    search.first = null;
  }

  function searchItem(id, children, open) {
    const button = element('button', { type: 'button', data: { id } }, children);
    button.addEventListener('click', () => {
      $('search-results').hidden = true;
      open();
    });
    return element('li', {}, [button]);
  }

  function renderSearch(q, result) {
    const box = $('search-results');
    const sections = [];
    const opens = [];
    const trips = result?.trips ?? [];
    const drivers = result?.drivers ?? [];
    const passengers = result?.passengers ?? [];
    if (drivers.length) {
      sections.push(element('h3', { text: 'Drivers' }), element('ul', {}, drivers.map((driver) => {
        const open = () => select('driver', driver.id);
        opens.push(open);
        const state = driver.online?.state ?? 'not online';
        return searchItem(driver.id, [
          element('span', { className: 'mono', text: driver.id }),
          element('span', { text: [driver.name, driver.plate].filter(Boolean).join(' · ') }),
          element('span', { className: 'muted small', text: words(state) }),
        ], open);
      })));
    }
    if (trips.length) {
      sections.push(element('h3', { text: 'Trips' }), element('ul', {}, trips.map((trip) => {
        const open = () => select('trip', trip.id);
        opens.push(open);
        return searchItem(trip.id, [
          element('span', { className: `badge ${trip.state}`, text: words(trip.state) }),
          element('span', { className: 'mono', text: trip.id }),
        ], open);
      })));
    }
    if (passengers.length) {
      sections.push(element('h3', { text: 'Passengers' }), element('ul', {}, passengers.map((passenger) => {
        const open = () => openPassenger(passenger.id);
        opens.push(open);
        return searchItem(passenger.id, [
          element('span', { className: 'mono', text: passenger.id }),
          element('span', { text: passenger.name ?? '' }),
        ], open);
      })));
    }
    if (!sections.length) {
      showSearchMessage(`Nothing matches “${q}”. Search takes a trip, driver or passenger id (or its start), a driver’s name or plate, a passenger’s name.`);
      return;
    }
    if (result.local) sections.push(element('p', { className: 'hint muted small', text: 'Searched only what this page holds (ids): the server has no search.' }));
    search.first = opens[0] ?? null;
    box.replaceChildren(...sections);
    box.hidden = false;
  }

  /// A passenger has no card of their own: open their latest trip this page knows.
  function openPassenger(id) {
    let latest = null;
    for (const trip of model.trips.values()) {
      if (trip.passenger_id === id && (!latest || millis(trip, 'requested_at') > millis(latest, 'requested_at'))) latest = trip;
    }
    if (latest) select('trip', latest.id);
    else showBanner(`Passenger ${id} has no trip in view right now.`, 'warn', 6_000);
  }

  $('search-input').addEventListener('input', () => {
    clearTimeout(search.timer);
    const q = $('search-input').value.trim();
    if (!q) {
      $('search-results').hidden = true;
      return;
    }
    search.timer = setTimeout(() => runSearch(q), SEARCH_PAUSE_MS);
  });
  $('search-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    clearTimeout(search.timer);
    const q = $('search-input').value.trim();
    if (!q) {
      showSearchMessage('Type a trip, driver or passenger id, a driver’s name or plate.');
      return;
    }
    if (q.length > 100) {
      showSearchMessage('That is too long to be an id, a name or a plate (100 characters at most).');
      return;
    }
    await runSearch(q);
    if (search.first) {
      $('search-results').hidden = true;
      search.first();
    }
  });
  document.addEventListener('pointerdown', (event) => {
    if (!event.target.closest('#search-form')) $('search-results').hidden = true;
  });

  // ---------------------------------------------------------------- REST

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /// This server has no such endpoint (an older hail): the caller falls back to what the
  /// page holds. Told apart from "no such trip" by hail's message for unknown routes.
  function missingRoute(error) {
    return error instanceof ApiFailure && error.status === 404 && error.message === 'route not found';
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
    delete banner.dataset.link;
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
    loadBasemap();
    followHash();
  }

  function signOut(message) {
    disconnect();
    session.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    selected = null;
    model.drivers = new Map();
    model.trips = new Map();
    model.offers = [];
    model.offersById.clear();
    model.flags = new Map();
    model.figures = null;
    alerts.list = [];
    alerts.byTrip = new Map();
    document.title = TITLE;
    $('inspector').hidden = true;
    $('layout').classList.remove('inspecting');
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
    $('alert-settings-message').textContent = '';
    showSettings();
    renderTileStatus();
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
    $('settings-message').textContent = text ? 'Tile layer set: its status is on the left.' : 'Tile layer off.';
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
  renderLegend();

  window.hailConsole = Object.freeze({
    alerts: () => alerts.list.map(({ tripId, kind, label }) => ({ tripId, kind, label })),
    basemap: () => basemap.state,
    edgeMarkers: () => [...edgeMarkers.values()].reduce((sum, bin) => sum + bin.count, 0),
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
