// mmembed search page: plain DOM, no build step. All server text is inserted with textContent (never as HTML).
//
// Every query lives in the page's URL (?q=..., ?like=SHARD/KEY, ?seed=... for a random sample, plus mode, where,
// target, k), so a link reproduces it; each new query is a history entry holding its results, so Back and
// Forward bring back the query and what it found. An uploaded image cannot travel in a URL: its entry says
// ?image=NAME, and a page opened at such a link asks for the image again.
"use strict";

const $ = (selector) => document.querySelector(selector);
const form = $("#search-form");
const queryInput = $("#query");
const imageInput = $("#image");
const whereInput = $("#where");
const results = $("#results");
const statusLine = $("#status");
const detail = $("#detail");
const queryPanel = $("#query-panel");
const queryImage = $("#query-image");

const DEFAULTS = { k: "24", target: "image", mode: "vector", where: "" };
let requestId = 0; // the newest request; answers to older ones are dropped
let shownQuery = null; // the query on screen (its results, or its error)
let heldFile = null; // the uploaded image of the query on screen, to search it again with other settings

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

// A caption worth showing: image-only samples have caption null, which must not render as "null".
function hasText(value) {
  return typeof value === "string" && value.trim() !== "";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// Only links the server made for its own thumbnails are used as image sources.
function safeLink(link) {
  return typeof link === "string" && link.startsWith("/thumbnails/") ? link : null;
}

// The server's path of a sample under a route (shard names hold no "/", keys may).
function samplePath(route, shard, key) {
  return `/${route}/${encodeURIComponent(shard)}/${key.split("/").map(encodeURIComponent).join("/")}`;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
  }
}

// --- queries and URLs ------------------------------------------------------------------------------------
// A query: {kind: "text" | "like" | "image" | "browse", q, like: {shard, key}, image (a file name), seed,
// k, target, mode, where}.

function settings() {
  return { k: $("#k").value, target: $("#target").value, mode: $("#mode").value, where: whereInput.value.trim() };
}

function showSettings(query) {
  const k = $("#k");
  if (![...k.options].some((option) => option.value === query.k)) k.append(el("option", null, query.k));
  k.value = query.k;
  $("#target").value = query.target;
  $("#mode").value = query.mode;
  whereInput.value = query.where;
  queryInput.value = query.kind === "text" ? query.q : "";
}

function toURL(query) {
  const params = new URLSearchParams();
  if (query.kind === "text") params.set("q", query.q);
  if (query.kind === "like") params.set("like", `${query.like.shard}/${query.like.key}`);
  if (query.kind === "image") params.set("image", query.image);
  if (query.kind === "browse" && query.seed !== "0") params.set("seed", query.seed);
  if (query.kind === "text" && query.mode !== DEFAULTS.mode) params.set("mode", query.mode);
  if (query.where) params.set("where", query.where);
  if (query.kind !== "browse" && query.target !== DEFAULTS.target) params.set("target", query.target);
  if (query.k !== DEFAULTS.k) params.set("k", query.k);
  const search = params.toString();
  return search ? `?${search}` : location.pathname;
}

function fromURL(search) {
  const params = new URLSearchParams(search);
  const base = {};
  for (const [name, fallback] of Object.entries(DEFAULTS)) base[name] = params.get(name) ?? fallback;
  if (params.has("q")) return { ...base, kind: "text", q: params.get("q") };
  const like = params.get("like") ?? "";
  const slash = like.indexOf("/");
  if (slash > 0) return { ...base, kind: "like", like: { shard: like.slice(0, slash), key: like.slice(slash + 1) } };
  if (params.has("image")) return { ...base, kind: "image", image: params.get("image") };
  return { ...base, kind: "browse", seed: params.get("seed") ?? "0" };
}

function describe(query) {
  if (query.kind === "text") return `“${query.q}”`;
  if (query.kind === "like") return `sample ${query.like.key}`;
  if (query.kind === "image") return `image ${query.image}`;
  return "a random sample";
}

