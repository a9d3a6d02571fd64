//! The WMS line protocol as pure values: typed requests and replies, how each becomes
//! one line, and a framing layer that cuts a byte stream into lines without ever
//! buffering more than one capped line.
//!
//! A line that does not parse is not a stream error: the decoder yields it as an
//! `Err(LineError)` item, because `tokio_util`'s `FramedRead` ends the stream after the
//! first decoder error and one bad line must not cost the whole connection.

use crate::domain::{OrderId, PackageDetails};
use bytes::{BufMut, BytesMut};
use std::io;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Longest line either side accepts, without its terminator. A package description
/// fits many times over; anything longer is a broken or hostile peer.
pub const MAX_LINE: usize = 64 * 1024;

/// What the runtime asks the warehouse.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `RESERVE|<orderId>|<packageDetails JSON>`
    Reserve {
        order_id: OrderId,
        package: PackageDetails,
    },
    /// `RELEASE|<orderId>`
    Release { order_id: OrderId },
    /// `PING`
    Ping,
}

/// What the warehouse answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ACK|<warehouse>|INVENTORY_RESERVED|<pickingLocation>`, or without the picking
    /// location as seed 000 6.4 answers: `ACK|WH-001|INVENTORY_RESERVED`.
    Reserved {
        warehouse: String,
        picking_location: Option<String>,
    },
    /// `ACK|<warehouse>|RELEASED`
    Released { warehouse: String },
    /// `NACK|<reason>`: a business refusal.
    Refused { reason: String },
    /// `PONG`
    Pong,
    /// `ERR|<reason>`: the line was malformed or the warehouse failed.
    Error { reason: String },
}

/// Why one line could not be read. The connection stays usable after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("empty line")]
    Empty,
    #[error("unknown command")]
    UnknownCommand,
    #[error("{0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The value holds a field the protocol cannot carry (a `|` or a line break where
    /// the grammar forbids it, a non-finite number, a line over the cap).
    #[error("cannot encode {0}")]
    Unencodable(&'static str),
}

/// One side's vocabulary: how a value becomes a line (without terminator) and back.
pub(crate) trait Line: Sized {
    fn parse(line: &str) -> Result<Self, LineError>;
    fn render(&self) -> Result<String, CodecError>;
}

impl Line for Request {
    fn parse(line: &str) -> Result<Self, LineError> {
        let line = tolerated(line);
        if line.is_empty() {
            return Err(LineError::Empty);
        }
        let (command, rest) = match line.split_once('|') {
            Some((command, rest)) => (command, Some(rest)),
            None => (line, None),
        };
        match (command, rest) {
            ("PING", None) => Ok(Self::Ping),
            ("PING", Some(_)) => Err(malformed("PING takes no fields")),
            ("RELEASE", Some(rest)) => Ok(Self::Release {
                order_id: parse_order_id(rest)?,
            }),
            ("RELEASE", None) => Err(malformed("RELEASE needs an order id")),
            ("RESERVE", Some(rest)) => {
                let (id, json) = rest
                    .split_once('|')
                    .ok_or_else(|| malformed("RESERVE needs an order id and package details"))?;
                let order_id = parse_order_id(id)?;
                let package: PackageDetails = serde_json::from_str(json)
                    .map_err(|e| LineError::Malformed(format!("invalid package details: {e}")))?;
                if !(package.weight.is_finite() && package.weight > 0.0) {
                    return Err(malformed("package weight must be a positive number"));
                }
                Ok(Self::Reserve { order_id, package })
            }
            ("RESERVE", None) => Err(malformed("RESERVE needs an order id and package details")),
            _ => Err(LineError::UnknownCommand),
        }
    }

    fn render(&self) -> Result<String, CodecError> {
        let line = match self {
            Self::Ping => "PING".to_owned(),
            Self::Release { order_id } => format!("RELEASE|{order_id}"),
            Self::Reserve { order_id, package } => {
                // serde_json writes a non-finite number as `null`, which the other side
                // would reject: refuse it here, where the caller can still be told.
                if !package.weight.is_finite() {
                    return Err(CodecError::Unencodable("a non-finite package weight"));
                }
                let json = serde_json::to_string(package)
                    .map_err(|_| CodecError::Unencodable("package details"))?;
                format!("RESERVE|{order_id}|{json}")
            }
        };
        capped(line)
    }
}

