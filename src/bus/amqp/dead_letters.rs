//! Reading and redriving the dead-letter queues, without ever losing a message:
//! listing holds what it read unacknowledged and hands it all back; redriving drops
//! a dead letter only once its republished copy is confirmed.

use super::link::{Link, unavailable, within};
use super::topology::{DELIVERY_RETRIES, WorkQueue};
use crate::bus::{BusError, DeadLetter};
use chrono::DateTime;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::Duration;

/// Longest body shown in a listing; dead letters can be arbitrary garbage.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub(super) fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(key)
}

/// Earlier deliveries of a message, as a quorum queue counts them.
pub(super) fn delivery_count(properties: &BasicProperties) -> u64 {
    header(properties, "x-delivery-count")
        .and_then(integer)
        .unwrap_or(0)
}

/// The most recent `x-death` entry (the broker keeps them newest first).
fn latest_death(properties: &BasicProperties) -> Option<&FieldTable> {
    match header(properties, "x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

/// Deliveries that ended in dead-lettering, over every time the message went round
/// (redrives included), from the `x-death` history alone: it counts the
/// dead-letterings per queue and reason; one for the delivery limit stands for a
/// first delivery plus every retry, one for a rejection (a malformed message) for
/// the single delivery that was refused. The message's own `x-delivery-count` is
/// no guide here: the quorum dead-letter queue raises it each time a listing
/// hands the message back.
fn attempts(reason: &str, death: Option<&FieldTable>) -> u64 {
    let deaths = death
        .and_then(|d| d.inner().get("count"))
        .and_then(integer)
        .unwrap_or(1)
        .max(1);
    if reason == "delivery_limit" {
        deaths.saturating_mul(DELIVERY_RETRIES + 1)
    } else {
        deaths
    }
}

fn describe(work: &WorkQueue, delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    let death = latest_death(properties);
    let reason = death
        .and_then(|d| d.inner().get("reason"))
        .and_then(text)
        .or_else(|| header(properties, "x-first-death-reason").and_then(text))
        .unwrap_or_else(|| "unknown".to_owned());
    let dead_lettered_at = death
        .and_then(|d| d.inner().get("time"))
        .and_then(integer)
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .map(|at| at.to_rfc3339());
    let attempts = attempts(&reason, death);
    let shown = &delivery.data[..delivery.data.len().min(MAX_BODY_BYTES)];
    DeadLetter {
        queue: work.logical.clone(),
        reason,
        attempts,
        body: String::from_utf8_lossy(shown).into_owned(),
        dead_lettered_at,
    }
}

async fn open_channel(link: &Link) -> Result<Channel, BusError> {
    // At once while no broker is connected: an operator gets an answer, not a wait.
    let session = link.live_session()?;
    within(
        link.limit,
        "opening a channel",
        session.connection.create_channel(),
    )
    .await
}

async fn close(channel: &Channel, limit: Duration) {
    // Closing also requeues anything still unacknowledged on the channel.
    let _ = within(limit, "closing a channel", channel.close(200, "OK".into())).await;
}

/// Up to `limit` dead letters, oldest first within each queue; all stay queued.
pub(super) async fn list(link: &Link, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
    let mut found = Vec::new();
    if limit == 0 {
        return Ok(found);
    }
    let channel = open_channel(link).await?;
    let mut last_tag = None;
    let read = browse(link, &channel, limit, &mut found, &mut last_tag).await;
    let returned = match last_tag {
        Some(tag) => {
            let back = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            within(
                link.limit,
                "returning dead letters",
                channel.basic_nack(tag, back),
            )
            .await
        }
        None => Ok(()),
    };
    close(&channel, link.limit).await;
    read?;
    returned?;
    Ok(found)
}

/// How many dead letters wait in each dead-letter queue (passive declares: nothing
/// is read).
pub(super) async fn depths(link: &Link) -> Result<Vec<(String, u64)>, BusError> {
    let channel = open_channel(link).await?;
    let mut depths = Vec::new();
    let mut counted = Ok(());
    for work in link.names().work_queues() {
        match count(link.limit, &channel, work).await {
            Ok(waiting) => depths.push((work.logical.clone(), u64::from(waiting))),
            Err(e) => {
                counted = Err(e);
                break;
            }
        }
    }
    close(&channel, link.limit).await;
    counted.map(|()| depths)
}

async fn count(limit: Duration, channel: &Channel, work: &WorkQueue) -> Result<u32, BusError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = within(
        limit,
        "counting dead letters",
        channel.queue_declare(
            work.dead_letters.as_str().into(),
            passive,
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(declared.message_count())
}

async fn browse(
    link: &Link,
    channel: &Channel,
    limit: usize,
    found: &mut Vec<DeadLetter>,
    last_tag: &mut Option<u64>,
) -> Result<(), BusError> {
    let keep = BasicGetOptions { no_ack: false };
    for work in link.names().work_queues() {
        while found.len() < limit {
            let got = within(
                link.limit,
                "reading a dead-letter queue",
                channel.basic_get(work.dead_letters.as_str().into(), keep),
            )
            .await?;
            let Some(message) = got else { break };
            *last_tag = Some(message.delivery.delivery_tag);
            found.push(describe(work, &message.delivery));
        }
    }
    Ok(())
}

/// Moves the dead letters of `queue` back onto it, as many as were waiting when the
/// redrive began (so a message that fails again is not redriven twice in one call).
pub(super) async fn redrive(link: &Link, queue: &str) -> Result<usize, BusError> {
    let work = link
        .names()
        .resolve(queue)
        .ok_or_else(|| BusError::NoSuchQueue(queue.to_owned()))?
        .clone();
    let channel = open_channel(link).await?;
    let moved = move_back(link.limit, &channel, &work).await;
    close(&channel, link.limit).await;
    moved
}

async fn move_back(
    limit: Duration,
    channel: &Channel,
    work: &WorkQueue,
) -> Result<usize, BusError> {
    within(
        limit,
        "enabling publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let waiting = count(limit, channel, work).await?;
    let mut moved = 0usize;
    while moved < waiting as usize {
        let got = within(
            limit,
            "reading a dead-letter queue",
            channel.basic_get(
                work.dead_letters.as_str().into(),
                BasicGetOptions { no_ack: false },
            ),
        )
        .await?;
        let Some(message) = got else { break };
        let delivery = message.delivery;
        let confirm = within(
            limit,
            "republishing a dead letter",
            channel.basic_publish(
                "".into(),
                work.name.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &delivery.data,
                fresh_attempts(&delivery.properties),
            ),
        )
        .await?;
        match within(limit, "awaiting the republish confirm", confirm).await? {
            Confirmation::Ack(None) => {}
            // The dead letter stays: closing the channel returns it to its queue.
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) | Confirmation::NotRequested => {
                return Err(BusError::Rejected(format!(
                    "{} refused a redriven message after {moved} were moved",
                    work.logical
                )));
            }
        }
        let acked = within(
            limit,
            "dropping a redriven dead letter",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await?;
        if !acked {
            return Err(unavailable(
                "dropping a redriven dead letter",
                "channel closed (the message may now be both queued and dead-lettered)",
            ));
        }
        moved += 1;
    }
    Ok(moved)
}

/// The message's properties without its delivery count, so the work queue counts
/// its retries from zero again (the `x-death` history stays).
fn fresh_attempts(properties: &BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers().as_ref() else {
        return properties.clone();
    };
    let mut kept = FieldTable::default();
    for (key, value) in headers {
        if key.as_str() != "x-delivery-count" {
            kept.insert(key.clone(), value.clone());
        }
    }
    properties.clone().with_headers(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn headers(entries: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert(ShortString::from(key), value);
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn delivery_count_reads_any_integer_and_defaults_to_zero() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        let props = headers(vec![("x-delivery-count", AMQPValue::LongLongInt(3))]);
        assert_eq!(delivery_count(&props), 3);
        let props = headers(vec![("x-delivery-count", AMQPValue::LongInt(-1))]);
        assert_eq!(delivery_count(&props), 0);
    }

    #[test]
    fn the_latest_death_gives_reason_and_time() {
        let mut death = FieldTable::default();
        death.insert(
            "reason".into(),
            AMQPValue::LongString(LongString::from("delivery_limit")),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_767_225_600));
        let mut older = FieldTable::default();
        older.insert(
            "reason".into(),
            AMQPValue::LongString(LongString::from("rejected")),
        );
        let deaths = FieldArray::from(vec![
            AMQPValue::FieldTable(death),
            AMQPValue::FieldTable(older),
        ]);
        let props = headers(vec![
            ("x-death", AMQPValue::FieldArray(deaths)),
            ("x-delivery-count", AMQPValue::LongLongInt(4)),
        ]);
        let death = latest_death(&props).unwrap();
        assert_eq!(
            death.inner().get("reason").and_then(text).as_deref(),
            Some("delivery_limit")
        );
        assert_eq!(
            attempts("delivery_limit", Some(death)),
            DELIVERY_RETRIES + 1
        );
        // Listings raise the dead letter's own delivery count; attempts stay.
        assert_eq!(attempts("rejected", None), 1);
        let stripped = fresh_attempts(&props);
        assert_eq!(delivery_count(&stripped), 0);
        assert!(header(&stripped, "x-death").is_some());
    }
}