// The fetch for a query: [url, options], or null for an uploaded image whose file is not at hand.
function request(query, file) {
  const common = { k: Number(query.k), target: query.target };
  if (query.where) common.where = query.where;
  const json = (body) => ["/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }];
  if (query.kind === "text") {
    const mode = query.mode !== DEFAULTS.mode ? { mode: query.mode } : {};
    return json({ query: query.q, ...common, ...mode });
  }
  if (query.kind === "like") return json({ like: query.like, ...common });
  if (query.kind === "browse") {
    const params = new URLSearchParams({ n: query.k, seed: query.seed });
    if (query.where) params.set("where", query.where);
    return [`/browse?${params}`, {}];
  }
  if (!file) return null;
  const body = new FormData();
  body.append("image", file);
  for (const [name, value] of Object.entries(common)) body.append(name, String(value));
  return ["/search", { method: "POST", body }];
}

// --- running a query ---------------------------------------------------------------------------------------

// Run `query`: show it, record it in the history ("push" a new entry, "replace" this one, or "none" when the
// history moved already), fetch, render, and keep the results in the entry for Back and Forward.
async function run(query, { history: how = "push", file = null, preview = null } = {}) {
  const id = ++requestId;
  detail.close();
  showQuery(query, preview);
  shownQuery = query;
  heldFile = file;
  const state = { query, preview };
  if (how === "push") history.pushState(state, "", toURL(query));
  if (how === "replace") history.replaceState(state, "", toURL(query));
  const fetchArgs = request(query, file);
  results.replaceChildren();
  if (!fetchArgs) {
    setStatus(`this page searched with an uploaded image (${query.image}), which a link cannot carry: choose, drop or paste the image to search with it again`, true);
    return;
  }
  setStatus(`searching ${describe(query)}…`);
  const started = performance.now();
  let response;
  try {
    response = await fetch(...fetchArgs);
  } catch (err) {
    if (id === requestId) setStatus(`the server did not answer (${err})`, true);
    return;
  }
  const data = response.ok ? await response.json() : null;
  const problem = response.ok ? null : `${response.status}: ${await errorText(response)}`;
  if (id !== requestId) return; // a newer query (or a step in the history) took over
  if (problem) {
    setStatus(problem, true);
    return;
  }
  const status = summary(query, data, Math.round(performance.now() - started));
  show(query, data, status);
  history.replaceState({ ...state, data, status }, "");
}

function summary(query, data, totalMs) {
  const timing = `${data.took_ms.toFixed(1)} ms on the server, ${totalMs} ms total`;
  if (query.kind === "browse") {
    const matching = query.where ? ` matching ${query.where}` : "";
    const of = `${data.count.toLocaleString()} samples${matching}`;
    return `a random sample of ${data.results.length} of the ${of} (seed ${data.seed}; ${timing}): type a query, or choose, drop or paste an image`;
  }
  const what = data.target === "image" ? "images" : "captions";
  const filtered = query.where ? `, filtered by ${query.where}` : "";
  const relation = query.kind === "like" ? "like" : "for";
  return `${data.results.length} ${what} ${relation} ${describe(query)}${filtered} (${timing})`;
}

function show(query, data, status) {
  shownQuery = query;
  render(data, query.kind === "browse");
  setStatus(status);
}

// The query image: the uploaded file's preview, or the sample a "more like this" started from.
function showQuery(query, preview) {
  showSettings(query);
  const name = $("#query-image-name");
  queryImage.removeAttribute("src");
  queryImage.hidden = true;
  queryPanel.hidden = query.kind !== "image" && query.kind !== "like";
  if (query.kind === "image") {
    name.textContent = `query: ${query.image}`;
    if (preview) queryImage.src = preview;
    queryImage.alt = `query image ${query.image}`;
  }
  if (query.kind === "like") {
    name.textContent = `more like ${query.like.key} (shard ${query.like.shard})`;
    queryImage.src = samplePath("thumbnails", query.like.shard, query.like.key);
    queryImage.alt = `query sample ${query.like.key}`;
  }
  queryImage.hidden = !queryImage.getAttribute("src");
}

queryImage.addEventListener("error", () => {
  queryImage.hidden = true; // an expired preview, or a sample without a thumbnail: the name says what it was
});

function searchFile(file) {
  if (!file.type.startsWith("image/")) {
    setStatus(`${file.name || "that"} is not an image (${file.type || "unknown type"}); drop or paste an image file`, true);
    return;
  }
  const name = hasText(file.name) ? file.name : "pasted image";
  run({ ...settings(), kind: "image", image: name }, { file, preview: URL.createObjectURL(file) });
}

function searchLike(hit) {
  run({ ...settings(), kind: "like", like: { shard: hit.shard, key: hit.key } });
}

// --- results -----------------------------------------------------------------------------------------------

function render(data, browsing) {
  results.classList.toggle("text-results", data.target === "text");
  results.replaceChildren(...data.results.map((hit) => card(hit, browsing)));
}

function card(hit, browsing) {
  const card = el("article", "result");
  card.dataset.key = hit.key;
  card.dataset.shard = hit.shard;
  const open = el("button", "open");
  open.type = "button";
  open.title = "details";
  const box = el("div", "thumb-box");
  const link = safeLink(hit.thumbnail);
  if (link) {
    const img = el("img", "thumb");
    img.loading = "lazy";
    img.alt = hasText(hit.caption) ? hit.caption : hit.key;
    img.src = link;
    img.addEventListener("error", () => box.replaceChildren(el("span", "none", "no thumbnail")));
    box.append(img);
  } else {
    box.append(el("span", "none", "no thumbnail (start the server with --shards)"));
  }
  open.append(box);
  if (hasText(hit.caption)) open.append(el("div", "caption", hit.caption)); // an image-only sample has none
  open.append(el("div", "score", scoreLine(hit, browsing)));
  open.addEventListener("click", () => openDetail(hit));
  const like = el("button", "like", "More like this");
  like.type = "button";
  like.setAttribute("aria-label", `more like ${hasText(hit.caption) ? hit.caption : hit.key}`);
  like.disabled = !link; // its image is read from its shard, like its thumbnail
  if (!link) like.title = "needs the server to know the shards (--shards)";
  like.addEventListener("click", () => searchLike(hit));
  card.append(open, like);
  return card;
}

function scoreLine(hit, browsing) {
  if (!browsing) return `#${hit.rank} · score ${hit.score.toFixed(4)}`;
  return hit.width && hit.height ? `${hit.width} × ${hit.height}` : hit.key;
}

let detailHit = null;

async function openDetail(hit) {
  detailHit = hit;
  $("#detail-caption").textContent = hasText(hit.caption) ? hit.caption : hit.key;
  const image = $("#detail-image");
  image.removeAttribute("src");
  $("#detail-like").disabled = !safeLink(hit.thumbnail);
  $("#detail-fields").replaceChildren();
  $("#detail-metadata").textContent = "loading…";
  detail.showModal();
  const response = await fetch(hit.item);
  if (!response.ok) {
    $("#detail-metadata").textContent = `${response.status}: ${await errorText(response)}`;
    return;
  }
  const item = await response.json();
  if (detailHit !== hit) return; // another sample was opened meanwhile
  const large = safeLink(item.image);
  if (large) {
    image.alt = hasText(item.caption) ? item.caption : item.key;
    image.src = large;
  }
  const fields = [
    ["score", typeof hit.score === "number" ? hit.score.toFixed(4) : null],
    ["rank", typeof hit.score === "number" ? hit.rank : null],
    ["key", item.key],
    ["shard", item.shard],
    ["offset", item.offset],
    ["size", item.width && item.height ? `${item.width} × ${item.height}` : null],
    ["url", item.url],
    ["sha256", item.sha256],
  ];
  const rows = [];
  for (const [name, value] of fields) {
    if (value === null || value === undefined) continue;
    rows.push(el("dt", null, name), el("dd", null, String(value)));
  }
  $("#detail-fields").replaceChildren(...rows);
  $("#detail-metadata").textContent = item.metadata === null ? "(none)" : JSON.stringify(item.metadata, null, 2);
}

$("#detail-like").addEventListener("click", () => {
  if (detailHit) searchLike(detailHit);
});

detail.addEventListener("click", (event) => {
  if (event.target === detail) detail.close(); // a click on the backdrop closes
});

// --- controls ----------------------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = queryInput.value.trim();
  if (q) {
    run({ ...settings(), kind: "text", q });
  } else if (shownQuery && shownQuery.kind === "like") {
    run({ ...shownQuery, ...settings() }); // the same sample, with the settings changed
  } else if (shownQuery && shownQuery.kind === "image" && heldFile) {
    run({ ...shownQuery, ...settings() }, { file: heldFile, preview: queryImage.getAttribute("src") });
  } else {
    const seed = shownQuery && shownQuery.kind === "browse" ? shownQuery.seed : "0";
    run({ ...settings(), kind: "browse", seed }); // no query: a sample of what the filter keeps
  }
});

