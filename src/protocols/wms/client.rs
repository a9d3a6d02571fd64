//! The runtime's side of the WMS protocol: a small pool of persistent connections,
//! each owned by one task that pipelines requests and matches replies in order.
//!
//! The warehouse answers the requests of one connection in the order it received
//! them, so a connection needs no request ids: the reply at the head of the stream
//! belongs to the oldest request still waiting. Connections are dialled lazily and
//! re-dialled on the next call after they break, so a warehouse restart costs the
//! requests that were on the wire and nothing after.

use super::codec::{ClientCodec, Line, Reply, Request};
use crate::domain::StepRequest;
use crate::domain::{Operation, OperationOutcome, Reservation};
use crate::protocols::{CallError, SystemClient};
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Requests queued for one connection before callers wait for room.
const QUEUE_DEPTH: usize = 256;
/// Requests written on one connection and not yet answered. Bounding it keeps the
/// unread replies well inside the socket buffers, so neither side can block the
/// other by not reading.
const MAX_IN_FLIGHT: usize = 256;

type ReplySlot = oneshot::Sender<Result<Reply, CallError>>;

/// A request on its way to a connection task, already rendered so a value the
/// protocol cannot carry is refused to its caller before it reaches the wire.
struct Call {
    line: String,
    reply: ReplySlot,
    /// When the caller stops waiting.
    deadline: Instant,
}

/// A request on the wire, waiting for its reply.
struct InFlight {
    reply: ReplySlot,
    /// Past its caller's deadline the connection is presumed hung and is closed.
    deadline: Instant,
}

pub struct WmsClient {
    addr: String,
    timeout: Duration,
    /// One entry per pooled connection: the queue of its task, while it lives.
    connections: Vec<Mutex<Option<mpsc::Sender<Call>>>>,
    next: AtomicUsize,
    /// Cancelled when the client is dropped, so no connection task outlives it.
    shutdown: CancellationToken,
}

