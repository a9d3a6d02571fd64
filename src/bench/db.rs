//! `swiftlogistics bench-db`: the write ceiling of a MongoDB server, measured with
//! the driver and the document shapes the runtime uses, so that an order journey's
//! throughput can be stated as a share of what the database allows.
//!
//! Each phase writes into a scratch database (dropped at the end) that has the store's
//! collections and indexes, at a fixed number of calls in flight: single-document inserts of new orders, compare-and-set
//! updates that push one event (what a saga step costs), lookups by order id, and
//! the same inserts and updates sent many to a call, which is how the store batches
//! writes of concurrent orders.

use super::report::{Latency, duration, latency_histogram, per_second};
use crate::domain::{NewOrder, Order, OrderId, OrderStatus, UserId};
use crate::store::mongo::{IMMUTABLE_FIELDS, MongoStore};
use anyhow::{Context as _, bail};
use chrono::Utc;
use hdrhistogram::Histogram;
use mongodb::bson::{self, Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_DOCUMENTS: u64 = 1_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchDbArgs {
    /// The server to measure (put `retryWrites=false` in it, as for the node).
    #[arg(long, env = "MONGODB_URI")]
    pub uri: String,
    /// Scratch database, dropped before and after the run.
    #[arg(long, default_value = "swiftlogistics_bench_db")]
    pub database: String,
    /// Documents written per phase.
    #[arg(long, default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DOCUMENTS))]
    pub documents: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Documents per call in the batched phases.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Also print the results as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// One phase's outcome.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    pub name: &'static str,
    pub documents: u64,
    pub documents_per_call: u64,
    pub(crate) seconds: f64,
    pub documents_per_second: f64,
    pub call_latency: Latency,
}

pub async fn run(args: BenchDbArgs) -> anyhow::Result<()> {
    let phases = measure(&args).await?;
    println!(
        "MongoDB write ceiling: {} documents per phase, {} calls in flight",
        args.documents, args.concurrency
    );
    for phase in &phases {
        println!(
            "  {:<34} {:>9.0} documents/s  ({} per call; call p50 {}  p99 {})",
            phase.name,
            phase.documents_per_second,
            phase.documents_per_call,
            duration(phase.call_latency.p50_micros),
            duration(phase.call_latency.p99_micros),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&phases)?);
    }
    Ok(())
}

/// Runs every phase in the scratch database, which is dropped before and after.
pub async fn measure(args: &BenchDbArgs) -> anyhow::Result<Vec<Phase>> {
    let mut options = ClientOptions::parse(&args.uri)
        .await
        .context("invalid MongoDB URI")?;
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.app_name = Some("swiftlogistics-bench-db".into());
    options.max_pool_size = Some(args.concurrency.max(10));
    let client = Client::with_options(options)?;
    let db = client.database(&args.database);
    db.drop().await.context("cannot reach the server")?;
    let bench = Bench::new(&args.uri, &db, args).await?;
    let ids: Vec<String> = (0..args.documents).map(order_id).collect();
    let batch = u64::from(args.batch);

    let phases = vec![
        bench
            .phase("insert_one", &ids, 1, |bench, ids| async move {
                bench.orders.insert_one(bench.order(&ids[0])).await?;
                Ok(())
            })
            .await?,
        bench
            .phase(
                "update_one (compare-and-set)",
                &ids,
                1,
                |bench, ids| async move {
                    let (filter, update) = bench.step(&ids[0], 1);
                    let result = bench.orders.update_one(filter, update).await?;
                    expect_matched(result.matched_count, 1)
                },
            )
            .await?,
        bench
            .phase("find_one by orderId", &ids, 1, |bench, ids| async move {
                bench
                    .orders
                    .find_one(doc! { "orderId": &ids[0] })
                    .await?
                    .context("order missing")?;
                Ok(())
            })
            .await?,
        {
            bench.orders.delete_many(doc! {}).await?;
            bench
                .phase("insert_many", &ids, batch, |bench, ids| async move {
                    let documents: Vec<Document> = ids.iter().map(|id| bench.order(id)).collect();
                    bench.orders.insert_many(documents).ordered(false).await?;
                    Ok(())
                })
                .await?
        },
        bench
            .phase(
                "update command, compare-and-set",
                &ids,
                batch,
                |bench, ids| async move {
                    let updates: Vec<Document> = ids
                        .iter()
                        .map(|id| {
                            let (filter, update) = bench.step(id, 1);
                            doc! { "q": filter, "u": update }
                        })
                        .collect();
                    let reply = bench
                        .db
                        .run_command(
                            doc! { "update": "orders", "updates": updates, "ordered": false },
                        )
                        .await?;
                    let matched = reply.get_i32("n").map(i64::from).or(reply.get_i64("n"))?;
                    expect_matched(u64::try_from(matched)?, ids.len() as u64)
                },
            )
            .await?,
    ];
    db.drop().await?;
    Ok(phases)
}

