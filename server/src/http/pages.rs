//! The dashboard's pages and files: three pages (fleet `/`, host
//! `/host/NAME`, commands `/commands`) that are one static HTML document
//! whose script tells them apart by the path and fetches everything they
//! show from `/api/`, plus uPlot and a stylesheet, all
//! compiled into the binary (`include_bytes!`, no build step beyond cargo,
//! no request ever leaves the server) and `/login`, where a one-time token
//! from `monitorctl dashboard` becomes a session cookie.
//!
//! Every answer of the listener carries the security headers
//! ([`security_headers`]): a CSP allowing only this origin's scripts,
//! styles and fetches (no inline script, no framing), no MIME sniffing,
//! no referrer (the login URL's token must not leak).
//!
//! The pages must never put data into HTML on the server: they are the
//! same bytes for everyone, and the script writes agents' strings with
//! `textContent` only.
//!
//! uPlot 1.6.32 (MIT, `LICENSE.uplot`), from npm (`npm pack uplot`):
//! `dist/uPlot.iife.min.js` and `dist/uPlot.min.css`, unchanged.

use std::sync::LazyLock;

use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::HttpState;
use super::api::Params;
use super::session;

/// One file served as is.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "uplot.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/uplot.min.js"),
    },
    Asset {
        name: "uplot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/uplot.min.css"),
    },
    Asset {
        name: "LICENSE.uplot",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/LICENSE.uplot"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/dashboard.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/favicon.svg"),
    },
    Asset {
        name: "page.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("assets/page.html"),
    },
];

/// Each asset's ETag: a digest of its bytes, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let d = monitor::digest::sha256(a.bytes);
            format!("\"{}\"", monitor::digest::hex(&d[..12]))
        })
        .collect()
});

/// The Content-Security-Policy of every answer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Adds the security headers to every answer of the listener.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// An asset by name, with revalidation: pages and files are cached but
/// checked again after an hour (`If-None-Match` gets a 304), so a new
/// server version shows at the next visit.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
    ];
    let matched = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matched {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.bytes,
    )
        .into_response()
}

/// `GET /assets/NAME` (no authentication: the files hold no data).
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// `GET /`, `/host/NAME`, `/commands`: the page (its script reads which
/// one, and the host's name, from the path).
pub async fn page(headers: HeaderMap) -> Response {
    serve("page.html", &headers)
}

/// `GET /login?token=…`: spends a one-time login token for a session
/// cookie, then sends the browser to `/` (so the token leaves the address
/// bar and the history).
pub async fn login(State(state): State<HttpState>, RawQuery(raw): RawQuery) -> Response {
    let to_fleet = [
        (header::LOCATION, "/".to_owned()),
        (header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    if state.auth.is_open() {
        return (StatusCode::SEE_OTHER, to_fleet).into_response();
    }
    let params = Params::parse(raw.as_deref().unwrap_or(""));
    let token = params.get("token").unwrap_or("");
    match state.sessions.redeem(token, monitor::time::now_unix_ms()) {
        Some(s) => {
            log::info!(
                "dashboard login by operator {}",
                monitor::text::Escaped::capped(&s.operator)
            );
            let cookie = [(header::SET_COOKIE, session::set_cookie(&s))];
            (StatusCode::SEE_OTHER, to_fleet, cookie).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::CACHE_CONTROL, "no-store")],
            "this login URL is unknown, already used or expired: run `monitorctl dashboard` \
             for a new one\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_with_etags_and_revalidated() {
        let r = serve("uplot.min.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 26, "{etag}");
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        assert_eq!(serve("uplot.min.js", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
        // Distinct files, distinct tags.
        let mut tags = ETAGS.clone();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[test]
    fn the_page_loads_only_local_files_and_the_script_never_writes_html() {
        let text = |name: &str| {
            let a = ASSETS.iter().find(|a| a.name == name).unwrap();
            std::str::from_utf8(a.bytes).unwrap()
        };
        let page = text("page.html");
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("style="), "inline style");
        assert!(page.contains("src=\"/assets/dashboard.js\""));
        let script = text("dashboard.js");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "dashboard.js uses {sink}");
        }
        // No address but SVG's namespace name (an identifier, not fetched).
        let script = script.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
    }
}