impl Line for Reply {
    fn parse(line: &str) -> Result<Self, LineError> {
        // `NACK|` and `ERR|` keep their separator: an empty reason is still a reason.
        if let Some(reason) = line.strip_prefix("NACK|") {
            return Ok(Self::Refused {
                reason: tolerated(reason).to_owned(),
            });
        }
        if let Some(reason) = line.strip_prefix("ERR|") {
            return Ok(Self::Error {
                reason: tolerated(reason).to_owned(),
            });
        }
        let line = tolerated(line);
        if line.is_empty() {
            return Err(LineError::Empty);
        }
        if line == "PONG" {
            return Ok(Self::Pong);
        }
        let fields: Vec<&str> = line.split('|').collect();
        match fields.as_slice() {
            ["ACK", warehouse, "INVENTORY_RESERVED", location @ ..]
                if !warehouse.is_empty() && location.len() <= 1 =>
            {
                Ok(Self::Reserved {
                    warehouse: (*warehouse).to_owned(),
                    picking_location: location
                        .first()
                        .filter(|l| !l.is_empty())
                        .map(|l| (*l).to_owned()),
                })
            }
            ["ACK", warehouse, "RELEASED"] if !warehouse.is_empty() => Ok(Self::Released {
                warehouse: (*warehouse).to_owned(),
            }),
            ["ACK", ..] => Err(malformed("unrecognised ACK")),
            _ => Err(LineError::UnknownCommand),
        }
    }

    fn render(&self) -> Result<String, CodecError> {
        let line = match self {
            Self::Pong => "PONG".to_owned(),
            Self::Reserved {
                warehouse,
                picking_location: Some(location),
            } => format!(
                "ACK|{}|INVENTORY_RESERVED|{}",
                field(warehouse, "warehouse")?,
                field(location, "picking location")?
            ),
            Self::Reserved {
                warehouse,
                picking_location: None,
            } => format!("ACK|{}|INVENTORY_RESERVED", field(warehouse, "warehouse")?),
            Self::Released { warehouse } => {
                format!("ACK|{}|RELEASED", field(warehouse, "warehouse")?)
            }
            Self::Refused { reason } => format!("NACK|{}", tail(reason)?),
            Self::Error { reason } => format!("ERR|{}", tail(reason)?),
        };
        capped(line)
    }
}

impl Reply {
    /// An `ERR` reply that is always encodable, whatever text the reason came from:
    /// line breaks become spaces and the reason is cut well below the line cap.
    pub(crate) fn error(reason: impl std::fmt::Display) -> Self {
        const MAX_REASON: usize = 512;
        let reason: String = reason
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON)
            .collect();
        let reason = reason.trim_end_matches(['|', ' ']).to_owned();
        Self::Error { reason }
    }
}

/// What a tolerant reader ignores at the end of a line: one trailing `|` (seed 000's
/// adapter sends `RESERVE|<orderId>|<package>|`) and trailing blanks. Line ends,
/// `\n` or `\r\n`, are the framing layer's business.
fn tolerated(line: &str) -> &str {
    let line = line.trim_end_matches([' ', '\t']);
    line.strip_suffix('|').unwrap_or(line)
}

fn malformed(reason: &str) -> LineError {
    LineError::Malformed(reason.to_owned())
}

fn parse_order_id(raw: &str) -> Result<OrderId, LineError> {
    OrderId::parse(raw).ok_or_else(|| malformed("invalid order id"))
}

/// A field between separators: non-empty, no separator, no line break, and no
/// trailing blank a tolerant reader would drop.
fn field<'a>(value: &'a str, name: &'static str) -> Result<&'a str, CodecError> {
    let ok = !value.is_empty() && !value.contains(['|', '\r', '\n']) && !ends_loosely(value);
    ok.then_some(value).ok_or(CodecError::Unencodable(name))
}

