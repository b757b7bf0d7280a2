// cairn console: reads /api/v1 with the session's token and draws the
// namespace's volumes, snapshots, lineage, space and audit log.
"use strict";

const API = "/api/v1";
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "cairn-token";

// A token passed as `#token=...` (handy for links and tests) moves into
// session storage and out of the address bar.
(function tokenFromFragment() {
  const m = location.hash.match(/^#token=(.+)$/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
})();

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(API + path, { headers });
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    const e = new Error(message);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(t) {
  return new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Runs `f` over `items`, `limit` at a time.
async function pool(items, limit, f) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function renderSpace(u) {
  const dl = document.getElementById("space-figures");
  dl.replaceChildren();
  const rows = [
    ["Volumes", u.volume_count, "volume-count"],
    ["Snapshots", u.snapshot_count, "snapshot-count"],
    ["Logical (as full copies)", bytes(u.logical_bytes), "logical"],
    ["Stored", bytes(u.stored_bytes), "stored"],
    ["Saved by sharing", bytes(u.saved_bytes), "saved"],
    ["Dedup ratio", u.dedup_ratio.toFixed(2) + "×", "dedup-ratio"],
  ];
  for (const [label, value, id] of rows) {
    dl.append(el("dt", {}, label), el("dd", { id: "space-" + id, "data-bytes": String(u[id.replace("-", "_") + "_bytes"] ?? "") }, value));
  }
  const gc = document.getElementById("gc-report");
  if (u.last_gc) {
    const g = u.last_gc;
    gc.replaceChildren(
      (g.dry_run ? "Dry run " : "Ran ") + "at " + new Date(g.started_unix * 1000).toISOString() +
      ": scanned " + g.scanned_objects + " objects, reclaimed " + g.reclaimed_objects +
      " (" + bytes(g.reclaimed_bytes) + "), kept " + g.skipped_young_objects +
      " young ones, " + g.duration_ms + " ms.");
    gc.setAttribute("data-reclaimed-objects", String(g.reclaimed_objects));
  }
}

function renderVolumes(volumes) {
  const body = document.querySelector("#volumes tbody");
  body.replaceChildren();
  for (const v of volumes) {
    const h = v.hydration;
    const hydration = h ? (h.fraction * 100).toFixed(1) + "%" + (h.warming ? " (warming)" : "") : "–";
    const from = v.from_snapshot ? (v.cloned_from ? "clone of " : "fork of ") + v.from_snapshot : "";
    const labels = Object.entries(v.labels || {}).map(([k, x]) => k + "=" + x).join(", ");
    body.append(el("tr", { "data-volume-row": v.name },
      el("td", {}, v.name),
      el("td", { class: "num" }, bytes(v.size)),
      el("td", { class: "state-" + v.state, title: v.damage || "" },
        v.state + (v.base_pending ? " (base pending)" : "") + (v.damage ? ": " + v.damage : "")),
      el("td", { class: "num", "data-stored-bytes": String(v.stored_bytes) }, bytes(v.stored_bytes)),
      el("td", { class: "num", "data-unique-bytes": String(v.unique_bytes) }, bytes(v.unique_bytes)),
      el("td", { class: "num" }, hydration),
      el("td", {}, from),
      el("td", {}, labels)));
  }
}

function renderSnapshots(snapshots) {
  const box = document.getElementById("snapshots");
  box.replaceChildren();
  const byVolume = new Map();
  for (const s of snapshots) {
    if (!byVolume.has(s.volume)) byVolume.set(s.volume, []);
    byVolume.get(s.volume).push(s);
  }
  if (byVolume.size === 0) box.append(el("p", {}, "No snapshots."));
  for (const [volume, list] of [...byVolume].sort()) {
    const rows = list.map((s) => el("tr", { "data-snapshot-row": s.volume + "@" + s.tag },
      el("td", {}, s.tag), el("td", { class: "num" }, bytes(s.size)), el("td", {}, when(s.created_at)),
      el("td", {}, s.sealed ? "yes" : "sealing"),
      el("td", {}, Object.entries(s.labels || {}).map(([k, x]) => k + "=" + x).join(", "))));
    box.append(el("h3", {}, volume), el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Tag"), el("th", {}, "Size"), el("th", {}, "Created"),
        el("th", {}, "Sealed"), el("th", {}, "Labels"))),
      el("tbody", {}, ...rows)));
  }
}

function renderEvents(events) {
  const body = document.querySelector("#events tbody");
  body.replaceChildren();
  for (const e of [...events].reverse()) {
    body.append(el("tr", { "data-event": e.kind, "data-seq": String(e.seq) },
      el("td", { class: "num" }, e.seq), el("td", {}, when(e.time)), el("td", {}, e.kind),
      el("td", {}, e.volume || ""), el("td", {}, e.tag || ""), el("td", {}, e.actor),
      el("td", { class: "detail" }, JSON.stringify(e.detail))));
  }
}

