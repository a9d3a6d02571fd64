//! The WMS line protocol over real sockets: raw bytes against the simulator, and the
//! pooled client against the simulator and against hand-rolled misbehaving peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use swiftlogistics::bus::StepRequest;
use swiftlogistics::domain::{
    Location, Operation, OperationOutcome, OrderId, PackageDetails, UserId,
};
use swiftlogistics::protocols::simulator::ControlledSimulator;
use swiftlogistics::protocols::wms::{MAX_LINE, Reply, Request, WmsClient, WmsSimulator};
use swiftlogistics::protocols::{CallError, SystemClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let served = tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("the simulator shuts down promptly");
        served.unwrap().unwrap();
    }
}

async fn start_on(simulator: Arc<WmsSimulator>, addr: &str) -> Running {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(simulator.serve(listener, shutdown.clone()));
    Running {
        addr,
        shutdown,
        server,
    }
}

async fn start(simulator: Arc<WmsSimulator>) -> Running {
    start_on(simulator, "127.0.0.1:0").await
}

struct Peer {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Self {
        let (read, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("a reply line in time")
            .unwrap();
        assert!(line.ends_with('\n'), "unterminated reply {line:?}");
        line.trim_end().to_owned()
    }
}

fn order(id: &str) -> OrderId {
    OrderId::parse(id).unwrap()
}

fn step(id: &str, operation: Operation) -> StepRequest {
    let at = |lat, lng| Location {
        lat,
        lng,
        address: None,
    };
    StepRequest {
        order_id: order(id),
        customer_id: UserId::from_trusted("usr_test"),
        operation,
        attempt: 1,
        epoch: 0,
        pickup: at(6.9271, 79.8612),
        delivery: at(7.2906, 80.6337),
        package: PackageDetails {
            weight: 2.5,
            dimensions: Some(serde_json::json!("30x20x10")),
            description: Some("books | pens".into()),
            fragile: true,
        },
        route_id: None,
    }
}

fn client(addr: SocketAddr, connections: usize, timeout: Duration) -> WmsClient {
    WmsClient::new(addr.to_string(), connections, timeout)
}

#[tokio::test]
async fn ping_and_bad_lines_get_answers_and_the_connection_stays_usable() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let mut peer = Peer::connect(server.addr).await;

    peer.send(b"PING\r\n").await;
    assert_eq!(peer.line().await, "PONG");

    peer.send(b"HELLO|there\n").await;
    assert_eq!(peer.line().await, "ERR|unknown command");
    peer.send(b"RESERVE|ORD-1|{not json}\n").await;
    assert!(peer.line().await.starts_with("ERR|invalid package details"));
    peer.send(b"\xff\xfe\n\n").await;
    assert_eq!(peer.line().await, "ERR|line is not valid UTF-8");
    assert_eq!(peer.line().await, "ERR|empty line");

    peer.send(b"PING\n").await;
    assert_eq!(peer.line().await, "PONG");
    assert_eq!(sim.summary().effects, 0, "no bad line had an effect");
    server.stop().await;
}

#[tokio::test]
async fn an_overlong_line_is_refused_and_the_next_line_is_served() {
    let server = start(Arc::new(WmsSimulator::default())).await;
    let mut peer = Peer::connect(server.addr).await;
    let flood = vec![b'x'; 16 * MAX_LINE];
    peer.send(&flood).await;
    peer.send(b"\nPING\n").await;
    assert_eq!(
        peer.line().await,
        format!("ERR|line longer than {MAX_LINE} bytes")
    );
    assert_eq!(peer.line().await, "PONG");
    server.stop().await;
}

