//! The web console: one page of plain HTML, CSS and JavaScript, built into the binary with
//! `include_str!` — no build step, no CDN, nothing fetched from elsewhere (it works offline).
//! It holds no data: everything it shows comes from the API, with the token the user gives.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const CONSOLE_JS: &str = include_str!("../console/console.js");

/// The console's files: path, content type, content.
const FILES: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/console.css", "text/css; charset=utf-8", CONSOLE_CSS),
    ("/console.js", "text/javascript; charset=utf-8", CONSOLE_JS),
];

/// Everything the page may load or call: this server only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// True for the console's static files (readable without the token).
pub(crate) fn is_static(path: &str) -> bool {
    FILES.iter().any(|(p, _, _)| *p == path)
}

/// Serves the file at `path`, if it is one of the console's.
pub(crate) fn file(path: &str) -> Option<Response> {
    let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(response)
}
