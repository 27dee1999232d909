//! The operator console: a page, its script and its style, embedded in the binary so it
//! needs no build step and loads nothing from elsewhere (`console/console.js` explains how
//! it works). The policy keeps it that way: scripts, styles and connections only from
//! this server; images from anywhere, for the optional map tiles an operator may set.

use axum::{
    http::{Uri, header},
    response::{IntoResponse, Response},
};

pub async fn console(uri: Uri) -> Response {
    let (content_type, body) = match uri.path() {
        "/console.js" => (
            "text/javascript; charset=utf-8",
            include_str!("console/console.js"),
        ),
        "/console.css" => (
            "text/css; charset=utf-8",
            include_str!("console/console.css"),
        ),
        // The offline basemap (console/BASEMAP.md says where it comes from).
        "/basemap.json" => ("application/json", include_str!("console/basemap.json")),
        _ => (
            "text/html; charset=utf-8",
            include_str!("console/index.html"),
        ),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate: a new binary must not run against a cached older script.
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src * data:; connect-src 'self'; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