#[tokio::test]
async fn reserving_an_order_twice_holds_one_reservation() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let line = b"RESERVE|ORD-20260204-TWICE|{\"weight\":1.5}\n";

    let mut first = Peer::connect(server.addr).await;
    first.send(line).await;
    let answer = first.line().await;
    assert!(answer.starts_with("ACK|WH-00"), "{answer}");
    assert!(answer.contains("|INVENTORY_RESERVED|"), "{answer}");

    let mut second = Peer::connect(server.addr).await;
    second.send(line).await;
    assert_eq!(
        second.line().await,
        answer,
        "the replay names the same place"
    );

    let summary = sim.summary();
    assert_eq!(summary.active["reservations"], 1);
    assert_eq!((summary.effects, summary.replays), (1, 1));

    second.send(b"RELEASE|ORD-20260204-TWICE\n").await;
    let released = second.line().await;
    let warehouse = answer.split('|').nth(1).unwrap();
    assert_eq!(released, format!("ACK|{warehouse}|RELEASED"));
    assert_eq!(sim.summary().active["reservations"], 0);
    server.stop().await;
}

#[tokio::test]
async fn the_client_reserves_and_releases() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let wms = client(server.addr, 2, PATIENCE);

    wms.ping().await.unwrap();
    let reserved = wms
        .execute(&step("ORD-A", Operation::ReserveInventory))
        .await
        .unwrap();
    let OperationOutcome::InventoryReserved(reservation) = reserved else {
        panic!("{reserved:?}");
    };
    assert!(reservation.warehouse.starts_with("WH-00"));
    assert_eq!(sim.reservations(), 1);

    let released = wms
        .execute(&step("ORD-A", Operation::ReleaseInventory))
        .await;
    assert_eq!(released, Ok(OperationOutcome::Undone));
    assert_eq!(sim.reservations(), 0);

    let elsewhere = wms.execute(&step("ORD-A", Operation::OptimizeRoute)).await;
    assert!(
        matches!(elsewhere, Err(CallError::Malformed(_))),
        "{elsewhere:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_stock_is_a_refusal_and_an_outage_is_an_error() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let wms = client(server.addr, 1, PATIENCE);

    sim.knobs().update(|k| k.refuse_all = true);
    let refused = wms
        .execute(&step("ORD-B", Operation::ReserveInventory))
        .await;
    assert_eq!(
        refused,
        Ok(OperationOutcome::Refused {
            reason: "no stock".into()
        })
    );

    sim.knobs().update(|k| {
        k.refuse_all = false;
        k.outage = true;
    });
    let failed = wms
        .execute(&step("ORD-B", Operation::ReserveInventory))
        .await;
    assert_eq!(
        failed,
        Err(CallError::Remote("warehouse unavailable".into()))
    );

    sim.knobs().update(|k| k.outage = false);
    let served = wms
        .execute(&step("ORD-B", Operation::ReserveInventory))
        .await;
    assert!(
        matches!(served, Ok(OperationOutcome::InventoryReserved(_))),
        "{served:?}"
    );
    assert_eq!(
        sim.summary().effects,
        1,
        "neither the refusal nor the outage reserved"
    );
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_requests_over_two_connections_each_get_their_own_reply() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let wms = Arc::new(client(server.addr, 2, PATIENCE));

    let calls = (0..300).map(|i| {
        let wms = Arc::clone(&wms);
        tokio::spawn(async move {
            let id = format!("ORD-PIPE-{i}");
            let outcome = match i % 3 {
                0 => wms.ping().await.map(|()| None),
                1 => wms
                    .execute(&step(&id, Operation::ReserveInventory))
                    .await
                    .map(Some),
                _ => wms
                    .execute(&step(&id, Operation::ReleaseInventory))
                    .await
                    .map(Some),
            };
            (i, id, outcome)
        })
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        let (i, id, outcome) = result.unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        match i % 3 {
            0 => assert_eq!(outcome, None),
            1 => {
                // The simulator replays what it answered that order: it must be what
                // this caller received, not a neighbour's reply.
                let recorded = sim
                    .answer(Request::Reserve {
                        order_id: order(&id),
                        package: step(&id, Operation::ReserveInventory).package,
                    })
                    .await;
                let Reply::Reserved {
                    warehouse,
                    picking_location,
                } = recorded
                else {
                    panic!("{recorded:?}");
                };
                let Some(OperationOutcome::InventoryReserved(got)) = outcome else {
                    panic!("request {i}: {outcome:?}");
                };
                assert_eq!(
                    (got.warehouse, got.picking_location),
                    (warehouse, picking_location)
                );
            }
            _ => assert_eq!(outcome, Some(OperationOutcome::Undone)),
        }
    }
    assert_eq!(sim.reservations(), 100);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_warehouse_times_out_and_the_pool_recovers() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let wms = client(server.addr, 1, Duration::from_millis(200));

    sim.knobs().update(|k| k.latency_ms = 1_000);
    let slow = wms
        .execute(&step("ORD-C", Operation::ReserveInventory))
        .await;
    assert_eq!(slow, Err(CallError::Timeout(200)));

    sim.knobs().update(|k| k.latency_ms = 0);
    let served = wms
        .execute(&step("ORD-D", Operation::ReserveInventory))
        .await;
    assert!(
        matches!(served, Ok(OperationOutcome::InventoryReserved(_))),
        "{served:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_dead_warehouse_is_an_error_and_a_restarted_one_is_used_again() {
    let sim = Arc::new(WmsSimulator::default());
    let server = start(Arc::clone(&sim)).await;
    let addr = server.addr;
    let wms = client(addr, 2, Duration::from_secs(2));
    wms.ping().await.unwrap();
    wms.ping().await.unwrap();

    server.stop().await;
    for _ in 0..2 {
        let down = wms
            .execute(&step("ORD-E", Operation::ReserveInventory))
            .await;
        assert!(matches!(down, Err(CallError::Connection(_))), "{down:?}");
    }

    let restarted = start_on(Arc::clone(&sim), &addr.to_string()).await;
    for _ in 0..2 {
        let up = wms
            .execute(&step("ORD-E", Operation::ReserveInventory))
            .await;
        assert!(
            matches!(up, Ok(OperationOutcome::InventoryReserved(_))),
            "{up:?}"
        );
    }
    assert_eq!(sim.summary().effects, 1);
    restarted.stop().await;
}

#[tokio::test]
async fn extra_connections_wait_for_a_free_slot() {
    let sim = Arc::new(WmsSimulator::default().with_max_connections(1));
    let server = start(sim).await;
    let mut first = Peer::connect(server.addr).await;
    first.send(b"PING\n").await;
    assert_eq!(first.line().await, "PONG");

    let mut second = Peer::connect(server.addr).await;
    second.send(b"PING\n").await;
    let mut early = String::new();
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        second.reader.read_line(&mut early),
    )
    .await;
    assert!(waited.is_err(), "served beyond the bound: {early:?}");

    drop(first);
    assert_eq!(second.line().await, "PONG");
    server.stop().await;
}

/// A fake warehouse that answers each request line with the next scripted line.
async fn scripted_warehouse(replies: Vec<&'static str>) -> (SocketAddr, JoinHandle<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(stream);
        for reply in replies {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
        reader.into_inner()
    });
    (addr, task)
}

#[tokio::test]
async fn a_garbled_reply_is_an_error_for_its_request_only() {
    let (addr, warehouse) = scripted_warehouse(vec!["WHAT?\n", "ERR|disk full\n", "PONG\n"]).await;
    let wms = client(addr, 1, PATIENCE);
    let garbled = wms
        .execute(&step("ORD-F", Operation::ReserveInventory))
        .await;
    assert!(
        matches!(garbled, Err(CallError::Malformed(_))),
        "{garbled:?}"
    );
    let failed = wms
        .execute(&step("ORD-F", Operation::ReleaseInventory))
        .await;
    assert_eq!(failed, Err(CallError::Remote("disk full".into())));
    wms.ping().await.unwrap();
    warehouse.await.unwrap();
}

#[tokio::test]
async fn dropping_the_client_closes_its_connections() {
    let (addr, warehouse) = scripted_warehouse(vec!["PONG\n"]).await;
    let wms = client(addr, 1, PATIENCE);
    wms.ping().await.unwrap();
    let mut server_side = warehouse.await.unwrap();

    drop(wms);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, server_side.read_to_end(&mut rest))
        .await
        .expect("the connection is closed once the client is gone");
    assert_eq!(read.unwrap(), 0);
}
