//! A stand-in for the legacy CMS, faithful where the runtime could notice: SOAP 1.1
//! faults with HTTP 500, a WSDL, idempotent cancellation, and knobs that make
//! refusals, outages and slowness reachable on demand.

use super::codec::{
    CMS_NAMESPACE, CmsCall, CmsReply, CustomerValidation, FaultKind, MAX_ENVELOPE_BYTES, SoapFault,
    decode_request, encode_reply, escape,
};
use crate::domain::Operation;
use crate::protocols::simulator::{
    ControlledSimulator, EffectLedger, KnobSettings, LedgerSummary, Remembered, SimulatorKnobs,
    Verdict,
};
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A client that starts a request and stalls must not hold a handler forever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct CmsSimulator {
    knobs: SimulatorKnobs,
    ledger: EffectLedger,
    cancelled_orders: Remembered<String, ()>,
}

impl CmsSimulator {
    pub fn new(settings: KnobSettings) -> Self {
        Self {
            knobs: SimulatorKnobs::new(settings),
            ..Self::default()
        }
    }

    /// The same simulator, remembering its latest `effects` effects.
    pub fn remembering(self, effects: usize) -> Self {
        Self {
            ledger: EffectLedger::new(effects),
            cancelled_orders: Remembered::new(effects),
            ..self
        }
    }

    /// `POST /cms` takes SOAP calls, dispatched on the Body element (SOAPAction is
    /// optional, as many stacks omit or mangle it); `GET /cms?wsdl` describes them.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/cms", post(soap_endpoint).get(service_description))
            .with_state(self)
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    async fn validate_customer(&self, customer_id: &str) -> Response {
        match self.knobs.judge(Some(customer_id)).await {
            Verdict::Fail => fault(FaultKind::Server, "CMS temporarily unavailable"),
            Verdict::Refuse => fault(FaultKind::Client, "Unknown customer"),
            Verdict::Serve => soap(
                StatusCode::OK,
                encode_reply(&CmsReply::Validation(CustomerValidation {
                    valid: true,
                    customer_name: format!("Customer {customer_id}"),
                    tier: tier_of(customer_id).into(),
                })),
            ),
        }
    }

    /// An undo is never refused, whatever the knobs say about forward calls; only
    /// failures apply. A replayed key gets the first answer and no second effect.
    async fn cancel_order(&self, order_id: String, idempotency_key: Option<String>) -> Response {
        if self.knobs.judge(None).await == Verdict::Fail {
            return fault(FaultKind::Server, "CMS temporarily unavailable");
        }
        let key = idempotency_key
            .filter(|k| !k.trim().is_empty())
            .unwrap_or_else(|| format!("{order_id}:{}", Operation::CancelCustomerOrder.name()));
        let answer = self.ledger.once(&key, || {
            self.cancelled_orders.insert(order_id, ());
            encode_reply(&CmsReply::Cancellation { cancelled: true })
        });
        soap(StatusCode::OK, answer)
    }
}

impl ControlledSimulator for CmsSimulator {
    fn knobs(&self) -> &SimulatorKnobs {
        &self.knobs
    }

    fn summary(&self) -> LedgerSummary {
        let cancelled = self.cancelled_orders.len();
        self.ledger
            .summary(HashMap::from([("cancelledOrders".to_owned(), cancelled)]))
    }
}

/// Deterministic, so a customer keeps its tier across calls and restarts.
fn tier_of(customer_id: &str) -> &'static str {
    let hash = customer_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    if hash % 4 == 0 { "premium" } else { "standard" }
}

async fn soap_endpoint(State(simulator): State<Arc<CmsSimulator>>, body: Body) -> Response {
    let bytes = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_ENVELOPE_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => return fault(FaultKind::Client, &format!("malformed request: {error}")),
        Err(_) => {
            return fault(
                FaultKind::Client,
                "malformed request: the body did not arrive in time",
            );
        }
    };
    let request = match decode_request(&bytes) {
        Ok(request) => request,
        Err(error) => return fault(FaultKind::Client, &format!("malformed request: {error}")),
    };
    match request.call {
        CmsCall::ValidateCustomer { customer_id, .. } => {
            simulator.validate_customer(&customer_id).await
        }
        CmsCall::CancelOrder { order_id } => {
            simulator
                .cancel_order(order_id, request.idempotency_key)
                .await
        }
    }
}