imageInput.addEventListener("change", () => {
  const file = imageInput.files[0];
  imageInput.value = "";
  if (file) searchFile(file);
});

$("#shuffle").addEventListener("click", () => {
  const seed = String(Math.floor(Math.random() * 1e9) + 1);
  run({ ...settings(), kind: "browse", seed });
});

$("#home").addEventListener("click", (event) => {
  event.preventDefault(); // the collection's first sample, without reloading the page
  run({ ...DEFAULTS, k: $("#k").value, kind: "browse", seed: "0" });
});

// The first image in a drop or a paste: its files, else a file among its items.
function imageIn(transfer) {
  if (!transfer) return null;
  const files = [...(transfer.files || [])];
  for (const item of transfer.items || []) {
    if (item.kind === "file") files.push(item.getAsFile());
  }
  return files.find((file) => file && file.type.startsWith("image/")) || files.find(Boolean) || null;
}

function carriesFiles(event) {
  return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}

let dragDepth = 0; // dragenter/dragleave fire for every element crossed
document.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) document.body.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault(); // allows the drop
});
document.addEventListener("drop", (event) => {
  dragDepth = 0;
  document.body.classList.remove("dragging");
  const file = imageIn(event.dataTransfer);
  if (!file) return;
  event.preventDefault(); // the browser would otherwise open the file
  searchFile(file);
});