impl WmsClient {
    /// No connection is made here: each is dialled by the first call that needs it.
    pub fn new(addr: String, connections: usize, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            connections: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
        }
    }

    /// Checks that the warehouse answers at all, for health probes.
    pub async fn ping(&self) -> Result<(), CallError> {
        match self.call(&Request::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one request and waits for its reply, all within the client's timeout.
    pub(crate) async fn call(&self, request: &Request) -> Result<Reply, CallError> {
        let line = request
            .render()
            .map_err(|e| CallError::Malformed(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let (index, connection) = tokio::time::timeout_at(deadline, self.connection())
            .await
            .map_err(|_| self.timed_out())??;
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            let call = Call {
                line,
                reply,
                deadline,
            };
            connection
                .send(call)
                .await
                .map_err(|_| CallError::Connection("connection to the warehouse closed".into()))?;
            answer
                .await
                .map_err(|_| CallError::Connection("connection to the warehouse lost".into()))?
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => {
                self.retire(index, &connection);
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> CallError {
        CallError::Timeout(millis(self.timeout))
    }

    /// The next connection in turn and its slot, dialling it if it is not live.
    async fn connection(&self) -> Result<(usize, mpsc::Sender<Call>), CallError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let slot = self
            .connections
            .get(index)
            .ok_or_else(|| CallError::Connection("empty connection pool".into()))?;
        // Held while dialling, so callers that land on a dead connection together
        // wait for one dial instead of racing several.
        let mut slot = slot.lock().await;
        if let Some(queue) = slot.as_ref().filter(|q| !q.is_closed()) {
            return Ok((index, queue.clone()));
        }
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| CallError::Connection(format!("{}: {e}", self.addr)))?;
        // Requests are small and latency-bound: do not let Nagle hold them back.
        stream
            .set_nodelay(true)
            .map_err(|e| CallError::Connection(e.to_string()))?;
        let queue = spawn_connection(stream, self.shutdown.child_token());
        *slot = Some(queue.clone());
        Ok((index, queue))
    }

    /// Takes a connection whose reply came too late out of the pool. Replies come in
    /// order, so anything sent after it would wait behind the slow one; the next
    /// call dials afresh while the old connection finishes what it already holds.
    /// A slot that is busy is being re-dialled by someone else and is left alone.
    fn retire(&self, index: usize, connection: &mpsc::Sender<Call>) {
        if let Some(Ok(mut slot)) = self.connections.get(index).map(Mutex::try_lock) {
            if slot.as_ref().is_some_and(|q| q.same_channel(connection)) {
                *slot = None;
            }
        }
    }
}

impl Drop for WmsClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for WmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WmsClient")
            .field("addr", &self.addr)
            .field("connections", &self.connections.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[async_trait]
impl SystemClient for WmsClient {
    async fn execute(&self, request: &StepRequest) -> Result<OperationOutcome, CallError> {
        match request.operation {
            Operation::ReserveInventory => {
                let reserve = Request::Reserve {
                    order_id: request.order_id.clone(),
                    package: request.package.clone(),
                };
                match self.call(&reserve).await? {
                    Reply::Reserved {
                        warehouse,
                        picking_location,
                    } => Ok(OperationOutcome::InventoryReserved(Reservation {
                        warehouse,
                        picking_location,
                    })),
                    Reply::Refused { reason } => Ok(OperationOutcome::Refused { reason }),
                    other => Err(unexpected(other)),
                }
            }
            Operation::ReleaseInventory => {
                let release = Request::Release {
                    order_id: request.order_id.clone(),
                };
                match self.call(&release).await? {
                    Reply::Released { .. } => Ok(OperationOutcome::Undone),
                    Reply::Refused { reason } => Ok(OperationOutcome::Refused { reason }),
                    other => Err(unexpected(other)),
                }
            }
            other => Err(CallError::Malformed(format!(
                "the warehouse does not handle {}",
                other.name()
            ))),
        }
    }
}

/// `ERR` is the warehouse's own failure, worth retrying; any other reply out of
/// place means the peer does not speak the protocol as we do.
fn unexpected(reply: Reply) -> CallError {
    match reply {
        Reply::Error { reason } => CallError::Remote(reason),
        other => CallError::Malformed(format!("unexpected reply {other:?}")),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the task that owns `stream` and returns its request queue. Once the pool
/// lets go of the queue, the task answers what is already on the wire and ends; it
/// ends at once when the socket breaks, when a reply is overdue or when the pool is
/// dropped. Whatever it still holds is then dropped, which its callers see as
/// `CallError::Connection`.
fn spawn_connection(stream: TcpStream, shutdown: CancellationToken) -> mpsc::Sender<Call> {
    let (queue, calls) = mpsc::channel(QUEUE_DEPTH);
    let (in_flight, waiting) = mpsc::channel(MAX_IN_FLIGHT);
    let (read, write) = stream.into_split();
    tokio::spawn(async move {
        let writer = write_requests(calls, in_flight, BufWriter::new(write));
        let reader = read_replies(waiting, FramedRead::new(read, ClientCodec::default()));
        tokio::pin!(writer, reader);
        let reason = tokio::select! {
            () = shutdown.cancelled() => "the pool was dropped".to_owned(),
            reason = &mut reader => reason,
            written = &mut writer => match written {
                Err(e) => format!("write failed: {e}"),
                Ok(()) => tokio::select! {
                    () = shutdown.cancelled() => "the pool was dropped".to_owned(),
                    reason = reader => reason,
                },
            },
        };
        tracing::debug!(%reason, "warehouse connection closed");
    });
    queue
}

/// Writes queued requests until the queue closes; dropping `in_flight` on return
/// tells the reader that no more replies are due than those it was handed.
async fn write_requests(
    mut calls: mpsc::Receiver<Call>,
    in_flight: mpsc::Sender<InFlight>,
    mut out: BufWriter<OwnedWriteHalf>,
) -> std::io::Result<()> {
    while let Some(call) = calls.recv().await {
        // The caller already gave up (timed out): spare the warehouse the work.
        if call.reply.is_closed() {
            continue;
        }
        // Registered before it is written, so the reader always knows whose reply
        // comes next; waiting here is the in-flight bound.
        let waiting = InFlight {
            reply: call.reply,
            deadline: call.deadline,
        };
        if in_flight.send(waiting).await.is_err() {
            return Ok(());
        }
        out.write_all(call.line.as_bytes()).await?;
        out.write_all(b"\n").await?;
        // Batch the lines of a burst into one write; flush once the queue is empty.
        if calls.is_empty() {
            out.flush().await?;
        }
    }
    Ok(())
}

/// Hands each reply to the oldest waiting request. Returns why the connection ended.
async fn read_replies(
    mut waiting: mpsc::Receiver<InFlight>,
    mut replies: FramedRead<OwnedReadHalf, ClientCodec>,
) -> String {
    loop {
        // Idle, the socket is still watched so a closed connection is noticed (and
        // re-dialled) before the next request is sent into it. Waiting requests come
        // first: each is registered before it is written, so a reply that finds none
        // waiting was never asked for.
        let head = tokio::select! {
            biased;
            head = waiting.recv() => match head {
                Some(head) => head,
                None => return "every request was answered".into(),
            },
            frame = replies.next() => return match frame {
                None => "closed by the warehouse".into(),
                Some(Err(e)) => e.to_string(),
                Some(Ok(_)) => "the warehouse sent a reply nobody asked for".into(),
            },
        };
        let (answer, end) = match tokio::time::timeout_at(head.deadline, replies.next()).await {
            // Its caller has timed out already; whatever queued behind it would wait
            // on a peer that may never answer.
            Err(_) => (
                Err(CallError::Connection("reply overdue".into())),
                Some("a reply was overdue".to_owned()),
            ),
            Ok(None) => (
                Err(CallError::Connection("closed by the warehouse".into())),
                Some("closed by the warehouse".to_owned()),
            ),
            Ok(Some(Err(e))) => (
                Err(CallError::Connection(e.to_string())),
                Some(e.to_string()),
            ),
            // One unreadable line is one bad reply: the next line still answers the
            // next request.
            Ok(Some(Ok(Err(bad_line)))) => (Err(CallError::Malformed(bad_line.to_string())), None),
            Ok(Some(Ok(Ok(reply)))) => (Ok(reply), None),
        };
        // The caller may have timed out already; its reply is simply not wanted.
        let _ = head.reply.send(answer);
        if let Some(reason) = end {
            return reason;
        }
    }
}
