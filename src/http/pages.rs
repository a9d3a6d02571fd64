//! The tracking page (`/`), the SRE page (`/sre`) and their assets (`/static/...`),
//! compiled into the binary from `web/`: the node serves its own pages with nothing
//! to build or install, and works without internet access.
//!
//! Assets carry no version in their names, so every answer is `Cache-Control:
//! no-cache` with a strong `ETag` computed at compile time: browsers revalidate on
//! each load (a cheap 304) and never run a page against scripts of another build.
//! Every answer also carries a Content-Security-Policy that allows only this origin
//! (and WebSocket connections), so even a string that slipped into the DOM could not
//! load or run anything from elsewhere.

use super::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Only this origin's scripts, styles and images; connections to this origin and to
/// WebSocket endpoints (`ws:`/`wss:` are listed because older browsers do not match
/// them with `'self'`); no plugins, no framing, forms post only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// A file of `web/`, with its content type and validator.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: &'static str,
}

/// FNV-1a, evaluated at compile time: a validator only has to change when the
/// content does, it need not resist attack.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The quoted 16-digit hex form of `hash`, as an `ETag` value, built at compile time.
const fn etag_bytes(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($file:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file));
        const TAG: [u8; 18] = etag_bytes(fnv1a(BODY));
        // Evaluated while compiling: a failure stops the build, never a request.
        const ETAG: &str = match std::str::from_utf8(&TAG) {
            Ok(tag) => tag,
            Err(_) => panic!("an ETag is ASCII"),
        };
        Asset {
            body: BODY,
            content_type: $content_type,
            etag: ETAG,
        }
    }};
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

const TRACKING_PAGE: Asset = asset!("index.html", HTML);
const SRE_PAGE: Asset = asset!("sre.html", HTML);

/// The files under `/static/`, by name. Anything else is a 404.
fn static_asset(name: &str) -> Option<Asset> {
    let asset = match name {
        "app.css" => asset!("app.css", CSS),
        "common.js" => asset!("common.js", JS),
        "tracking.js" => asset!("tracking.js", JS),
        "sre.js" => asset!("sre.js", JS),
        "sre-telemetry.js" => asset!("sre-telemetry.js", JS),
        "charts.js" => asset!("charts.js", JS),
        "favicon.svg" => asset!("favicon.svg", SVG),
        _ => return None,
    };
    Some(asset)
}

/// Routes for the pages; merged into the API router before its layers, so pages
/// are traced, counted and bounded like every other request.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(tracking_page))
        .route("/sre", get(sre_page))
        .route("/static/{file}", get(static_file))
}

async fn tracking_page(headers: HeaderMap) -> Response {
    serve(&TRACKING_PAGE, &headers)
}

async fn sre_page(headers: HeaderMap) -> Response {
    serve(&SRE_PAGE, &headers)
}

async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match static_asset(&file) {
        Some(asset) => serve(&asset, &headers),
        None => ApiError::NotFound("no such file".into()).into_response(),
    }
}

/// `If-None-Match` holds one or more validators, or `*`.
fn still_fresh(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|candidate| candidate.trim().trim_start_matches("W/"))
        .any(|candidate| candidate == etag || candidate == "*")
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = still_fresh(request, asset.etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    async fn serve() -> String {
        let app: Router = router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// Every `/static/<file>` a page or script refers to.
    fn static_references(text: &str) -> BTreeSet<String> {
        text.match_indices("/static/")
            .map(|(at, _)| {
                text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_'))
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_and_every_asset_they_load_are_served_with_their_type_and_policy() {
        let base = serve().await;
        let client = client();
        let mut pending: Vec<String> = vec!["/".into(), "/sre".into()];
        let mut seen = BTreeSet::new();
        while let Some(path) = pending.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let headers = response.headers().clone();
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            let expected = match path.rsplit('.').next() {
                Some("css") => CSS,
                Some("js") => JS,
                Some("svg") => SVG,
                _ => HTML,
            };
            assert_eq!(content_type, expected, "{path}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert!(csp.contains("connect-src 'self' ws: wss:"), "{csp}");
            assert!(headers.contains_key(header::ETAG), "{path}");
            let body = response.text().await.unwrap();
            assert!(!body.is_empty(), "{path}");
            // No page may load anything from another origin.
            for foreign in ["http://", "https://", "//cdn", "@import"] {
                let outside = body
                    .match_indices(foreign)
                    .any(|(at, _)| !body[at..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!outside, "{path} refers to {foreign}");
            }
            pending.extend(static_references(&body));
        }
        for asset in ["/static/app.css", "/static/tracking.js", "/static/sre.js"] {
            assert!(seen.contains(asset), "{asset} is never loaded: {seen:?}");
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_answered_304_and_a_changed_one_gets_the_file() {
        let base = serve().await;
        let client = client();
        let first = client
            .get(format!("{base}/static/app.css"))
            .send()
            .await
            .unwrap();
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18,
            "{etag}"
        );
        let again = client
            .get(format!("{base}/static/app.css"))
            .header(
                header::IF_NONE_MATCH,
                format!("\"0000000000000000\", {etag}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
        assert!(again.text().await.unwrap().is_empty());
        let other = client
            .get(format!("{base}/static/app.css"))
            .header(header::IF_NONE_MATCH, "\"0000000000000000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200);
        // Different files have different validators.
        let page = client.get(format!("{base}/")).send().await.unwrap();
        assert_ne!(page.headers()[header::ETAG].to_str().unwrap(), etag);
    }

    #[tokio::test]
    async fn only_the_listed_files_are_served() {
        let base = serve().await;
        let client = client();
        for path in [
            "/static/missing.js",
            "/static/..%2Fsrc%2Fmain.rs",
            "/static/",
            "/static/index.html/x",
        ] {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
        }
        let missing = client
            .get(format!("{base}/static/missing.js"))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
}