document.addEventListener("paste", (event) => {
  const file = imageIn(event.clipboardData);
  if (!file || !file.type.startsWith("image/")) return; // text pastes into the fields as usual
  event.preventDefault();
  searchFile(file);
});

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea, button, dialog");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    queryInput.focus();
  }
});

window.addEventListener("popstate", (event) => {
  const state = event.state;
  if (state && state.data) {
    requestId += 1; // an answer still on its way belongs to another entry
    detail.close();
    showQuery(state.query, state.preview);
    heldFile = null;
    show(state.query, state.data, state.status);
  } else {
    run(state ? state.query : fromURL(location.search), { history: "none", preview: state ? state.preview : null });
  }
});

// --- start ---------------------------------------------------------------------------------------------------

fetch("/healthz")
  .then((r) => (r.ok ? r.json() : Promise.reject(r.statusText)))
  .then((h) => {
    $("#index-info").textContent = `${h.count.toLocaleString()} samples · ${h.model} · ${h.index_key}`;
    if (h.text_rows === 0) {
      // embedded without captions: there is nothing to search in the text index
      const captions = $("#target option[value='text']");
      captions.disabled = true;
      captions.textContent = "captions (none in this index)";
    }
  })
  .catch((err) => {
    $("#index-info").textContent = `index unavailable (${err})`;
  });

(() => {
  const query = fromURL(location.search);
  const kept = history.state;
  if (query.kind === "image" && kept && kept.data && kept.query.image === query.image) {
    show(kept.query, kept.data, `${kept.status} (the image itself is gone since the page was reloaded)`);
    showQuery(kept.query, null); // its preview expired with the page that made it
    return;
  }
  run(query, { history: "replace" });
})();