/// The last field of a line: anything but a line break, and no trailing `|` or
/// blank a tolerant reader would drop.
fn tail(value: &str) -> Result<&str, CodecError> {
    if value.contains(['\r', '\n']) || ends_loosely(value) {
        Err(CodecError::Unencodable(
            "a reason with a line break or a loose end",
        ))
    } else {
        Ok(value)
    }
}

fn ends_loosely(value: &str) -> bool {
    value.ends_with(['|', ' ', '\t'])
}

fn capped(line: String) -> Result<String, CodecError> {
    if line.len() > MAX_LINE {
        Err(CodecError::Unencodable("a line over the length cap"))
    } else {
        Ok(line)
    }
}

/// Frames `\n`-terminated lines (a trailing `\r` is dropped) into `In` values and
/// writes `Out` values as lines. The read buffer never holds more than one capped
/// line: an overlong line is reported once and skipped up to its newline.
#[derive(Debug)]
pub struct WmsCodec<In, Out> {
    /// Bytes of the buffer already searched for a newline.
    searched: usize,
    /// Inside an overlong line that was already reported.
    discarding: bool,
    _vocabulary: PhantomData<fn(Out) -> In>,
}

/// The warehouse's side: reads requests, writes replies.
pub type ServerCodec = WmsCodec<Request, Reply>;
/// The runtime's side: reads replies, writes requests.
pub type ClientCodec = WmsCodec<Reply, Request>;

impl<In, Out> Default for WmsCodec<In, Out> {
    fn default() -> Self {
        Self {
            searched: 0,
            discarding: false,
            _vocabulary: PhantomData,
        }
    }
}

impl<In: Line, Out> Decoder for WmsCodec<In, Out> {
    type Item = Result<In, LineError>;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        loop {
            let newline = memchr::memchr(b'\n', &buf[self.searched..]).map(|i| self.searched + i);
            match (newline, self.discarding) {
                (Some(end), true) => {
                    let _ = buf.split_to(end + 1);
                    self.searched = 0;
                    self.discarding = false;
                }
                (None, true) => {
                    buf.clear();
                    self.searched = 0;
                    return Ok(None);
                }
                (Some(end), false) => {
                    let raw = buf.split_to(end + 1);
                    self.searched = 0;
                    let line = &raw[..end];
                    if line.len() > MAX_LINE {
                        return Ok(Some(Err(LineError::TooLong)));
                    }
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let item = std::str::from_utf8(line)
                        .map_err(|_| LineError::NotUtf8)
                        .and_then(In::parse);
                    return Ok(Some(item));
                }
                (None, false) if buf.len() > MAX_LINE => {
                    buf.clear();
                    self.searched = 0;
                    self.discarding = true;
                    return Ok(Some(Err(LineError::TooLong)));
                }
                (None, false) => {
                    self.searched = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    /// A line the peer never terminated is not a request or a reply: it is dropped
    /// rather than acted on half-sent.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None => {
                buf.clear();
                self.searched = 0;
                self.discarding = false;
                Ok(None)
            }
        }
    }
}

