//! `GET /` (and `GET /views`, the same page opened at its views list): the built-in dashboard, three files compiled into the binary (no CDN, no font or
//! script from anywhere else, no Node at run time). The page reads the API with the token the user
//! types in, so it sees exactly what that token may see (scopes and row filters), and reads every
//! panel of one refresh from one snapshot (`meta.snapshot`).
//!
//! The files themselves hold no data and are served to anyone; a strict Content-Security-Policy
//! keeps the page to this origin.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only this origin: scripts, styles and API calls; images may be inline (`data:`).
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                      script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
