//! The HTTP server: accepts connections and serves the router on each with hyper's
//! HTTP/1.1 server, with the limits that keep one client from exhausting the node.
//!
//! - A connection must send a complete request head within
//!   `http.header_read_timeout_secs` of opening, and of finishing its previous
//!   response (hyper arms the same timer while a keep-alive connection waits for its
//!   next request), or it is closed: slow-loris clients and idle connections end.
//! - At most `http.max_connections` connections are open at once, and at most
//!   `http.max_connections_per_client` from one client address (IPv6: its /64;
//!   trusted proxies are exempt). A connection beyond either gets `503` with
//!   `Retry-After` and is closed. WebSocket sessions count as the connections they
//!   are, for as long as they are open.
//! - Each request carries `ConnectInfo<SocketAddr>` (the peer), for the per-address
//!   limits, and WebSocket upgrades work.
//! - When `shutdown` is cancelled, the listener closes, each connection finishes its
//!   request in flight and closes, and [`serve`] returns once all have.

use super::extract::ClientIp;
use crate::config::HttpSettings;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Refused connections being answered at once; beyond it they are just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How long a refused connection has to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, typically), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 93\r\n\r\n\
{\"error\":{\"code\":\"SERVICE_UNAVAILABLE\",\"message\":\"too many connections; retry in a moment\"}}\n\
";

/// The connection limits of [`serve`], from `[http]`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_per_client: usize,
    pub(crate) exempt: Vec<ipnet::IpNet>,
}

impl From<&HttpSettings> for ConnectionLimits {
    fn from(http: &HttpSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(http.header_read_timeout_secs.max(1)),
            max_connections: http.max_connections,
            max_per_client: http.max_connections_per_client,
            exempt: http.trusted_proxies.clone(),
        }
    }
}

/// Open connections, overall and per client address.
struct Gate {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    per_client: Arc<DashMap<IpAddr, usize>>,
}

/// One admitted connection's place; given back when the connection (or the
/// WebSocket it became) is dropped.
struct Admission {
    _slot: OwnedSemaphorePermit,
    client: Option<(IpAddr, Arc<DashMap<IpAddr, usize>>)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ip, counts)) = self.client.take() {
            counts.remove_if_mut(&ip, |_, open| {
                *open = open.saturating_sub(1);
                *open == 0
            });
        }
    }
}

impl Gate {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            open: Arc::new(Semaphore::new(
                limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            per_client: Arc::default(),
            limits,
        }
    }

    fn admit(&self, peer: IpAddr) -> Option<Admission> {
        let slot = self.open.clone().try_acquire_owned().ok()?;
        if self.limits.exempt.iter().any(|net| net.contains(&peer)) {
            return Some(Admission {
                _slot: slot,
                client: None,
            });
        }
        let key = ClientIp::rate_key(peer);
        let mut open = self.per_client.entry(key).or_insert(0);
        if *open >= self.limits.max_per_client {
            return None;
        }
        *open += 1;
        drop(open);
        Some(Admission {
            _slot: slot,
            client: Some((key, self.per_client.clone())),
        })
    }
}

/// A connection that holds its admission for as long as it lives, through a
/// WebSocket upgrade too (hyper hands the IO over to the upgraded socket).
struct Admitted {
    tcp: TcpStream,
    _admission: Admission,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every
/// connection has finished. Errors of single connections are logged, never fatal.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let gate = Gate::new(limits);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gate.limits.header_read_timeout);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        super::ws::tune_connection(&tcp);
        let Some(admission) = gate.admit(peer.ip()) else {
            metrics::counter!("swift_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "connection refused: too many open");
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(tcp, slot));
            }
            continue;
        };
        let io = TokioIo::new(Admitted {
            tcp,
            _admission: admission,
        });
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let connection = builder.serve_connection(io, service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection over the limits with a 503 and closes it, reading what the
/// client sent meanwhile so that the close does not reset the answer away.
async fn refuse(mut tcp: TcpStream, _slot: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        tcp.write_all(REFUSAL).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "SERVICE_UNAVAILABLE");
    }

    #[test]
    fn admissions_are_capped_overall_and_per_client_and_given_back() {
        let gate = Gate::new(ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_per_client: 2,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per client");
        let _third = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "overall");
        drop(first);
        assert!(
            gate.admit(a).is_some(),
            "a closed connection gives its place back"
        );
        assert_eq!(*gate.per_client.get(&a).unwrap(), 1);
        drop(second);
        assert!(gate.per_client.get(&a).is_none(), "nothing is left behind");
        let gate = Gate::new(ConnectionLimits {
            max_connections: 10,
            max_per_client: 1,
            ..gate.limits.clone()
        });
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| gate.admit(proxy).unwrap()).collect();
        assert_eq!(
            held.len(),
            5,
            "trusted proxies are exempt from the per-client cap"
        );
    }
}