fn order_id(n: u64) -> String {
    format!("ORD-20260101-{n:010}")
}

fn expect_matched(matched: u64, expected: u64) -> anyhow::Result<()> {
    if matched == expected {
        Ok(())
    } else {
        bail!("{matched} of {expected} compare-and-set updates matched")
    }
}

#[derive(Clone)]
struct Bench {
    db: Database,
    orders: Collection<Document>,
    /// A received order as the node stores it, with its first event in its log.
    template: Arc<Document>,
    /// The order's fields after a step, without those an update never rewrites.
    advanced: Arc<Document>,
    event: Arc<Document>,
    concurrency: usize,
}

impl Bench {
    /// The scratch database gets the store's own collections and indexes (made by
    /// connecting a `MongoStore` to it), so every write maintains what the node's do.
    async fn new(uri: &str, db: &Database, args: &BenchDbArgs) -> anyhow::Result<Self> {
        MongoStore::connect(uri, db.name(), Duration::from_secs(30))
            .await
            .context("cannot create the store's indexes")?;
        let orders = db.collection::<Document>("orders");
        let request = NewOrder::parse(&serde_json::json!({
            "pickupLocation": {"lat": 40.7128, "lng": -74.0060, "address": "123 Main St"},
            "deliveryAddress": {"lat": 40.7589, "lng": -73.9851, "address": "456 Oak Ave"},
            "packageDetails": {"weight": 5.5, "description": "Electronics", "fragile": true}
        }))
        .map_err(|e| anyhow::anyhow!("bench order: {e:?}"))?;
        let id = OrderId::parse(&order_id(0)).context("bench order id")?;
        let (order, event) =
            Order::receive(id, UserId::from_trusted("usr_bench"), request, Utc::now());
        let mut template = bson::to_document(&order)?;
        template.insert("events", vec![bson::to_document(&event)?]);
        let mut next = order.clone();
        next.status = OrderStatus::CmsValidated;
        let event = next.event(
            2,
            "Customer order validated by CMS",
            Value::Null,
            Utc::now(),
        );
        let mut advanced = bson::to_document(&next)?;
        for fixed in IMMUTABLE_FIELDS {
            advanced.remove(fixed);
        }
        Ok(Self {
            db: db.clone(),
            orders,
            template: Arc::new(template),
            advanced: Arc::new(advanced),
            event: Arc::new(bson::to_document(&event)?),
            concurrency: usize::try_from(args.concurrency)?,
        })
    }

    fn order(&self, id: &str) -> Document {
        let mut document = (*self.template).clone();
        document.insert("orderId", id);
        document
    }

    /// The compare-and-set of one saga step as the store writes it: the order's
    /// fields `$set` (version `from` to `from + 1`), one event pushed.
    fn step(&self, id: &str, from: i64) -> (Document, Document) {
        let mut event = (*self.event).clone();
        event.insert("orderId", id);
        let mut fields = (*self.advanced).clone();
        fields.insert("version", from + 1);
        fields.insert("seq", from + 1);
        fields.insert("updatedAt", bson::DateTime::now());
        let filter = doc! { "orderId": id, "version": from, "seq": from };
        let update = doc! { "$set": fields, "$push": { "events": { "$each": [event] } } };
        (filter, update)
    }

    /// Runs `call` over `ids` in chunks of `per_call`, `concurrency` calls at once,
    /// each call with a handle of its own.
    async fn phase<F, Fut>(
        &self,
        name: &'static str,
        ids: &[String],
        per_call: u64,
        call: F,
    ) -> anyhow::Result<Phase>
    where
        F: Fn(Bench, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let chunk = usize::try_from(per_call)?;
        let mut chunks = ids.chunks(chunk).map(<[String]>::to_vec);
        let call = Arc::new(call);
        let mut calls = JoinSet::new();
        let mut histogram: Histogram<u64> = latency_histogram()?;
        let started = Instant::now();
        let launch = |calls: &mut JoinSet<anyhow::Result<Duration>>, ids: Vec<String>| {
            let call = call.clone();
            let bench = self.clone();
            calls.spawn(async move {
                let at = Instant::now();
                tokio::time::timeout(CALL_TIMEOUT, call(bench, ids))
                    .await
                    .context("call timed out")??;
                Ok(at.elapsed())
            });
        };
        for ids in chunks.by_ref().take(self.concurrency) {
            launch(&mut calls, ids);
        }
        while let Some(done) = calls.join_next().await {
            let took = done.context("call panicked")??;
            histogram.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            if let Some(ids) = chunks.next() {
                launch(&mut calls, ids);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let documents = ids.len() as u64;
        Ok(Phase {
            name,
            documents,
            documents_per_call: per_call,
            seconds,
            documents_per_second: per_second(documents, seconds),
            call_latency: Latency::of(&histogram),
        })
    }
}
