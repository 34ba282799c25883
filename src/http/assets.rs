//! The dashboards, embedded at build time (see `build.rs`).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        "wav" => "audio/wav",
        _ => "text/plain; charset=utf-8",
    }
}

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|(p, _)| *p == path) {
        Some((_, bytes)) => (
            [(header::CONTENT_TYPE, mime(path)), (header::CACHE_CONTROL, "no-cache")],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `/`: the supervisor wallboard.
pub async fn index() -> Response {
    serve("index.html")
}

/// `/me`: the agent page.
pub async fn me() -> Response {
    serve("me.html")
}

/// `/assets/...`.
pub async fn asset(Path(path): Path<String>) -> Response {
    if path.split('/').any(|seg| seg == "..") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    serve(&format!("assets/{path}"))
}