// The lineage forest: volume -> its snapshots -> the volumes forked or
// cloned from each. A snapshot whose volume is gone hangs under a dashed
// "deleted" node; a volume whose source snapshot is gone is a root.
function lineageForest(volumes, snapshots) {
  const snapKey = (s) => s.volume + "@" + s.tag;
  const nodes = new Map();
  for (const v of volumes) nodes.set("v:" + v.name, { kind: "volume", name: v.name, info: v, children: [] });
  for (const s of snapshots) {
    if (!nodes.has("v:" + s.volume)) {
      nodes.set("v:" + s.volume, { kind: "volume", name: s.volume, deleted: true, children: [] });
    }
    nodes.set("s:" + snapKey(s), { kind: "snapshot", name: snapKey(s), info: s, children: [] });
  }
  const roots = [];
  const sorted = [...snapshots].sort((a, b) => a.created_at.localeCompare(b.created_at));
  for (const s of sorted) nodes.get("v:" + s.volume).children.push(nodes.get("s:" + snapKey(s)));
  for (const [key, n] of nodes) {
    if (n.kind !== "volume") continue;
    const from = n.info && n.info.from_snapshot;
    const parent = from && nodes.get("s:" + from);
    if (parent) {
      n.edge = n.info.cloned_from ? "clone" : "fork";
      parent.children.push(n);
    } else {
      roots.push(n);
    }
  }
  roots.sort((a, b) => a.name.localeCompare(b.name));
  return roots;
}

function renderLineage(volumes, snapshots) {
  const roots = lineageForest(volumes, snapshots);
  const W = 190, H = 38, COL = 230, ROW = 48, PAD = 10;
  let row = 0, depthMax = 0;
  const placed = [];
  (function place(list, depth) {
    for (const n of list) {
      depthMax = Math.max(depthMax, depth);
      const first = row;
      if (n.children.length) place(n.children, depth + 1); else row++;
      const last = Math.max(first, row - 1);
      n.x = PAD + depth * COL;
      n.y = PAD + ((first + last) / 2) * ROW;
      placed.push(n);
    }
  })(roots, 0);
  const box = document.getElementById("lineage");
  if (placed.length === 0) {
    box.replaceChildren(el("p", {}, "No volumes yet."));
    return;
  }
  const width = PAD * 2 + depthMax * COL + W, height = PAD * 2 + Math.max(row, 1) * ROW;
  const root = svg("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "lineage of volumes and snapshots" });
  for (const n of placed) {
    for (const c of n.children) {
      const x1 = n.x + W, y1 = n.y + H / 2, x2 = c.x, y2 = c.y + H / 2, mx = (x1 + x2) / 2;
      root.append(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: c.edge || "own",
        "data-from": n.name, "data-to": c.name }));
    }
  }
  for (const n of placed) {
    const attrs = { class: "node " + n.kind + (n.deleted ? " deleted" : ""), transform: `translate(${n.x},${n.y})` };
    if (n.kind === "volume" && !n.deleted) attrs["data-volume"] = n.name;
    if (n.kind === "volume" && n.deleted) attrs["data-deleted-volume"] = n.name;
    if (n.kind === "snapshot") attrs["data-snapshot"] = n.name;
    if (n.edge) attrs["data-edge"] = n.edge;
    const g = svg("g", attrs);
    g.append(svg("rect", { width: W, height: H, rx: n.kind === "snapshot" ? 12 : 4 }));
    const title = n.kind === "snapshot" ? "@" + n.name.split("@")[1] : n.name;
    g.append(svg("text", { x: 8, y: 15 }, title.length > 28 ? title.slice(0, 27) + "…" : title));
    let sub;
    if (n.deleted) sub = "deleted volume";
    else if (n.kind === "volume") sub = (n.edge ? n.edge + " · " : "") + bytes(n.info.size) + " · " + bytes(n.info.stored_bytes) + " stored";
    else sub = bytes(n.info.size) + (n.info.sealed ? "" : " · sealing");
    g.append(svg("text", { x: 8, y: 30, class: "sub" }, sub));
    g.append(svg("title", {}, n.name));
    root.append(g);
  }
  box.replaceChildren(root);
}

async function load() {
  const status = document.getElementById("status");
  document.body.removeAttribute("data-loaded");
  status.className = "";
  status.textContent = "Loading…";
  try {
    const [list, snaps, usage, events] = await Promise.all([
      api("/volumes"), api("/snapshots"), api("/usage"), api("/events?tail=50"),
    ]);
    // Hydration is part of each volume's own view.
    const volumes = await pool(list.volumes, 8, (v) =>
      api("/volumes/" + encodeURIComponent(v.name)).catch(() => v));
    renderSpace(usage);
    renderVolumes(volumes);
    renderSnapshots(snaps.snapshots);
    renderLineage(volumes, snaps.snapshots);
    renderEvents(events.events);
    status.textContent = `Namespace ${usage.namespace}: ${volumes.length} volumes, ${snaps.snapshots.length} snapshots; updated ${new Date().toLocaleTimeString()}.`;
    document.body.setAttribute("data-loaded", "ok");
  } catch (e) {
    status.className = "error";
    status.textContent = e.status === 401 ? "The server wants a token: enter one above." : "Could not load: " + e.message;
    document.body.setAttribute("data-loaded", "error");
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  load();
});
document.getElementById("refresh").addEventListener("click", load);
load();