async fn service_description(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    if !query.is_some_and(|q| q.eq_ignore_ascii_case("wsdl")) {
        return (
            StatusCode::NOT_FOUND,
            "SOAP calls are POSTed here; GET /cms?wsdl describes them\n",
        )
            .into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    soap(StatusCode::OK, wsdl(&format!("http://{host}/cms")))
}

fn soap(status: StatusCode, xml: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

/// SOAP 1.1 over HTTP sends every fault with status 500.
fn fault(kind: FaultKind, message: &str) -> Response {
    let reply = CmsReply::Fault(SoapFault {
        kind,
        message: message.to_owned(),
    });
    soap(StatusCode::INTERNAL_SERVER_ERROR, encode_reply(&reply))
}

/// WSDL 1.1, document/literal, with the idempotency key as a declared header.
fn wsdl(location: &str) -> String {
    let location = escape(location);
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<wsdl:definitions name="CustomerManagementService"
    targetNamespace="{CMS_NAMESPACE}"
    xmlns:tns="{CMS_NAMESPACE}"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <wsdl:documentation>SwiftLogistics client management: customer validation and order cancellation. Business refusals are soap:Client faults, outages soap:Server faults.</wsdl:documentation>
  <wsdl:types>
    <xsd:schema targetNamespace="{CMS_NAMESPACE}" elementFormDefault="qualified">
      <xsd:element name="IdempotencyKey" type="xsd:string"/>
      <xsd:element name="ValidateCustomer">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="CustomerId" type="xsd:string"/>
            <xsd:element name="OrderId" type="xsd:string"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="ValidateCustomerResponse">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="Valid" type="xsd:boolean"/>
            <xsd:element name="CustomerName" type="xsd:string" minOccurs="0"/>
            <xsd:element name="Tier" type="xsd:string" minOccurs="0"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="CancelOrder">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="OrderId" type="xsd:string"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="CancelOrderResponse">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="Cancelled" type="xsd:boolean"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="IdempotencyHeader">
    <wsdl:part name="IdempotencyKey" element="tns:IdempotencyKey"/>
  </wsdl:message>
  <wsdl:message name="ValidateCustomerInput">
    <wsdl:part name="parameters" element="tns:ValidateCustomer"/>
  </wsdl:message>
  <wsdl:message name="ValidateCustomerOutput">
    <wsdl:part name="parameters" element="tns:ValidateCustomerResponse"/>
  </wsdl:message>
  <wsdl:message name="CancelOrderInput">
    <wsdl:part name="parameters" element="tns:CancelOrder"/>
  </wsdl:message>
  <wsdl:message name="CancelOrderOutput">
    <wsdl:part name="parameters" element="tns:CancelOrderResponse"/>
  </wsdl:message>
  <wsdl:portType name="CustomerManagementPortType">
    <wsdl:operation name="ValidateCustomer">
      <wsdl:input message="tns:ValidateCustomerInput"/>
      <wsdl:output message="tns:ValidateCustomerOutput"/>
    </wsdl:operation>
    <wsdl:operation name="CancelOrder">
      <wsdl:input message="tns:CancelOrderInput"/>
      <wsdl:output message="tns:CancelOrderOutput"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="CustomerManagementSoapBinding" type="tns:CustomerManagementPortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="ValidateCustomer">
      <soap:operation soapAction="{CMS_NAMESPACE}/ValidateCustomer" style="document"/>
      <wsdl:input>
        <soap:header message="tns:IdempotencyHeader" part="IdempotencyKey" use="literal"/>
        <soap:body use="literal"/>
      </wsdl:input>
      <wsdl:output>
        <soap:body use="literal"/>
      </wsdl:output>
    </wsdl:operation>
    <wsdl:operation name="CancelOrder">
      <soap:operation soapAction="{CMS_NAMESPACE}/CancelOrder" style="document"/>
      <wsdl:input>
        <soap:header message="tns:IdempotencyHeader" part="IdempotencyKey" use="literal"/>
        <soap:body use="literal"/>
      </wsdl:input>
      <wsdl:output>
        <soap:body use="literal"/>
      </wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="CustomerManagementService">
    <wsdl:port name="CustomerManagementPort" binding="tns:CustomerManagementSoapBinding">
      <soap:address location="{location}"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use std::collections::HashSet;

    /// Every element and attribute of the WSDL, to prove it is well-formed XML and
    /// that a hostile Host header cannot break out of the location attribute.
    fn well_formed_elements(xml: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut elements = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Start(e) | Event::Empty(e) => {
                    let attributes = e
                        .attributes()
                        .map(|a| {
                            let a = a.unwrap();
                            let key = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                            (key, a.unescape_value().unwrap().into_owned())
                        })
                        .collect();
                    elements.push((
                        String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                        attributes,
                    ));
                }
                Event::Eof => break,
                _ => {}
            }
        }
        elements
    }

    #[test]
    fn the_wsdl_is_well_formed_and_names_both_operations() {
        let location = "http://cms\"><evil/>/cms";
        let elements = well_formed_elements(&wsdl(location));
        let operations: HashSet<&str> = elements
            .iter()
            .filter(|(name, _)| name == "wsdl:operation")
            .flat_map(|(_, attrs)| {
                attrs
                    .iter()
                    .filter(|(k, _)| k == "name")
                    .map(|(_, v)| v.as_str())
            })
            .collect();
        assert_eq!(
            operations,
            HashSet::from(["ValidateCustomer", "CancelOrder"])
        );
        assert!(elements.iter().all(|(name, _)| name != "evil"));
        let address = elements
            .iter()
            .find(|(name, _)| name == "soap:address")
            .unwrap();
        assert_eq!(
            address.1,
            vec![("location".to_owned(), location.to_owned())]
        );
    }

    #[test]
    fn tiers_are_stable_and_both_occur() {
        let tiers: HashSet<&str> = (0..64).map(|i| tier_of(&format!("usr_{i}"))).collect();
        assert_eq!(tiers, HashSet::from(["premium", "standard"]));
        assert_eq!(tier_of("usr_abc"), tier_of("usr_abc"));
    }
}
