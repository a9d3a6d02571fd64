//! WebSocket tracking (DESIGN section 7) over real sockets: authentication before
//! the upgrade, live updates in sequence, replay with `since` joined to live updates
//! without gap or duplicate (also across a node restart), ownership, bad frames,
//! slow and silent sessions.

mod common;

use chrono::{DateTime, Utc};
use common::{TestApp, periodic_check, spawn_app, spawn_app_with};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use swiftlogistics::app;
use swiftlogistics::domain::System;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const JOURNEY: Duration = Duration::from_secs(20);
const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
const JOURNEY_STATUSES: [&str; 5] = [
    "RECEIVED",
    "CMS_VALIDATED",
    "INVENTORY_RESERVED",
    "ROUTE_OPTIMIZED",
    "READY_FOR_DELIVERY",
];

fn ws_url(app: &TestApp, token: &str) -> String {
    ws_url_at(app.runtime.http_addr, token)
}

fn ws_url_at(node: std::net::SocketAddr, token: &str) -> String {
    format!("ws://{node}/ws?token={token}")
}

async fn connect(app: &TestApp, token: &str) -> Ws {
    connect_async(ws_url(app, token))
        .await
        .expect("the WebSocket opens")
        .0
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// The next message that is not a ping or pong.
async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Option<Result<Message, WsError>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_message(ws).await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).expect("JSON frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn subscribe(ws: &mut Ws, order_id: &str, since: Option<u64>) -> Value {
    let mut frame = json!({"type": "subscribe", "orderId": order_id});
    if let Some(since) = since {
        frame["since"] = json!(since);
    }
    send(ws, frame).await;
    let answer = next_frame(ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    answer
}

/// Order updates of `order_id` until the one with `status`, inclusive. Any other
/// frame fails the test.
async fn updates_until(ws: &mut Ws, order_id: &str, status: &str) -> Vec<Value> {
    let mut updates = Vec::new();
    loop {
        let frame = next_frame(ws).await;
        assert_eq!(frame["type"], "order-update", "{frame}");
        assert_eq!(frame["orderId"], order_id, "{frame}");
        let reached = frame["status"] == status;
        updates.push(frame);
        if reached {
            return updates;
        }
    }
}

fn seqs(updates: &[Value]) -> Vec<u64> {
    updates
        .iter()
        .map(|u| u["seq"].as_u64().expect("seq"))
        .collect()
}

fn statuses(updates: &[Value]) -> Vec<String> {
    updates
        .iter()
        .map(|u| u["status"].as_str().expect("status").to_owned())
        .collect()
}

/// Sessions the node's notifier holds, from the supervision tree.
async fn open_sessions(app: &TestApp, admin: &str) -> u64 {
    fn find(node: &Value) -> Option<u64> {
        if node["name"] == "notifier" {
            return node["count"].as_u64();
        }
        node["children"].as_array()?.iter().find_map(find)
    }
    let tree: Value = app
        .http
        .get(app.url("/api/telemetry/supervision"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("supervision request")
        .json()
        .await
        .expect("supervision JSON");
    find(&tree).expect("the notifier is in the supervision tree")
}

fn close_code(message: Option<Result<Message, WsError>>) -> Option<u16> {
    match message {
        Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => Some(code.into()),
        _ => None,
    }
}

#[tokio::test]
async fn a_valid_token_is_required_before_the_upgrade() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let base = format!("ws://{}/ws", app.runtime.http_addr);
    for url in [base.clone(), format!("{base}?token=not-a-token")] {
        match connect_async(url.as_str()).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401, "{url}"),
            other => panic!("{url} must be refused with 401, got {other:?}"),
        }
    }

    // The header works as well as the query string.
    let mut request = base.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = connect_async(request).await.expect("header token accepted");
    subscribe(&mut ws, "*", None).await;

    // A valid token without an upgrade is an ordinary JSON error.
    let plain = app
        .http
        .get(app.url("/ws"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn updates_of_ones_own_order_arrive_live_and_in_sequence() {
    let app = spawn_app().await;
    let sims = app.runtime.simulators.as_ref().unwrap();
    // Validation takes a while, so the order is still moving when we subscribe.
    sims[System::Cms].knobs().update(|k| k.latency_ms = 500);
    let (token, _) = app.register_client().await;
    let mut ws = connect(&app, &token).await;
    let order_id = app.place(&token).await;

    let subscribed = subscribe(&mut ws, &order_id, None).await;
    assert_eq!(subscribed["orderId"], order_id.as_str());
    let updates = updates_until(&mut ws, &order_id, "READY_FOR_DELIVERY").await;
    // Without `since`, the current state comes first, then every later change.
    let first = subscribed["seq"].as_u64().unwrap();
    assert_eq!(seqs(&updates), (first..=5).collect::<Vec<_>>());
    assert_eq!(statuses(&updates), JOURNEY_STATUSES[first as usize - 1..]);

    let order = app.order(&token, &order_id).await;
    let history = order["history"].as_array().unwrap();
    for update in &updates {
        let seq = update["seq"].as_u64().unwrap() as usize;
        let logged = &history[seq - 1];
        assert_eq!(update["status"], logged["status"]);
        assert_eq!(update["message"], logged["message"]);
        assert!(update["timestamp"].is_string());
    }
    let validated = updates
        .iter()
        .find(|u| u["status"] == "CMS_VALIDATED")
        .expect("CMS_VALIDATED update");
    assert!(
        validated["data"]["customerData"]["tier"].is_string(),
        "{validated}"
    );
    let routed = updates
        .iter()
        .find(|u| u["status"] == "ROUTE_OPTIMIZED")
        .expect("ROUTE_OPTIMIZED update");
    assert!(routed["data"]["route"]["waypoints"].is_array(), "{routed}");
}

#[tokio::test]
async fn since_replays_exactly_the_missed_updates_of_a_finished_order() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let order_id = app.place(&token).await;
    app.wait_for_status(&token, &order_id, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    let history = app.order(&token, &order_id).await["history"].clone();

    let mut ws = connect(&app, &token).await;
    let subscribed = subscribe(&mut ws, &order_id, Some(2)).await;
    assert_eq!(subscribed["status"], "READY_FOR_DELIVERY");
    assert_eq!(subscribed["seq"], 5);
    let replayed = updates_until(&mut ws, &order_id, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&replayed), [3, 4, 5]);
    for update in &replayed {
        let logged = &history[update["seq"].as_u64().unwrap() as usize - 1];
        assert_eq!(update["status"], logged["status"]);
        assert_eq!(update["message"], logged["message"]);
    }

    // Nothing more was sent: the next frame is the answer to the next request.
    send(&mut ws, json!({"type": "unsubscribe", "orderId": order_id})).await;
    let unsubscribed = next_frame(&mut ws).await;
    assert_eq!(unsubscribed["type"], "unsubscribed", "{unsubscribed}");

    // Up to date already: nothing to replay.
    subscribe(&mut ws, &order_id, Some(5)).await;
    send(&mut ws, json!({"type": "unsubscribe", "orderId": order_id})).await;
    assert_eq!(next_frame(&mut ws).await["type"], "unsubscribed");

    // From the beginning.
    subscribe(&mut ws, &order_id, Some(0)).await;
    let everything = updates_until(&mut ws, &order_id, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&everything), [1, 2, 3, 4, 5]);
    assert_eq!(statuses(&everything), JOURNEY_STATUSES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_joins_live_updates_without_gap_or_duplicate_while_orders_move() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let mut ws = connect(&app, &token).await;

    // Thirty orders on their way at once, each subscribed with `since` while its
    // later updates are being made: replays and live updates overlap.
    let orders = futures::future::join_all((0..30).map(|_| app.place(&token))).await;
    for order_id in &orders {
        send(
            &mut ws,
            json!({"type": "subscribe", "orderId": order_id, "since": 1}),
        )
        .await;
    }
    let mut received: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut ready = BTreeSet::new();
    let mut acknowledged = 0;
    while acknowledged < orders.len() || ready.len() < orders.len() {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "subscribed" {
            acknowledged += 1;
        } else {
            record(&frame, &mut received, &mut ready);
        }
    }
    for order_id in &orders {
        assert_eq!(
            received.get(order_id).cloned().unwrap_or_default(),
            [2, 3, 4, 5],
            "updates of {order_id}"
        );
    }

    fn record(
        frame: &Value,
        received: &mut BTreeMap<String, Vec<u64>>,
        ready: &mut BTreeSet<String>,
    ) {
        assert_eq!(frame["type"], "order-update", "{frame}");
        let order_id = frame["orderId"].as_str().unwrap().to_owned();
        if frame["status"] == "READY_FOR_DELIVERY" {
            ready.insert(order_id.clone());
        }
        received
            .entry(order_id)
            .or_default()
            .push(frame["seq"].as_u64().unwrap());
    }
}

#[tokio::test]
async fn another_customers_order_is_refused_and_never_delivered() {
    let app = spawn_app().await;
    let (alice, _) = app.register_client().await;
    let (bob, _) = app.register_client().await;
    let alices_order = app.place(&alice).await;

    let mut ws = connect(&app, &bob).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "orderId": alices_order}),
    )
    .await;
    let refused = next_frame(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "orderId": "ORD-20990101-NOSUCH"}),
    )
    .await;
    let missing = next_frame(&mut ws).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "NOT_FOUND");
    // Indistinguishable from an order that does not exist.
    assert_eq!(refused["message"], missing["message"]);
    assert_eq!(refused["code"], missing["code"]);

    // "*" for a client means the client's own orders.
    subscribe(&mut ws, "*", None).await;
    let alices_second = app.place(&alice).await;
    app.wait_for_status(&alice, &alices_second, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    app.wait_for_status(&alice, &alices_order, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    let bobs_order = app.place(&bob).await;
    // Alice's updates were all made before Bob's order existed: had any reached Bob,
    // it would come before his own.
    let updates = updates_until(&mut ws, &bobs_order, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&updates), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn an_admin_following_everything_sees_every_customers_orders() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (alice, _) = app.register_client().await;
    let (bob, _) = app.register_client().await;
    let mut ws = connect(&app, &admin).await;
    subscribe(&mut ws, "*", None).await;

    let orders = [app.place(&alice).await, app.place(&bob).await];
    let mut received: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut ready = 0;
    while ready < orders.len() {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["type"], "order-update", "{frame}");
        if frame["status"] == "READY_FOR_DELIVERY" {
            ready += 1;
        }
        received
            .entry(frame["orderId"].as_str().unwrap().to_owned())
            .or_default()
            .push(frame["seq"].as_u64().unwrap());
    }
    for order_id in &orders {
        assert_eq!(received[order_id], [1, 2, 3, 4, 5], "updates of {order_id}");
    }
}

