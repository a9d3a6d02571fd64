//! A warehouse that speaks the WMS line protocol, for tests, benchmarks and the
//! embedded default. It keeps the reservations it holds, applies each effect once
//! per idempotency key, and obeys the shared knobs (latency, failures, refusals).
//!
//! The server follows mini-redis: a bounded number of connections (a semaphore
//! permit per connection, taken before accepting, so extra peers wait in the
//! backlog), one task per connection that answers its lines strictly in order, and a
//! shutdown token every task watches.

use super::codec::{Reply, Request, ServerCodec};
use crate::domain::{Operation, OrderId, Reservation};
use crate::protocols::simulator::{
    ControlledSimulator, EffectLedger, KnobSettings, LedgerSummary, Remembered, SimulatorKnobs,
    Verdict,
};
use crate::protocols::wms::codec::Line;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once by default.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// A peer that does not read its replies for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct WmsSimulator {
    knobs: SimulatorKnobs,
    ledger: EffectLedger,
    /// Reservations held, by order id.
    held: Remembered<OrderId, Reservation>,
    max_connections: usize,
}

impl Default for WmsSimulator {
    fn default() -> Self {
        Self::new(KnobSettings::default())
    }
}

impl WmsSimulator {
    pub fn new(settings: KnobSettings) -> Self {
        Self {
            knobs: SimulatorKnobs::new(settings),
            ledger: EffectLedger::default(),
            held: Remembered::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The same simulator, remembering its latest `effects` effects.
    pub fn remembering(self, effects: usize) -> Self {
        Self {
            ledger: EffectLedger::new(effects),
            held: Remembered::new(effects),
            ..self
        }
    }

    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for the
    /// connections to finish the request in hand. Only a dead listener ends it early;
    /// nothing a peer sends can.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let connections = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let simulator = Arc::clone(&self);
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        simulator.serve_connection(stream, shutdown).await;
                        tracing::trace!(%peer, "warehouse connection closed");
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "warehouse simulator could not accept a connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }

    /// Answers the lines of one connection in the order they came, one at a time:
    /// that order is what lets the client match replies without ids.
    async fn serve_connection(&self, stream: TcpStream, shutdown: CancellationToken) {
        if stream.set_nodelay(true).is_err() {
            return;
        }
        let mut lines = Framed::new(stream, ServerCodec::default());
        loop {
            let frame = tokio::select! {
                () = shutdown.cancelled() => return,
                frame = lines.next() => frame,
            };
            let reply = match frame {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "warehouse connection failed");
                    return;
                }
                Some(Ok(Err(bad_line))) => Reply::error(bad_line),
                // Shutting down while the knobs hold a request back: it has had no
                // effect yet, so it is dropped unanswered and the client may retry.
                Some(Ok(Ok(request))) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    reply = self.answer(request) => reply,
                },
            };
            match tokio::time::timeout(WRITE_TIMEOUT, lines.send(reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "warehouse reply not sent");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// The warehouse's decision on one request, effects included.
    pub async fn answer(&self, request: Request) -> Reply {
        match request {
            // Transport liveness, deliberately outside the knobs: an outage is the
            // warehouse failing its work, not the socket going away.
            Request::Ping => Reply::Pong,
            Request::Reserve { order_id, .. } => {
                let verdict = self.knobs.judge(None).await;
                if verdict == Verdict::Fail {
                    return Reply::error("warehouse unavailable");
                }
                let key = Operation::ReserveInventory.idempotency_key(&order_id);
                // A replay gets the recorded answer even while refusing new work: the
                // reservation was made and a refusal now would misreport it.
                if verdict == Verdict::Refuse && !self.ledger.contains(&key) {
                    return Reply::Refused {
                        reason: "no stock".into(),
                    };
                }
                let line = self.ledger.once(&key, || {
                    let reservation = reservation_for(&order_id);
                    let reply = Reply::Reserved {
                        warehouse: reservation.warehouse.clone(),
                        picking_location: reservation.picking_location.clone(),
                    };
                    self.held.insert(order_id.clone(), reservation);
                    render(&reply)
                });
                recorded(&line)
            }
            Request::Release { order_id } => {
                // A release undoes a reservation: it is never refused, only failed.
                if self.knobs.judge(None).await == Verdict::Fail {
                    return Reply::error("warehouse unavailable");
                }
                let key = Operation::ReleaseInventory.idempotency_key(&order_id);
                let line = self.ledger.once(&key, || {
                    let released = self.held.remove(&order_id);
                    let warehouse = released
                        .map(|r| r.warehouse)
                        .unwrap_or_else(|| reservation_for(&order_id).warehouse);
                    render(&Reply::Released { warehouse })
                });
                recorded(&line)
            }
        }
    }

    /// Reservations currently held.
    pub fn reservations(&self) -> usize {
        self.held.len()
    }
}

impl ControlledSimulator for WmsSimulator {
    fn knobs(&self) -> &SimulatorKnobs {
        &self.knobs
    }

    fn summary(&self) -> LedgerSummary {
        self.ledger.summary(HashMap::from([(
            "reservations".to_owned(),
            self.reservations(),
        )]))
    }
}

/// Where an order's package is kept: stable per order id, so a replayed or
/// re-released order names the same warehouse every time.
fn reservation_for(order_id: &OrderId) -> Reservation {
    let hash = fnv1a(order_id.as_str());
    let aisle = char::from(b'A' + (hash % 6) as u8);
    let rack = (hash / 6) % 20 + 1;
    let shelf = (hash / 120) % 10 + 1;
    Reservation {
        warehouse: format!("WH-{:03}", hash % 3 + 1),
        picking_location: Some(format!("{aisle}-{rack:02}-{shelf:02}")),
    }
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash: u32, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Replies are recorded in the ledger as their wire line.
fn render(reply: &Reply) -> String {
    reply
        .render()
        .unwrap_or_else(|e| format!("ERR|cannot record reply: {e}"))
}

fn recorded(line: &str) -> Reply {
    Reply::parse(line).unwrap_or_else(|e| Reply::error(format!("corrupt ledger entry: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PackageDetails;

    fn reserve(id: &str) -> Request {
        Request::Reserve {
            order_id: OrderId::parse(id).unwrap(),
            package: PackageDetails {
                weight: 2.0,
                dimensions: None,
                description: None,
                fragile: false,
            },
        }
    }

    fn release(id: &str) -> Request {
        Request::Release {
            order_id: OrderId::parse(id).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_reservation_is_held_once_and_released_once() {
        let wms = WmsSimulator::default();
        let first = wms.answer(reserve("ORD-1")).await;
        assert!(matches!(first, Reply::Reserved { .. }), "{first:?}");
        assert_eq!(wms.answer(reserve("ORD-1")).await, first);
        assert_eq!(wms.reservations(), 1);

        let Reply::Released { warehouse } = wms.answer(release("ORD-1")).await else {
            panic!("release was not acknowledged");
        };
        let Reply::Reserved {
            warehouse: reserved_in,
            ..
        } = first
        else {
            unreachable!()
        };
        assert_eq!(warehouse, reserved_in);
        assert!(matches!(
            wms.answer(release("ORD-1")).await,
            Reply::Released { .. }
        ));
        let summary = wms.summary();
        assert_eq!(summary.active["reservations"], 0);
        assert_eq!((summary.effects, summary.replays), (2, 2));
    }

    #[tokio::test]
    async fn knobs_fail_and_refuse_without_effects_but_never_refuse_a_release() {
        let wms = WmsSimulator::default();
        wms.knobs().update(|k| k.outage = true);
        assert_eq!(
            wms.answer(reserve("ORD-1")).await,
            Reply::error("warehouse unavailable")
        );
        wms.knobs().update(|k| {
            k.outage = false;
            k.refuse_all = true;
        });
        assert_eq!(
            wms.answer(reserve("ORD-1")).await,
            Reply::Refused {
                reason: "no stock".into()
            }
        );
        assert!(matches!(
            wms.answer(release("ORD-1")).await,
            Reply::Released { .. }
        ));
        assert_eq!(wms.reservations(), 0);
        assert_eq!(wms.summary().effects, 1, "only the release took effect");
    }

    #[tokio::test]
    async fn a_replayed_reservation_is_not_refused_after_the_fact() {
        let wms = WmsSimulator::default();
        let first = wms.answer(reserve("ORD-1")).await;
        wms.knobs().update(|k| k.refuse_all = true);
        assert_eq!(wms.answer(reserve("ORD-1")).await, first);
    }

    #[test]
    fn locations_are_stable_and_well_formed() {
        let id = OrderId::parse("ORD-20260204-ABC").unwrap();
        let a = reservation_for(&id);
        assert_eq!(a, reservation_for(&id));
        assert!(["WH-001", "WH-002", "WH-003"].contains(&a.warehouse.as_str()));
        let location = a.picking_location.clone().unwrap();
        let parts: Vec<&str> = location.split('-').collect();
        assert_eq!(parts.len(), 3, "{location}");
        assert!(parts[0].len() == 1 && parts[1].len() == 2 && parts[2].len() == 2);
    }
}
