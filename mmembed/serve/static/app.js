// mmembed search page: plain DOM, no build step. All server text is inserted with textContent (never as HTML).
"use strict";

const $ = (selector) => document.querySelector(selector);
const form = $("#search-form");
const queryInput = $("#query");
const imageInput = $("#image");
const results = $("#results");
const statusLine = $("#status");
const detail = $("#detail");

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

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
  }
}

async function search(body, description) {
  setStatus(`searching ${description}…`);
  results.replaceChildren();
  const started = performance.now();
  let response;
  try {
    response = await fetch("/search", body);
  } catch (err) {
    setStatus(`the server did not answer (${err})`, true);
    return;
  }
  if (!response.ok) {
    setStatus(`${response.status}: ${await errorText(response)}`, true);
    return;
  }
  const data = await response.json();
  render(data);
  const total = Math.round(performance.now() - started);
  const what = data.target === "image" ? "images" : "captions";
  setStatus(`${data.results.length} ${what} for ${description} (${data.took_ms.toFixed(1)} ms on the server, ${total} ms total)`);
}

function render(data) {
  results.classList.toggle("text-results", data.target === "text");
  const cards = data.results.map((hit) => {
    const card = el("button", "result");
    card.type = "button";
    card.dataset.key = hit.key;
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
    card.append(box);
    if (hasText(hit.caption)) card.append(el("div", "caption", hit.caption)); // an image-only sample has none
    card.append(el("div", "score", `#${hit.rank} · score ${hit.score.toFixed(4)}`));
    card.addEventListener("click", () => openDetail(hit));
    return card;
  });
  results.replaceChildren(...cards);
}

async function openDetail(hit) {
  $("#detail-caption").textContent = hasText(hit.caption) ? hit.caption : hit.key;
  const image = $("#detail-image");
  image.removeAttribute("src");
  $("#detail-fields").replaceChildren();
  $("#detail-metadata").textContent = "loading…";
  detail.showModal();
  const response = await fetch(hit.item);
  if (!response.ok) {
    $("#detail-metadata").textContent = `${response.status}: ${await errorText(response)}`;
    return;
  }
  const item = await response.json();
  const large = safeLink(item.image);
  if (large) {
    image.alt = hasText(item.caption) ? item.caption : item.key;
    image.src = large;
  }
  const fields = [
    ["score", hit.score.toFixed(4)],
    ["rank", hit.rank],
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

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = queryInput.value.trim();
  if (!query) {
    setStatus("type a query, or choose an image", true);
    return;
  }
  const body = JSON.stringify({ query, k: Number($("#k").value), target: $("#target").value });
  search({ method: "POST", headers: { "Content-Type": "application/json" }, body }, `“${query}”`);
});

imageInput.addEventListener("change", () => {
  const file = imageInput.files[0];
  if (!file) return;
  const body = new FormData();
  body.append("image", file);
  body.append("k", $("#k").value);
  body.append("target", $("#target").value);
  imageInput.value = "";
  search({ method: "POST", body }, `image ${file.name}`);
});

detail.addEventListener("click", (event) => {
  if (event.target === detail) detail.close(); // a click on the backdrop closes
});

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