#[tokio::test]
async fn a_bad_frame_gets_an_error_frame_and_the_session_keeps_working() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let mut ws = connect(&app, &token).await;

    let bad_frames = [
        Message::text("this is not JSON"),
        Message::text(json!({"type": "dance", "orderId": "*"}).to_string()),
        Message::text(json!({"type": "subscribe"}).to_string()),
        Message::text(json!({"orderId": "*"}).to_string()),
        Message::text(json!({"type": "subscribe", "orderId": "ORD-X", "since": -1}).to_string()),
        Message::text(json!({"type": "subscribe", "orderId": "ORD-X", "since": "3"}).to_string()),
        Message::text(json!({"type": "subscribe", "orderId": "*", "since": "soon"}).to_string()),
        Message::binary(vec![0_u8, 159, 146, 150]),
    ];
    for bad in bad_frames {
        let shown = format!("{bad:?}");
        ws.send(bad).await.unwrap();
        let answer = next_frame(&mut ws).await;
        assert_eq!(answer["type"], "error", "{shown}: {answer}");
        assert_eq!(answer["code"], "BAD_REQUEST", "{shown}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "orderId": "no such order!"}),
    )
    .await;
    assert_eq!(next_frame(&mut ws).await["code"], "NOT_FOUND");

    let order_id = app.place(&token).await;
    subscribe(&mut ws, &order_id, Some(0)).await;
    let updates = updates_until(&mut ws, &order_id, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&updates), [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_read_is_cut_off_without_slowing_the_others() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;

    // A reader with a tiny receive window, so that the node's socket fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.runtime.http_addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(ws_url(&app, &admin), stream)
        .await
        .expect("slow session opens");
    send(&mut slow, json!({"type": "subscribe", "orderId": "*"})).await;
    assert_eq!(next_frame(&mut slow).await["type"], "subscribed");

    let mut fast = connect(&app, &admin).await;
    subscribe(&mut fast, "*", None).await;
    let both = periodic_check(|| async { open_sessions(&app, &admin).await == 2 }, JOURNEY).await;
    assert!(both, "the notifier does not count both sessions");

    // Orders go in rounds, each placed once the fast session has seen the last one
    // through, so the store never has more than a round's writes queued: an update's
    // delay then measures the notifier, not a busy database.
    const ORDERS: usize = 300;
    const ROUND: usize = 20;
    let mut slowest = chrono::Duration::zero();
    let mut ready = BTreeSet::new();
    for round in 1..=ORDERS / ROUND {
        futures::future::join_all((0..ROUND).map(|_| app.place(&client))).await;
        while ready.len() < round * ROUND {
            let frame = next_frame(&mut fast).await;
            assert_eq!(frame["type"], "order-update", "{frame}");
            let made: DateTime<Utc> = frame["timestamp"].as_str().unwrap().parse().unwrap();
            slowest = slowest.max(Utc::now() - made);
            if frame["status"] == "READY_FOR_DELIVERY" {
                ready.insert(frame["orderId"].as_str().unwrap().to_owned());
            }
        }
    }
    // Had the node waited for the slow session, the fast one would have waited until
    // the slow one was dropped (10 s of write timeout, or 30 s of ping timeout). The
    // bound leaves room for a loaded machine and slower real backends.
    assert!(
        slowest < chrono::Duration::seconds(5),
        "the fast session waited {slowest} for an update"
    );

    // The node let go of the slow session ...
    let cut = periodic_check(|| async { open_sessions(&app, &admin).await == 1 }, JOURNEY).await;
    assert!(cut, "the slow session is still open");
    // ... which, once it reads, finds fewer updates than were made, then the end.
    let mut updates = 0;
    let ending = loop {
        match next_message(&mut slow).await {
            Some(Ok(Message::Text(_))) => updates += 1,
            other => break other,
        }
    };
    assert!(
        updates < ORDERS * 5,
        "the slow session got all {updates} updates"
    );
    let code = close_code(ending);
    assert!(code.is_none() || code == Some(1008), "closed with {code:?}");
}

#[tokio::test]
async fn a_session_that_stops_answering_pings_is_dropped() {
    let app =
        spawn_app_with(json!({"websocket": {"ping_interval_ms": 100, "pong_timeout_ms": 300}}))
            .await;
    let admin = app.admin_token().await;
    let (token, _) = app.register_client().await;

    let silent = connect(&app, &token).await;
    // A lively session reads all the time, and so answers every ping.
    let (mut lively_out, mut lively_in) = connect(&app, &token).await.split();
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(message)) = lively_in.next().await {
            match message {
                Message::Ping(_) => pings += 1,
                Message::Text(text) => {
                    let _ = frames_tx.send(text.to_string());
                }
                _ => {}
            }
        }
        pings
    });

    let dropped =
        periodic_check(|| async { open_sessions(&app, &admin).await == 1 }, JOURNEY).await;
    assert!(dropped, "the silent session was not dropped");
    let mut silent = silent;
    let ending = next_message(&mut silent).await;
    assert!(
        !matches!(ending, Some(Ok(Message::Text(_)))),
        "unexpected frame {ending:?}"
    );
    assert_eq!(close_code(ending), Some(1001));

    // The lively one has answered several pings and still works.
    lively_out
        .send(Message::text(
            json!({"type": "subscribe", "orderId": "*"}).to_string(),
        ))
        .await
        .unwrap();
    let answer = tokio::time::timeout(FRAME_TIMEOUT, frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.contains("\"subscribed\""), "{answer}");
    lively_out.send(Message::Close(None)).await.unwrap();
    let pings = tokio::time::timeout(FRAME_TIMEOUT, reader)
        .await
        .unwrap()
        .unwrap();
    assert!(pings >= 3, "only {pings} pings");
}