impl<In, Out: Line> Encoder<Out> for WmsCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let line = item.render()?;
        dst.reserve(line.len() + 1);
        dst.put_slice(line.as_bytes());
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn order(id: &str) -> OrderId {
        OrderId::parse(id).unwrap()
    }

    fn package(weight: f64) -> PackageDetails {
        PackageDetails {
            weight,
            dimensions: None,
            description: None,
            fragile: false,
        }
    }

    fn decode_all(codec: &mut ServerCodec, bytes: &[u8]) -> Vec<Result<Request, LineError>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn parses_the_three_requests() {
        assert_eq!(Request::parse("PING"), Ok(Request::Ping));
        assert_eq!(
            Request::parse("RELEASE|ORD-1"),
            Ok(Request::Release {
                order_id: order("ORD-1")
            })
        );
        let reserve = Request::parse(r#"RESERVE|ORD-1|{"weight":2.5,"description":"a|b"}"#);
        let Ok(Request::Reserve { order_id, package }) = reserve else {
            panic!("{reserve:?}");
        };
        assert_eq!(order_id, order("ORD-1"));
        assert_eq!(package.weight, 2.5);
        assert_eq!(
            package.description.as_deref(),
            Some("a|b"),
            "the JSON tail may hold `|`"
        );
    }

    #[test]
    fn rejects_malformed_requests_with_a_reason() {
        for bad in [
            "",
            "ping",
            "PING|x",
            "RESERVE",
            "RESERVE|ORD-1",
            "RESERVE|ORD 1|{\"weight\":1}",
            "RESERVE|ORD-1|{not json}",
            "RESERVE|ORD-1|{\"weight\":-1}",
            "RELEASE",
            "RELEASE|",
            "RELEASE|ORD-1|extra",
            "SHIP|ORD-1",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_every_reply_shape() {
        assert_eq!(
            Reply::parse("ACK|WH-001|INVENTORY_RESERVED|A-12-05"),
            Ok(Reply::Reserved {
                warehouse: "WH-001".into(),
                picking_location: Some("A-12-05".into())
            })
        );
        assert_eq!(
            Reply::parse("ACK|WH-002|RELEASED"),
            Ok(Reply::Released {
                warehouse: "WH-002".into()
            })
        );
        assert_eq!(
            Reply::parse("NACK|no stock"),
            Ok(Reply::Refused {
                reason: "no stock".into()
            })
        );
        assert_eq!(Reply::parse("PONG"), Ok(Reply::Pong));
        assert_eq!(
            Reply::parse("ERR|warehouse unavailable"),
            Ok(Reply::Error {
                reason: "warehouse unavailable".into()
            })
        );
        for bad in [
            "ACK",
            "ACK||RELEASED",
            "ACK|WH|RESERVED",
            "NACK",
            "OK",
            "pong",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_to_encode_what_the_peer_could_not_split() {
        let bad = Reply::Reserved {
            warehouse: "WH|1".into(),
            picking_location: Some("A".into()),
        };
        assert!(bad.render().is_err());
        for loose in ["no stock|", "no stock "] {
            let refusal = Reply::Refused {
                reason: loose.into(),
            };
            assert!(refusal.render().is_err(), "{loose:?} would lose its end");
        }
        assert!(
            Reply::Error {
                reason: "a\nb".into()
            }
            .render()
            .is_err()
        );
        let nan = Request::Reserve {
            order_id: order("ORD-1"),
            package: package(f64::NAN),
        };
        assert!(nan.render().is_err());
        let huge = Request::Reserve {
            order_id: order("ORD-1"),
            package: PackageDetails {
                description: Some("x".repeat(MAX_LINE)),
                ..package(1.0)
            },
        };
        assert!(huge.render().is_err());
        assert_eq!(
            Reply::error("bad\r\nline").render().unwrap(),
            "ERR|bad  line"
        );
    }

    #[test]
    fn reads_the_forms_of_seed_000() {
        // Section 6.4: the adapter's request ends with `|`, the answer has no
        // picking location.
        let reserve =
            Request::parse(r#"RESERVE|ORD-20260204-ABC123|{"weight":5,"dimensions":"30x20x10"}|"#);
        assert!(
            matches!(&reserve, Ok(Request::Reserve { package, .. }) if package.weight == 5.0),
            "{reserve:?}"
        );
        assert_eq!(
            Reply::parse("ACK|WH-001|INVENTORY_RESERVED"),
            Ok(Reply::Reserved {
                warehouse: "WH-001".into(),
                picking_location: None
            })
        );
        for trailing in [
            "ACK|WH-001|INVENTORY_RESERVED|",
            "ACK|WH-001|INVENTORY_RESERVED| ",
        ] {
            assert_eq!(
                Reply::parse(trailing),
                Reply::parse("ACK|WH-001|INVENTORY_RESERVED")
            );
        }
        assert_eq!(Reply::parse("PONG|"), Ok(Reply::Pong));
        assert_eq!(Request::parse("PING|"), Ok(Request::Ping));
        assert_eq!(
            Request::parse("RELEASE|ORD-1|"),
            Ok(Request::Release {
                order_id: order("ORD-1")
            })
        );
        assert_eq!(
            Reply::parse("NACK|no stock|"),
            Ok(Reply::Refused {
                reason: "no stock".into()
            })
        );
        let mut client = ClientCodec::default();
        let mut wire = BytesMut::from(&b"ACK|WH-001|INVENTORY_RESERVED\r\n"[..]);
        assert_eq!(
            client.decode(&mut wire).unwrap(),
            Some(Reply::parse("ACK|WH-001|INVENTORY_RESERVED"))
        );
        for bad in [
            "ACK|WH-001|INVENTORY_RESERVED|A-1|extra",
            "ACK||INVENTORY_RESERVED",
            "RESERVE|ORD-1|{\"weight\":1}||",
        ] {
            assert!(
                Reply::parse(bad).is_err() && Request::parse(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn accepts_crlf_and_keeps_going_after_a_bad_line() {
        let mut codec = ServerCodec::default();
        let items = decode_all(&mut codec, b"PING\r\nNOPE\nPING\n");
        assert_eq!(
            items,
            vec![
                Ok(Request::Ping),
                Err(LineError::UnknownCommand),
                Ok(Request::Ping)
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_skipped_without_buffering_it() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for _ in 0..3 {
            buf.extend_from_slice(&vec![b'x'; MAX_LINE]);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                items.push(item);
            }
            assert!(buf.len() <= MAX_LINE, "buffered {} bytes", buf.len());
        }
        buf.extend_from_slice(b"tail\nPING\n");
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            items.push(item);
        }
        assert_eq!(items, vec![Err(LineError::TooLong), Ok(Request::Ping)]);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_accepted() {
        let mut codec = ServerCodec::default();
        let padding = "x".repeat(MAX_LINE - r#"RESERVE|ORD-1|{"weight":1,"description":""}"#.len());
        let line = format!(r#"RESERVE|ORD-1|{{"weight":1,"description":"{padding}"}}"#);
        assert_eq!(line.len(), MAX_LINE);
        let items = decode_all(&mut codec, format!("{line}\n").as_bytes());
        assert!(
            matches!(items.as_slice(), [Ok(Request::Reserve { .. })]),
            "{items:?}"
        );
        let items = decode_all(&mut codec, format!("{line}x\n").as_bytes());
        assert_eq!(items, vec![Err(LineError::TooLong)]);
    }

    #[test]
    fn an_unterminated_line_at_eof_is_not_acted_on() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::from(&b"PING\nRELEASE|ORD-1"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Ok(Request::Ping)));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    fn order_id() -> impl Strategy<Value = OrderId> {
        "[A-Za-z0-9_-]{1,64}".prop_map(|s| OrderId::parse(&s).unwrap())
    }

    fn package_details() -> impl Strategy<Value = PackageDetails> {
        (
            // Eighths are exact in binary and short in decimal, so the JSON round trip
            // is exact whatever float parser the peer uses.
            1u32..1_000_000,
            proptest::option::of(prop_oneof![
                "[0-9]{1,3}x[0-9]{1,3}x[0-9]{1,3}".prop_map(|s| json!(s)),
                (1u32..500, 1u32..500, 1u32..500)
                    .prop_map(|(l, w, h)| json!({"length": l, "width": w, "height": h})),
            ]),
            proptest::option::of(any::<String>()),
            any::<bool>(),
        )
            .prop_map(
                |(eighths, dimensions, description, fragile)| PackageDetails {
                    weight: f64::from(eighths) / 8.0,
                    dimensions,
                    description,
                    fragile,
                },
            )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Ping),
            order_id().prop_map(|order_id| Request::Release { order_id }),
            (order_id(), package_details())
                .prop_map(|(order_id, package)| Request::Reserve { order_id, package }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let token = "[A-Za-z0-9_.-]([A-Za-z0-9 _.-]{0,18}[A-Za-z0-9_.-])?";
        let reason = "([^\r\n]{0,79}[^\r\n| \t])?";
        prop_oneof![
            Just(Reply::Pong),
            (token, proptest::option::of(token)).prop_map(|(warehouse, picking_location)| {
                Reply::Reserved {
                    warehouse,
                    picking_location,
                }
            }),
            token.prop_map(|warehouse| Reply::Released { warehouse }),
            reason.prop_map(|reason| Reply::Refused { reason }),
            reason.prop_map(|reason| Reply::Error { reason }),
        ]
    }

    proptest! {
        #[test]
        fn every_request_survives_the_wire(request in request()) {
            let mut codec = ClientCodec::default();
            let mut wire = BytesMut::new();
            codec.encode(request.clone(), &mut wire).unwrap();
            let mut server = ServerCodec::default();
            prop_assert_eq!(server.decode(&mut wire).unwrap(), Some(Ok(request)));
            prop_assert!(wire.is_empty());
        }

        #[test]
        fn every_reply_survives_the_wire(reply in reply()) {
            let mut codec = ServerCodec::default();
            let mut wire = BytesMut::new();
            codec.encode(reply.clone(), &mut wire).unwrap();
            let mut client = ClientCodec::default();
            prop_assert_eq!(client.decode(&mut wire).unwrap(), Some(Ok(reply)));
            prop_assert!(wire.is_empty());
        }

        /// What a tolerant reader accepts besides the strict form: a trailing `|`
        /// and CRLF line ends, in either direction.
        #[test]
        fn the_loose_forms_read_as_the_strict_ones(
            request in request(),
            reply in reply(),
            pipe in any::<bool>(),
            crlf in any::<bool>(),
        ) {
            let loosen = |line: String| {
                let pipe = if pipe { "|" } else { "" };
                let end = if crlf { "\r\n" } else { "\n" };
                BytesMut::from(format!("{line}{pipe}{end}").as_bytes())
            };
            let mut wire = loosen(request.render().unwrap());
            prop_assert_eq!(ServerCodec::default().decode(&mut wire).unwrap(), Some(Ok(request)));
            let mut wire = loosen(reply.render().unwrap());
            prop_assert_eq!(ClientCodec::default().decode(&mut wire).unwrap(), Some(Ok(reply)));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_or_hoards(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut server = ServerCodec::default();
            let mut buf = BytesMut::from(&bytes[..]);
            while server.decode(&mut buf).unwrap().is_some() {}
            prop_assert!(buf.len() <= MAX_LINE);
            let mut client = ClientCodec::default();
            let mut buf = BytesMut::from(&bytes[..]);
            while client.decode_eof(&mut buf).unwrap().is_some() {}
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn chunking_does_not_change_the_frames(
            lines in proptest::collection::vec(
                prop_oneof![
                    request().prop_map(|r| format!("{}\n", r.render().unwrap()).into_bytes()),
                    proptest::collection::vec(any::<u8>(), 0..64),
                    Just(vec![b'y'; MAX_LINE + 3]),
                    Just(b"PING\r\n".to_vec()),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(1usize..9000, 1..40),
        ) {
            let stream: Vec<u8> = lines.concat();
            let whole = decode_all(&mut ServerCodec::default(), &stream);

            let mut codec = ServerCodec::default();
            let mut buf = BytesMut::new();
            let mut chunked = Vec::new();
            let mut rest = &stream[..];
            let mut sizes = cuts.iter().cycle();
            while !rest.is_empty() {
                let size = (*sizes.next().unwrap()).min(rest.len());
                buf.extend_from_slice(&rest[..size]);
                rest = &rest[size..];
                while let Some(item) = codec.decode(&mut buf).unwrap() {
                    chunked.push(item);
                }
            }
            prop_assert_eq!(chunked, whole);
        }
    }
}
