//! The OpenAPI document (kept as `openapi.json` in the repository) and a page that renders it.

pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Swagger UI from a CDN: the user's browser has the internet even when the server does not.
pub const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wallet API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<noscript>This page needs JavaScript. The raw document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"><p id="fallback">Loading the API documentation&hellip; If it does not appear, your browser
could not load Swagger UI from unpkg.com (offline, or blocked). The document itself is served by this
server at <a href="/openapi.json">/openapi.json</a>: open it in any OpenAPI viewer, or import it into
Postman.</p></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js" crossorigin></script>
<script>
if (window.SwaggerUIBundle) {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
}
</script>
</body>
</html>
"##;