#[tokio::test]
async fn since_replays_without_gap_across_a_node_restart() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let driver = app.driver_token().await;
    let finished = app.place(&token).await;
    app.wait_for_status(&token, &finished, "READY_FOR_DELIVERY", JOURNEY)
        .await;
    // The second order is still being validated when the node stops.
    let sims = app.runtime.simulators.as_ref().unwrap();
    sims[System::Cms].knobs().update(|k| k.latency_ms = 3000);
    let moving = app.place(&token).await;

    let mut ws = connect(&app, &token).await;
    subscribe(&mut ws, &finished, Some(0)).await;
    let before = updates_until(&mut ws, &finished, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&before), [1, 2, 3, 4, 5]);
    let subscribed = subscribe(&mut ws, &moving, Some(0)).await;
    assert_eq!(subscribed["status"], "RECEIVED");
    assert_eq!(
        seqs(&updates_until(&mut ws, &moving, "RECEIVED").await),
        [1]
    );

    let TestApp {
        runtime, http, dir, ..
    } = app;
    // The same settings again: the same data directory, or the same database and bus
    // namespace on MongoDB and RabbitMQ.
    let settings = (*runtime.settings).clone();
    runtime.shutdown().await;
    // The node said goodbye to the session.
    let ending = next_message(&mut ws).await;
    assert!(
        !matches!(ending, Some(Ok(Message::Text(_)))),
        "unexpected frame {ending:?}"
    );
    let code = close_code(ending);
    assert!(code.is_none() || code == Some(1012), "closed with {code:?}");

    let runtime = app::start(settings)
        .await
        .expect("the node restarts on the same data");
    let app = TestApp {
        url: runtime.base_url(),
        runtime,
        http,
        dir,
    };
    let mut ws = connect(&app, &token).await;
    // The client had seen up to seq 3 of the finished order and seq 1 of the other.
    subscribe(&mut ws, &finished, Some(3)).await;
    let replayed = updates_until(&mut ws, &finished, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&replayed), [4, 5]);
    app.assign(&finished, &driver).await;
    for status in ["OUT_FOR_DELIVERY", "DELIVERED"] {
        let response = app
            .http
            .post(app.url(&format!("/api/orders/{finished}/delivery")))
            .bearer_auth(&driver)
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{status}");
    }
    let live = updates_until(&mut ws, &finished, "DELIVERED").await;
    assert_eq!(seqs(&live), [6, 7]);
    assert_eq!(statuses(&live), ["OUT_FOR_DELIVERY", "DELIVERED"]);

    // The order that was moving resumed after the restart; nothing of it is lost.
    subscribe(&mut ws, &moving, Some(1)).await;
    let resumed = updates_until(&mut ws, &moving, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&resumed), [2, 3, 4, 5]);
    assert_eq!(statuses(&resumed), JOURNEY_STATUSES[1..]);
}

