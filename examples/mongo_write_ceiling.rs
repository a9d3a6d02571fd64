//! How many orders per second the MongoDB store can persist on this machine, with
//! nothing else running: each order is one intake (`create_order`) and the four
//! transitions of a happy journey (`apply` x 4), the writes an order needs before it
//! is READY_FOR_DELIVERY.
//!
//!     MONGODB_URI=... cargo run --release --example mongo_write_ceiling [orders] [tasks]
//!
//! Uses a database of its own (`ceiling<uuid>`) and drops it at the end.

use anyhow::{Context, bail};
use chrono::Utc;
use futures::future::try_join_all;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swiftlogistics::domain::{
    Location, NewOrder, Order, OrderId, OrderStatus, PackageDetails, UserId,
};
use swiftlogistics::store::mongo::MongoStore;
use swiftlogistics::store::{Intake, Store};

/// The statuses a happy journey passes through after RECEIVED.
const JOURNEY: [OrderStatus; 4] = [
    OrderStatus::CmsValidated,
    OrderStatus::InventoryReserved,
    OrderStatus::RouteOptimized,
    OrderStatus::ReadyForDelivery,
];

fn request() -> NewOrder {
    NewOrder {
        pickup_location: Location {
            lat: 40.5,
            lng: -74.25,
            address: Some("123 Main St".into()),
        },
        delivery_address: Location {
            lat: 40.75,
            lng: -73.5,
            address: Some("456 Oak Ave".into()),
        },
        package_details: PackageDetails {
            weight: 5.5,
            dimensions: None,
            description: Some("Electronics".into()),
            fragile: false,
        },
        scheduled_pickup_time: None,
        special_instructions: None,
    }
}

/// Places one order and walks it to READY_FOR_DELIVERY; returns the time each write
/// took.
async fn journey(store: &MongoStore, customer: &UserId) -> anyhow::Result<Vec<Duration>> {
    let now = Utc::now();
    let (mut order, first) =
        Order::receive(OrderId::generate(now), customer.clone(), request(), now);
    let mut took = Vec::with_capacity(1 + JOURNEY.len());
    let started = Instant::now();
    let intake = store
        .create_order(&order, &first, Some(order.order_id.as_str()))
        .await?;
    took.push(started.elapsed());
    if intake != Intake::Created {
        bail!("order {} was not created", order.order_id);
    }
    for status in JOURNEY {
        let now = Utc::now();
        order.status = status;
        order.version += 1;
        order.seq += 1;
        order.updated_at = now;
        let event = order.event(order.seq, status.as_str(), Value::Null, now);
        let started = Instant::now();
        store.apply(&order, &[event]).await?;
        took.push(started.elapsed());
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let uri = std::env::var("MONGODB_URI").context("set MONGODB_URI")?;
    let mut args = std::env::args().skip(1);
    let orders: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let tasks: usize = args.next().map_or(Ok(8), |a| a.parse())?.max(1);
    let database = format!("ceiling{}", uuid::Uuid::new_v4().simple());
    let store = Arc::new(MongoStore::connect(&uri, &database, Duration::from_secs(30)).await?);

    let started = Instant::now();
    let workers = (0..tasks).map(|worker| {
        let store = Arc::clone(&store);
        let share = orders / tasks + usize::from(worker < orders % tasks);
        async move {
            let customer = UserId::generate();
            let mut took = Vec::new();
            for _ in 0..share {
                took.extend(journey(&store, &customer).await?);
            }
            anyhow::Ok(took)
        }
    });
    let mut took: Vec<Duration> = try_join_all(workers).await?.into_iter().flatten().collect();
    let elapsed = started.elapsed();

    let unfinished = store.unfinished_orders().await?.len();
    let ready = store
        .count_by_status()
        .await?
        .into_iter()
        .find(|(status, _)| *status == OrderStatus::ReadyForDelivery)
        .map_or(0, |(_, n)| n);
    let _ = tokio::time::timeout(Duration::from_secs(30), store.database().drop()).await;
    if unfinished != 0 || ready != orders as u64 {
        bail!(
            "expected {orders} orders ready for delivery, found {ready} ({unfinished} unfinished)"
        );
    }

    took.sort();
    let secs = elapsed.as_secs_f64();
    println!(
        "{orders} orders x {} store writes with {tasks} concurrent tasks in {secs:.2} s",
        1 + JOURNEY.len()
    );
    println!(
        "{:.0} orders/s, {:.0} store calls/s; per call p50 {:?}, p99 {:?}, max {:?}",
        orders as f64 / secs,
        took.len() as f64 / secs,
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or_default()
    );
    Ok(())
}
