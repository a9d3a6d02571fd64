//! Fuzz targets, proptest-based so they run on stable Rust in CI: the parsers that
//! read what other systems and clients send must never panic, whatever the input.
//! Each target gets random inputs and mutations (bit flips, inserted, deleted and
//! replaced bytes, truncation) of valid samples.
//!
//! `FUZZ_CASES` sets the cases per target (default 2,000, a few seconds in all);
//! e.g. `FUZZ_CASES=200000 cargo test --release --test fuzz` for a longer run.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Value, json};
use swiftlogistics::domain::NewOrder;
use swiftlogistics::protocols::cms::codec::{decode_reply, decode_request};
use swiftlogistics::protocols::cms::wsdl;
use swiftlogistics::protocols::ros::read_route;
use swiftlogistics::protocols::wms::codec::{ClientCodec, ServerCodec};
use tokio_util::codec::Decoder;

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        // A failure is shrunk, but not for ever.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(sample: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match *mutation {
            Mutation::Flip(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(at(i));
            }
            Mutation::Replace(i, b) if len > 0 => bytes[at(i)] = b,
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Inputs for one target: raw bytes, or a mutated sample.
fn inputs(samples: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        (
            proptest::sample::select(samples),
            proptest::collection::vec(mutation(), 1..12)
        )
            .prop_map(|(sample, mutations)| mutate(sample, &mutations)),
    ]
}

const WMS_LINES: &[&[u8]] = &[
    b"RESERVE|ORD-20260204-ABC123|{\"weight\":5,\"dimensions\":\"30x20x10\"}|\n",
    b"RESERVE|ORD-1|{\"weight\":2.5,\"dimensions\":{\"length\":1,\"width\":2,\"height\":3},\"description\":\"a|b\",\"fragile\":true}\r\n",
    b"RELEASE|ORD-1\nPING\n",
    b"ACK|WH-001|INVENTORY_RESERVED\nACK|WH-001|INVENTORY_RESERVED|A-12-05\r\n",
    b"ACK|WH-002|RELEASED|\nNACK|no stock\nERR|warehouse unavailable\nPONG\n",
];

const SOAP_REPLIES: &[&[u8]] = &[
    br#"<?xml version='1.0' encoding='UTF-8'?>
<soap11env:Envelope xmlns:soap11env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tns="http://swiftlogistics.com/cms"><soap11env:Body><tns:ValidateCustomerResponse><tns:Valid>true</tns:Valid><tns:CustomerName>John Doe</tns:CustomerName><tns:Tier>premium</tns:Tier></tns:ValidateCustomerResponse></soap11env:Body></soap11env:Envelope>"#,
    br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>Unknown customer</faultstring></soap:Fault></soap:Body></soap:Envelope>"#,
    br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body><CancelOrderResponse xmlns="http://swiftlogistics.com/cms"><Cancelled>1</Cancelled></CancelOrderResponse></s:Body></s:Envelope>"#,
    br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header><IdempotencyKey xmlns="http://swiftlogistics.com/cms">k</IdempotencyKey></soap:Header><soap:Body><ValidateCustomer xmlns="http://swiftlogistics.com/cms"><CustomerId>usr_1</CustomerId><OrderId>ORD-1</OrderId></ValidateCustomer></soap:Body></soap:Envelope>"#,
];

const WSDLS: &[&[u8]] = &[
    br#"<wsdl:definitions xmlns:wsdlsoap11="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:tns="http://swiftlogistics.com/cms"><wsdl:service name="Cms"><wsdl:port name="CmsService" binding="tns:CmsService"><wsdlsoap11:address location="http://127.0.0.1:1/cms"/></wsdl:port></wsdl:service><wsdl:binding name="CmsService" type="tns:CmsService"><wsdlsoap11:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/><wsdl:operation name="ValidateCustomer"><wsdlsoap11:operation soapAction="ValidateCustomer" style="document"/></wsdl:operation></wsdl:binding></wsdl:definitions>"#,
];

const ROS_REPLIES: &[&[u8]] = &[
    br#"{"routeId":"RT-1","waypoints":[{"lat":1,"lng":2},{"lat":3,"lng":4}],"distance":3.5,"eta":"2026-02-05T10:45:00Z"}"#,
    br#"{"route":{"waypoints":[{"lat":40.7128,"lng":-74.006}],"distance":12.3,"eta":"2026-02-05T10:45:00Z"},"eta":"2026-02-05T10:45:00Z","distance":12.3}"#,
    br#"{"route":[{"lat":1,"lng":2}],"eta":"soon","distance":1e3}"#,
];

const ORDERS: &[&[u8]] = &[
    br#"{"customerId":"usr_12345","pickupLocation":{"address":"123 Main Street","coordinates":{"lat":40.7128,"lng":-74.0060}},"deliveryAddress":{"address":"456 Oak Avenue","coordinates":{"lat":40.6782,"lng":-73.9442}},"packageDetails":{"weight":5.5,"dimensions":"30x20x10","description":"Electronics","fragile":true},"scheduledPickupTime":"2026-02-05T09:00:00Z","specialInstructions":"Handle with care"}"#,
    br#"{"pickupLocation":{"lat":40.7128,"lng":-74.006,"address":"123 Main St"},"deliveryAddress":{"lat":40.7589,"lng":-73.9851},"packageDetails":{"weight":1,"dimensions":{"length":1,"width":2,"height":3}}}"#,
];

/// Arbitrary JSON, a few levels deep, with the order's field names likely.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("pickupLocation".to_owned()),
        Just("deliveryAddress".to_owned()),
        Just("packageDetails".to_owned()),
        Just("coordinates".to_owned()),
        Just("lat".to_owned()),
        Just("lng".to_owned()),
        Just("weight".to_owned()),
        Just("dimensions".to_owned()),
        Just("scheduledPickupTime".to_owned()),
        "[a-z$.]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wms_line_codec(bytes in inputs(WMS_LINES)) {
        let mut server = ServerCodec::default();
        let mut buf = BytesMut::from(&bytes[..]);
        while server.decode(&mut buf).unwrap().is_some() {}
        let mut client = ClientCodec::default();
        let mut buf = BytesMut::from(&bytes[..]);
        while client.decode_eof(&mut buf).unwrap().is_some() {}
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn soap_reply_and_request_parsers(bytes in inputs(SOAP_REPLIES)) {
        let _ = decode_reply(&bytes);
        let _ = decode_request(&bytes);
    }

    #[test]
    fn wsdl_parser(bytes in inputs(WSDLS)) {
        let _ = wsdl::parse(&bytes);
    }

    #[test]
    fn ros_reply_parser(bytes in inputs(ROS_REPLIES)) {
        let _ = read_route(&bytes);
    }

    #[test]
    fn order_intake_from_bytes(bytes in inputs(ORDERS)) {
        if let Ok(body) = serde_json::from_slice::<Value>(&bytes) {
            let _ = NewOrder::parse(&body);
        }
    }

    #[test]
    fn order_intake_from_json(body in json_value()) {
        let _ = NewOrder::parse(&body);
        let _ = NewOrder::parse(&json!({"pickupLocation": body.clone(), "deliveryAddress": body.clone(), "packageDetails": body}));
    }
}