/// With RabbitMQ every node's notifier consumes `events_exchange`, so a session sees
/// an order's updates whichever node made them. Two nodes cannot share the embedded
/// store, so this runs with `SWIFT_TEST_BACKEND=real` only.
#[tokio::test]
async fn a_session_on_one_node_follows_orders_placed_on_another() {
    if common::backend_overrides().get("bus").is_none() {
        eprintln!("skipped: two nodes need SWIFT_TEST_BACKEND=real (MongoDB and RabbitMQ)");
        return;
    }
    let first = spawn_app().await;
    let second = app::start((*first.runtime.settings).clone())
        .await
        .expect("a second node on the same store and bus");
    let (token, _) = first.register_client().await;
    let (mut ws, _) = connect_async(ws_url_at(second.http_addr, &token))
        .await
        .expect("the WebSocket on the second node opens");
    subscribe(&mut ws, "*", None).await;

    let order_id = first.place(&token).await;
    let updates = updates_until(&mut ws, &order_id, "READY_FOR_DELIVERY").await;
    assert_eq!(seqs(&updates), [1, 2, 3, 4, 5]);
    assert_eq!(statuses(&updates), JOURNEY_STATUSES);
    second.shutdown().await;
}

#[tokio::test]
async fn a_close_from_the_client_is_echoed() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let mut ws = connect(&app, &token).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    app.runtime.shutdown().await;
}

