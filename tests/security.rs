//! The node attacked from outside, as a hostile client would (issue 9): safe
//! defaults, connection limits under a slow-loris attack, tokens and sessions,
//! registration and login abuse, request budgets, browser-facing headers, the
//! WebSocket endpoint's limits, and the cases that held before and must keep holding
//! (forged tokens, other customers' orders, role injection, size limits).
//!
//! Unlike the other suites, these nodes run with the real request budgets of
//! config/default.toml (the harness otherwise makes them generous).

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp, order_body, spawn_app_with};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swiftlogistics::config::{ConfigError, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The secret test nodes sign with (the built-in development one, on loopback).
const DEV_SECRET: &str = "dev-only-change-me-swiftlogistics-secret";
const BIN: &str = env!("CARGO_BIN_EXE_swiftlogistics");

/// The request budgets of config/default.toml, undoing the harness's generous ones.
fn real_limits() -> Value {
    let d = Settings::defaults_with(json!({})).unwrap();
    json!({
        "auth": {"login_per_minute": d.auth.login_per_minute,
                 "register_per_hour": d.auth.register_per_hour,
                 "lockout_failures": d.auth.lockout_failures},
        "rate_limit": {"anonymous_per_window": d.rate_limit.anonymous_per_window,
                       "user_per_window": d.rate_limit.user_per_window},
        "websocket": {"max_sessions_per_user": d.websocket.max_sessions_per_user},
        "http": {"max_connections": d.http.max_connections,
                 "max_connections_per_client": d.http.max_connections_per_client}
    })
}

async fn strict_app(overrides: Value) -> TestApp {
    let mut settings = real_limits();
    common::merge(&mut settings, overrides);
    spawn_app_with(settings).await
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login_body(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    let response = post(
        app,
        "/api/auth/login",
        json!({"email": email, "password": password}),
    )
    .await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_status(app: &TestApp, path: &str, token: &str) -> StatusCode {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn hs256(secret: &str, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", segment(header), segment(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------
// Safe by default

#[test]
fn an_exposed_or_production_node_refuses_a_known_or_short_secret() {
    for overrides in [
        json!({"http": {"bind": "0.0.0.0:3000"}}),
        json!({"profile": "production"}),
        json!({"profile": "production", "auth": {"jwt_secret": "your-secret-key-change-in-production"}}),
        json!({"http": {"bind": "0.0.0.0:3000"}, "auth": {"jwt_secret": "only-twenty-bytes-xx"}}),
    ] {
        let refused = Settings::defaults_with(overrides.clone());
        assert!(
            matches!(refused, Err(ConfigError::Unsafe(_))),
            "{overrides}"
        );
    }
    let own = json!({"profile": "production", "http": {"bind": "0.0.0.0:3000"},
                     "auth": {"jwt_secret": "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"}});
    assert!(Settings::defaults_with(own).is_ok());
}

/// Reads the child's stdout until `marker` or the end; returns what it read.
async fn output_until(child: &mut tokio::process::Child, marker: &str) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(marker) {
                break;
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn the_binary_refuses_to_listen_beyond_loopback_with_the_built_in_secret_and_is_loud_in_development()
 {
    let data = tempfile::tempdir().unwrap();
    let refused = tokio::process::Command::new(BIN)
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("SWIFT__STORE__PATH", data.path())
        .env_remove("JWT_SECRET")
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(20), refused)
        .await
        .expect("the node refuses at once instead of starting")
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refusing to start"), "{stderr}");

    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("SWIFT__STORE__PATH", data.path())
        .env("SWIFT__LOG__LEVEL", "warn")
        .env_remove("JWT_SECRET")
        .env("SWIFT__SIMULATORS__CMS_BIND", "127.0.0.1:0")
        .env("SWIFT__SIMULATORS__ROS_BIND", "127.0.0.1:0")
        .env("SWIFT__SIMULATORS__WMS_BIND", "127.0.0.1:0")
        .env("SWIFT__SIMULATORS__CONTROL_BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let banner = output_until(&mut child, "try: curl").await;
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    child.kill().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Connection limits

/// A connection from `source` (another loopback address, so the attacker is not
/// the client checking on the node).
async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

#[tokio::test]
async fn a_slow_loris_attack_neither_exhausts_the_node_nor_keeps_its_connections() {
    let app = strict_app(json!({"http": {"header_read_timeout_secs": 1,
                                         "max_connections_per_client": 50}}))
    .await;
    let addr = app.runtime.http_addr;
    let (token, _) = app.register_client().await;

    // 200 half-open requests from one address, each dribbling a header.
    let mut held = Vec::new();
    for _ in 0..200 {
        match connect_from("127.0.0.2", addr).await {
            Ok(mut tcp) => {
                let _ = tcp
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await;
                held.push(tcp);
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    // The node keeps serving everyone else: probes, intake, reads.
    let started = Instant::now();
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let order_id = app.place(&token).await;
    assert_eq!(
        get_status(&app, &format!("/api/orders/{order_id}"), &token).await,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Connections beyond the per-address cap were answered 503 and closed.
    let mut refused = 0;
    let mut cut = 0;
    for tcp in &mut held {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("retry-after: 1"), "{text}");
            refused += 1;
        } else {
            // Admitted ones are closed by the header-read timeout (hyper answers
            // 408 or just closes), not kept for ever.
            assert!(
                read.is_ok(),
                "an admitted slow connection was not closed in time"
            );
            cut += 1;
        }
    }
    assert_eq!((refused, cut), (150, 50));
    // And with the attack over, the same address is served again.
    let mut tcp = connect_from("127.0.0.2", addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = strict_app(json!({"http": {"header_read_timeout_secs": 1}})).await;
    let mut tcp = TcpStream::connect(app.runtime.http_addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

// ---------------------------------------------------------------------------------
// Tokens and sessions

#[tokio::test]
async fn access_tokens_are_short_lived_refresh_tokens_rotate_and_a_replay_ends_the_session() {
    let app = strict_app(json!({})).await;
    let login = app
        .register_and_login("rotation@example.com", "correct-horse-battery")
        .await;
    let access = login["token"].as_str().unwrap().to_owned();
    let refresh = login["refreshToken"].as_str().unwrap().to_owned();
    let claims = claims_of(&access);
    assert_eq!(login["expiresIn"], 900);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    for claim in ["iss", "aud", "nbf", "jti", "sid"] {
        assert!(claims.get(claim).is_some(), "{claim} in {claims}");
    }

    let renewed = post(&app, "/api/auth/refresh", json!({"refreshToken": refresh})).await;
    assert_eq!(renewed.status(), 200);
    let renewed: Value = renewed.json().await.unwrap();
    let access2 = renewed["token"].as_str().unwrap().to_owned();
    let refresh2 = renewed["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(get_status(&app, "/api/orders", &access2).await, 200);

    // The spent refresh token presented again: a replay; the whole session ends.
    let replay = post(&app, "/api/auth/refresh", json!({"refreshToken": refresh})).await;
    assert_eq!(replay.status(), 401);
    let next = post(&app, "/api/auth/refresh", json!({"refreshToken": refresh2})).await;
    assert_eq!(next.status(), 401, "the family is revoked");
    assert_eq!(get_status(&app, "/api/orders", &access2).await, 401);
    assert_eq!(get_status(&app, "/api/orders", &access).await, 401);
    let garbage = post(
        &app,
        "/api/auth/refresh",
        json!({"refreshToken": "ses_x.0.a.b"}),
    )
    .await;
    assert_eq!(garbage.status(), 401);
}

#[tokio::test]
async fn logout_and_an_admin_revocation_end_sessions_at_once() {
    let app = strict_app(json!({})).await;
    let login = app
        .register_and_login("leaver@example.com", "correct-horse-battery")
        .await;
    let access = login["token"].as_str().unwrap().to_owned();
    let user_id = login["user"]["id"].as_str().unwrap().to_owned();
    let logout = app
        .http
        .post(app.url("/api/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(get_status(&app, "/api/orders", &access).await, 401);
    let refresh = post(
        &app,
        "/api/auth/refresh",
        json!({"refreshToken": login["refreshToken"]}),
    )
    .await;
    assert_eq!(refresh.status(), 401);

    let (_, again) = login_body(&app, "leaver@example.com", "correct-horse-battery").await;
    let (_, other) = login_body(&app, "leaver@example.com", "correct-horse-battery").await;
    let admin = app.admin_token().await;
    let revoke = app
        .http
        .delete(app.url(&format!("/api/admin/users/{user_id}/sessions")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let revoked: Value = revoke.json().await.unwrap();
    assert_eq!(revoked["revokedSessions"], 2);
    for session in [again, other] {
        let token = session["token"].as_str().unwrap();
        assert_eq!(get_status(&app, "/api/orders", token).await, 401);
    }
    let not_admin = app
        .http
        .delete(app.url(&format!("/api/admin/users/{user_id}/sessions")))
        .bearer_auth(app.register_client().await.0)
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), 403);
}

#[tokio::test]
async fn forged_tampered_overlong_and_orphan_tokens_are_refused() {
    let app = strict_app(json!({})).await;
    let (token, _) = app.register_client().await;
    let claims = claims_of(&token);
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let mut admin = claims.clone();
    admin["role"] = json!("admin");
    let mut year_3000 = claims.clone();
    year_3000["exp"] = json!(32_503_680_000u64);
    let mut stranger = claims.clone();
    stranger["userId"] = json!("usr_does_not_exist");
    stranger["sid"] = json!("ses_made_up");
    let mut foreign_audience = claims.clone();
    foreign_audience["aud"] = json!("another-service");
    let mut no_sid = claims.clone();
    no_sid.as_object_mut().unwrap().remove("sid");
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 3.., "AAA");
    let forged = [
        format!(
            "{}.{}.",
            segment(&json!({"alg": "none", "typ": "JWT"})),
            segment(&admin)
        ),
        hs256("a-guessed-secret-of-some-length", &hs, &admin),
        hs256(DEV_SECRET, &json!({"alg": "RS256", "typ": "JWT"}), &admin),
        hs256(DEV_SECRET, &hs, &year_3000),
        hs256(DEV_SECRET, &hs, &stranger),
        hs256(DEV_SECRET, &hs, &foreign_audience),
        hs256(DEV_SECRET, &hs, &no_sid),
        tampered,
        format!(
            "{}.{}.{}",
            segment(&hs),
            segment(&admin),
            token.split('.').nth(2).unwrap()
        ),
    ];
    for (n, forged) in forged.iter().enumerate() {
        assert_eq!(
            get_status(&app, "/api/orders", forged).await,
            401,
            "forgery {n}"
        );
        assert_eq!(
            get_status(&app, "/api/services/health", forged).await,
            401,
            "forgery {n}"
        );
    }
    // The genuine one still works, and its role is the account's, not the token's:
    // a token of the real session re-signed as admin (with the secret) gets no more.
    assert_eq!(get_status(&app, "/api/orders", &token).await, 200);
    let promoted = hs256(DEV_SECRET, &hs, &admin);
    assert_eq!(
        get_status(&app, "/api/services/health", &promoted).await,
        403
    );
}

// ---------------------------------------------------------------------------------
// Registration and login

#[tokio::test]
async fn registration_is_limited_per_address_and_answers_the_same_for_taken_addresses() {
    let app = strict_app(json!({})).await;
    let register = |email: &str| {
        post(
            &app,
            "/api/auth/register",
            json!({"name": "Eve Example", "email": email, "password": "correct-horse-battery"}),
        )
    };
    let fresh = register("someone@example.com").await;
    assert_eq!(fresh.status(), 202);
    let fresh: Value = fresh.json().await.unwrap();
    let taken = register("SOMEONE@example.com").await;
    assert_eq!(taken.status(), 202);
    let taken: Value = taken.json().await.unwrap();
    assert_eq!(fresh, taken, "a taken address is answered like a new one");
    assert_eq!(register("third@example.com").await.status(), 202);
    let fourth = register("fourth@example.com").await;
    assert_eq!(fourth.status(), 429, "3 per hour per address (seed 000)");
    let wait: u64 = fourth.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
}

#[tokio::test]
async fn weak_passwords_look_alike_addresses_and_role_injection_are_refused() {
    let app = strict_app(json!({"auth": {"register_per_hour": 100}})).await;
    let email = "ada.lovelace@example.com";
    for weak in [
        "password",
        "12345678",
        "        ",
        "qwerty123",
        "ada.lovelace@example.com",
        "aaaaaaaaaa",
    ] {
        let response = post(
            &app,
            "/api/auth/register",
            json!({"name": "Ada", "email": email, "password": weak}),
        )
        .await;
        assert_eq!(response.status(), 422, "{weak:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["details"][0]["field"], "password", "{weak:?}");
    }
    let zero_width = post(
        &app,
        "/api/auth/register",
        json!({"name": "Ada", "email": "ada\u{200B}@example.com", "password": "correct-horse-battery"}),
    )
    .await;
    assert_eq!(zero_width.status(), 422);

    // Fullwidth letters are the same address: one account.
    let fullwidth = post(
        &app,
        "/api/auth/register",
        json!({"name": "Ada", "email": "ａｄａ@example.com", "password": "correct-horse-battery",
               "role": "admin"}),
    )
    .await;
    assert_eq!(fullwidth.status(), 202);
    let (status, login) = login_body(&app, "ada@example.com", "correct-horse-battery").await;
    assert_eq!(status, 200);
    assert_eq!(
        login["user"]["role"], "client",
        "a role in the body is ignored"
    );
    let imitation = post(
        &app,
        "/api/auth/register",
        json!({"name": "Mallory", "email": "ada@example.com", "password": "another-password-1"}),
    )
    .await;
    assert_eq!(imitation.status(), 202);
    let (status, _) = login_body(&app, "ａｄａ@example.com", "another-password-1").await;
    assert_eq!(
        status, 401,
        "the look-alike did not become a second account"
    );
}

#[tokio::test]
async fn logins_are_limited_per_address_and_locked_per_account_behind_a_trusted_proxy() {
    let app = strict_app(json!({"http": {"trusted_proxies": ["127.0.0.1/32"]}})).await;
    let attempt = |client: String, email: &'static str, password: &'static str| {
        app.http
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    // Per client address (as the trusted proxy reports it): 5 a minute.
    for _ in 0..5 {
        let r = attempt("203.0.113.1".into(), "nobody@example.com", "wrong-password").await;
        assert_eq!(r.unwrap().status(), 401);
    }
    let limited = attempt("203.0.113.1".into(), "nobody@example.com", "x")
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let elsewhere = attempt("203.0.113.2".into(), ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200, "another client has its own budget");

    // Per account: 10 failures from many addresses lock it, even for the right password.
    for n in 0..10 {
        let r = attempt(format!("198.51.100.{n}"), ADMIN_EMAIL, "guessing-wrong").await;
        assert_eq!(r.unwrap().status(), 401);
    }
    let locked = attempt("198.51.100.200".into(), ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .unwrap();
    assert_eq!(locked.status(), 429);
}

// ---------------------------------------------------------------------------------
// Request budgets and headers

#[tokio::test]
async fn anonymous_and_per_account_budgets_answer_429_with_retry_after() {
    let app = strict_app(json!({"rate_limit": {"user_per_window": 20}})).await;
    let (token, _) = app.register_client().await;
    for _ in 0..20 {
        assert_eq!(get_status(&app, "/api/orders", &token).await, 200);
    }
    let over = app
        .http
        .get(app.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));

    // 100 anonymous requests per address per 15 minutes (the registration and the
    // login above were two of them); probes are never budgeted.
    let mut statuses = Vec::new();
    for _ in 0..99 {
        let r = app.http.get(app.url("/api/orders")).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    // (One more may have refilled meanwhile: one every 9 s.)
    assert!(
        statuses.iter().filter(|s| **s == 401).count() >= 97,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn api_answers_are_not_cached_or_sniffed_and_cors_is_off_unless_configured() {
    let app = strict_app(json!({})).await;
    let (token, _) = app.register_client().await;
    let answer = app
        .http
        .get(app.url("/api/orders"))
        .bearer_auth(&token)
        .header("origin", "https://portal.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["cache-control"], "no-store");
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    assert!(!answer.headers().contains_key("access-control-allow-origin"));

    let app =
        strict_app(json!({"http": {"cors_allowed_origins": ["https://portal.example.com"]}})).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://portal.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://portal.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn metrics_can_require_a_token_and_the_control_api_refuses_foreign_hosts() {
    let app = strict_app(json!({"http": {"metrics_token": "scraper-secret-token"}})).await;
    let open = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401);
    let scraped = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("scraper-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);

    let control = app.runtime.simulators.as_ref().unwrap().control_addr;
    let knobs = format!("http://{control}/knobs/wms");
    let local = app.http.get(&knobs).send().await.unwrap();
    assert_eq!(local.status(), 200);
    let rebound = app
        .http
        .get(&knobs)
        .header(
            "host",
            format!("rebind.attacker.example:{}", control.port()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403, "DNS rebinding");
}

// ---------------------------------------------------------------------------------
// Orders of other customers, size limits

#[tokio::test]
async fn other_customers_orders_cannot_be_read_or_cancelled() {
    let app = strict_app(json!({})).await;
    let (alice, _) = app.register_client().await;
    let (mallory, _) = app.register_client().await;
    let order_id = app.place(&alice).await;
    for path in [
        format!("/api/orders/{order_id}"),
        format!("/api/orders/{order_id}/status"),
    ] {
        assert_eq!(get_status(&app, &path, &mallory).await, 404, "{path}");
    }
    let cancel = app
        .http
        .post(app.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    assert_ne!(app.status_of(&alice, &order_id).await, "CANCELLED");
}

#[tokio::test]
async fn oversized_deeply_nested_and_long_url_requests_are_refused_and_the_node_lives_on() {
    let app = strict_app(json!({})).await;
    let (token, _) = app.register_client().await;
    let mut big = order_body();
    big["specialInstructions"] = json!("x".repeat(100_000));
    assert_eq!(app.place_order(&token, &big).await.status(), 413);
    let nested = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep = app
        .http
        .post(app.url("/api/orders"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"pickupLocation\": {nested}}}"))
        .send()
        .await
        .unwrap();
    assert!(deep.status().is_client_error(), "{}", deep.status());
    let long = app
        .http
        .get(app.url(&format!("/api/orders/{}", "A".repeat(200_000))))
        .bearer_auth(&token)
        .send()
        .await;
    if let Ok(long) = long {
        assert!(long.status().is_client_error(), "{}", long.status());
    }
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.place_order(&token, &order_body()).await.status(), 202);
}

// ---------------------------------------------------------------------------------
// WebSocket

fn ws_request(
    app: &TestApp,
    token: &str,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}/ws?token={token}", app.runtime.http_addr)
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    request
}

async fn ws_status(app: &TestApp, token: &str, origin: Option<&str>) -> u16 {
    match tokio_tungstenite::connect_async(ws_request(app, token, origin)).await {
        Ok(_) => 101,
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// The close code the server ends the session with, waiting at most `within`.
async fn closed_with<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()? {
            Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return Some(code.into()),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn websocket_origins_sessions_per_account_and_frame_size_are_limited() {
    let app = strict_app(json!({"websocket": {"max_sessions_per_user": 2,
                                              "allowed_origins": ["https://portal.example.com"]}}))
    .await;
    let (token, _) = app.register_client().await;
    let own = format!("http://{}", app.runtime.http_addr);
    assert_eq!(
        ws_status(&app, &token, Some("https://evil.example.com")).await,
        403
    );
    let (mut first, _) = tokio_tungstenite::connect_async(ws_request(&app, &token, Some(&own)))
        .await
        .expect("same origin");
    let (_second, _) = tokio_tungstenite::connect_async(ws_request(
        &app,
        &token,
        Some("https://portal.example.com"),
    ))
    .await
    .expect("a configured origin");
    assert_eq!(
        ws_status(&app, &token, None).await,
        429,
        "a third session of one account"
    );
    let (other, _) = app.register_client().await;
    assert_eq!(
        ws_status(&app, &other, None).await,
        101,
        "other accounts are not affected"
    );

    first.send(Message::text("x".repeat(10_000))).await.unwrap();
    assert_eq!(
        closed_with(&mut first, Duration::from_secs(5)).await,
        Some(1009)
    );
    drop(first);
    // The closed session gave its place back.
    let reopened = common::periodic_check(
        || async { ws_status(&app, &token, None).await == 101 },
        Duration::from_secs(5),
    )
    .await;
    assert!(reopened);
}

#[tokio::test]
async fn a_websocket_session_ends_with_its_token_unless_renewed_and_sees_only_its_orders() {
    let app = strict_app(json!({"auth": {"access_token_ttl_secs": 3}})).await;
    let email = "watcher@example.com";
    let login = app.register_and_login(email, "correct-horse-battery").await;
    let token = login["token"].as_str().unwrap().to_owned();
    let (mallory, _) = app.register_client().await;
    let theirs = app.place(&mallory).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(&app, &token, None))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "orderId": theirs}).to_string(),
    ))
    .await
    .unwrap();
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        answer["code"], "NOT_FOUND",
        "another customer's order does not exist"
    );
    let started = Instant::now();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(8)).await,
        Some(1008)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Renewed on the socket with a later token, the session outlives the first one.
    let (_, login) = login_body(&app, email, "correct-horse-battery").await;
    let token = login["token"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(&app, &token, None))
        .await
        .unwrap();
    let first_exp = claims_of(&token)["exp"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, fresh) = login_body(&app, email, "correct-horse-battery").await;
    let fresh = fresh["token"].as_str().unwrap().to_owned();
    ws.send(Message::text(
        json!({"type": "renew", "token": fresh}).to_string(),
    ))
    .await
    .unwrap();
    let renewed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(renewed["type"], "renewed", "{renewed}");
    let code = closed_with(&mut ws, Duration::from_secs(10)).await;
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(code, Some(1008));
    assert!(ended > first_exp, "it lived past the first token's expiry");
}
