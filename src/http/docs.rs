//! The OpenAPI document (kept as `openapi.json` in the repository) and a page that renders it.
//!
//! The page loads nothing from anywhere else (the contract: `/docs` works on a host with no
//! internet): its script and style are inline, and its Content-Security-Policy admits exactly
//! those two by their SHA-256 and lets the script fetch `/openapi.json` from this server only.
//! The script builds the page with `textContent`, never `innerHTML`, so nothing in the document
//! is ever read as markup.

use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// The page's style.
const DOCS_STYLE: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 62rem; padding: 1rem 1.5rem 4rem; color: #1b1f24; }
h1 { margin-bottom: .2rem; } .version { color: #57606a; }
h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; text-transform: capitalize; }
details { border: 1px solid #d0d7de; border-radius: 6px; margin: .4rem 0; }
summary { cursor: pointer; padding: .45rem .7rem; font-family: ui-monospace, monospace; }
.method { display: inline-block; min-width: 4.2rem; font-weight: 700; }
.get { color: #0969da; } .post { color: #1a7f37; } .note { color: #57606a; font-family: system-ui, sans-serif; }
.body { padding: .2rem 1rem 1rem; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; border-radius: 6px; }
table { border-collapse: collapse; } td, th { border: 1px solid #d0d7de; padding: .2rem .5rem; text-align: left; vertical-align: top; }
"#;

/// The page's script: fetches the document and renders every operation.
const DOCS_SCRIPT: &str = r##"
"use strict";
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const main = document.getElementById("docs");
function resolve(doc, node, depth) {
  if (!node || typeof node !== "object" || depth > 12) return node;
  if (typeof node.$ref === "string" && node.$ref.startsWith("#/")) {
    const target = node.$ref.slice(2).split("/").reduce((o, k) => (o ? o[k] : undefined), doc);
    return resolve(doc, target, depth + 1);
  }
  if (Array.isArray(node)) return node.map((n) => resolve(doc, n, depth + 1));
  const out = {};
  for (const [k, v] of Object.entries(node)) out[k] = resolve(doc, v, depth + 1);
  return out;
}
function schemaBlock(doc, title, schema) {
  const wrap = el("div");
  wrap.append(el("h4", title));
  wrap.append(el("pre", JSON.stringify(resolve(doc, schema, 0), null, 2)));
  return wrap;
}
function operation(doc, path, method, op) {
  const d = el("details");
  const s = el("summary");
  s.append(el("span", method.toUpperCase(), "method " + method), el("span", path));
  if (op.summary) s.append(el("span", " \u2014 " + op.summary, "note"));
  d.append(s);
  const body = el("div", undefined, "body");
  if (op.description) body.append(el("p", op.description));
  const open = Array.isArray(op.security) && op.security.length === 0;
  body.append(el("p", open ? "No token needed." : "Needs Authorization: Token <token>.", "note"));
  const params = (op.parameters || []).map((p) => resolve(doc, p, 0));
  if (params.length) {
    const t = el("table");
    const head = el("tr"); ["parameter", "in", "required", "description"].forEach((h) => head.append(el("th", h)));
    t.append(head);
    for (const p of params) {
      const r = el("tr");
      [p.name, p.in, p.required ? "yes" : "no", p.description || ""].forEach((v) => r.append(el("td", String(v))));
      t.append(r);
    }
    body.append(t);
  }
  const req = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (req) body.append(schemaBlock(doc, "Request body", req.schema));
  const statuses = Object.entries(op.responses || {});
  if (statuses.length) {
    body.append(el("h4", "Responses"));
    const list = el("ul");
    for (const [status, r] of statuses) list.append(el("li", status + ": " + (resolve(doc, r, 0).description || "")));
    body.append(list);
  }
  d.append(body);
  return d;
}
fetch("/openapi.json").then((r) => r.json()).then((doc) => {
  main.textContent = "";
  main.append(el("h1", doc.info.title), el("p", "version " + doc.info.version, "version"), el("p", doc.info.description || ""));
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(doc, path, method, op));
    }
  }
  for (const [tag, ops] of byTag) { main.append(el("h2", tag)); ops.forEach((o) => main.append(o)); }
  main.setAttribute("data-rendered", String(byTag.size));
}).catch((e) => { main.textContent = "Could not load /openapi.json: " + e; });
"##;

/// The page, with its style and script inline.
pub fn docs_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>wallet API</title>\n<style>{DOCS_STYLE}</style>\n</head>\n<body>\n\
             <main id=\"docs\"><p>Loading the API documentation from \
             <a href=\"/openapi.json\">/openapi.json</a>&hellip;</p></main>\n\
             <noscript>This page needs JavaScript. The document itself is at \
             <a href=\"/openapi.json\">/openapi.json</a>: open it in any OpenAPI viewer, or \
             import it into Postman.</noscript>\n<script>{DOCS_SCRIPT}</script>\n</body>\n</html>\n"
        )
    })
}

/// The page's Content-Security-Policy: nothing but its own inline script and style (by hash)
/// and fetches from this server.
pub fn docs_csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |text: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
        };
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(DOCS_SCRIPT),
            hash(DOCS_STYLE)
        )
    })
}