/// Order updates through "*" until every order of `orders` reached `status` (updates
/// of `also` may come in between); returns the seqs received per order and the
/// cursor of the last update.
async fn everything_until(
    ws: &mut Ws,
    orders: &[&str],
    also: &[&str],
    status: &str,
) -> (BTreeMap<String, Vec<u64>>, String) {
    let mut received: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut done = BTreeSet::new();
    let mut cursor = String::new();
    while done.len() < orders.len() {
        let frame = next_frame(ws).await;
        assert_eq!(frame["type"], "order-update", "{frame}");
        let order_id = frame["orderId"].as_str().unwrap().to_owned();
        assert!(
            orders.contains(&order_id.as_str()) || also.contains(&order_id.as_str()),
            "not followed: {frame}"
        );
        cursor = frame["cursor"].as_str().expect("a cursor").to_owned();
        if frame["status"] == status && orders.contains(&order_id.as_str()) {
            done.insert(order_id.clone());
        }
        received
            .entry(order_id)
            .or_default()
            .push(frame["seq"].as_u64().unwrap());
    }
    (received, cursor)
}

#[tokio::test]
async fn a_customer_follows_all_its_orders_on_one_session_and_catches_up_after_a_reconnect() {
    let app = spawn_app().await;
    let (token, _) = app.register_client().await;
    let (stranger, _) = app.register_client().await;
    let mut ws = connect(&app, &token).await;
    subscribe(&mut ws, "*", None).await;
    let first = app.place(&token).await;
    let (seen, cursor) = everything_until(&mut ws, &[&first], &[], "READY_FOR_DELIVERY").await;
    assert_eq!(seen[&first], [1, 2, 3, 4, 5]);
    drop(ws);

    // While away: two new orders of its own, one of someone else's.
    let missed = [app.place(&token).await, app.place(&token).await];
    let theirs = app.place(&stranger).await;
    for order_id in &missed {
        app.wait_for_status(&token, order_id, "READY_FOR_DELIVERY", JOURNEY)
            .await;
    }
    app.wait_for_status(&stranger, &theirs, "READY_FOR_DELIVERY", JOURNEY)
        .await;

    let mut ws = connect(&app, &token).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "orderId": "*", "since": cursor}),
    )
    .await;
    assert_eq!(next_frame(&mut ws).await["type"], "subscribed");
    // Replayed in full (updates of the first order from just before the cursor may
    // come again), then live: a new order placed now follows on the same feed.
    let (replayed, _) = everything_until(
        &mut ws,
        &[&missed[0], &missed[1]],
        &[&first],
        "READY_FOR_DELIVERY",
    )
    .await;
    for order_id in &missed {
        assert_eq!(replayed[order_id], [1, 2, 3, 4, 5], "{order_id}");
    }
    let again = replayed.get(&first).cloned().unwrap_or_default();
    assert!(again.windows(2).all(|w| w[1] == w[0] + 1), "{again:?}");
    let live = app.place(&token).await;
    let (followed, _) = everything_until(&mut ws, &[&live], &[&first], "READY_FOR_DELIVERY").await;
    assert_eq!(followed[&live], [1, 2, 3, 4, 5]);
    app.runtime.shutdown().await;
}
