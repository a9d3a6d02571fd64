//! The envelope as AMQP headers: `traceparent` (W3C trace context) and
//! `x-posted-at-us` (microseconds since the Unix epoch, for time-on-the-bus).

use crate::bus::Envelope;
use crate::observability::TRACEPARENT;
use chrono::DateTime;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

const POSTED_AT: &str = "x-posted-at-us";

pub(super) fn headers(envelope: &Envelope) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(at) = envelope.posted_at {
        headers.insert(
            ShortString::from(POSTED_AT),
            AMQPValue::LongLongInt(at.timestamp_micros()),
        );
    }
    if let Some(traceparent) = &envelope.traceparent {
        headers.insert(
            ShortString::from(TRACEPARENT),
            AMQPValue::LongString(traceparent.as_str().into()),
        );
    }
    headers
}

pub(super) fn read(properties: &BasicProperties) -> Envelope {
    let header = |key: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(key))
    };
    let posted_at = match header(POSTED_AT) {
        Some(AMQPValue::LongLongInt(micros)) => DateTime::from_timestamp_micros(*micros),
        _ => None,
    };
    let traceparent = match header(TRACEPARENT) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Envelope {
        posted_at,
        traceparent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_envelope_survives_the_headers() {
        let envelope = Envelope {
            posted_at: DateTime::from_timestamp_micros(Utc::now().timestamp_micros()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let properties = BasicProperties::default().with_headers(headers(&envelope));
        assert_eq!(read(&properties), envelope);
        assert_eq!(read(&BasicProperties::default()), Envelope::default());
    }
}
