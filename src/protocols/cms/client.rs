//! The runtime's side of the CMS: one SOAP call per saga step.

use super::codec::{
    CmsCall, CmsReply, CmsRequest, CodecError, FaultKind, MAX_ENVELOPE_BYTES, decode_reply,
    encode_request,
};
use crate::bus::StepRequest;
use crate::domain::{CustomerProfile, Operation, OperationOutcome};
use crate::protocols::{CallError, SystemClient};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use std::error::Error as _;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CmsClientError {
    #[error("invalid CMS url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Calls are cheap to clone and share one connection pool, so concurrent saga
/// steps reuse kept-alive connections instead of opening one each.
#[derive(Debug, Clone)]
pub struct CmsClient {
    http: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl CmsClient {
    /// `timeout` bounds each whole call: connecting, sending and reading the reply.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, CmsClientError> {
        let invalid = |reason: String| CmsClientError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        // reqwest is built without TLS: an https URL would fail on every call.
        if parsed.scheme() != "http" {
            return Err(invalid("only plain http:// URLs are supported".into()));
        }
        // Calls go to the configured CMS only: a redirect is not followed (it would
        // re-post the envelope to wherever the CMS points, SSRF) but is a protocol
        // failure of the CMS, see `classify`.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            url: parsed,
            timeout,
        })
    }

    fn timed_out(&self) -> CallError {
        CallError::Timeout(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX))
    }

    /// Posts one envelope and returns the HTTP status with the reply body.
    async fn exchange(&self, request: &CmsRequest) -> Result<(StatusCode, Vec<u8>), CallError> {
        let soap_action = HeaderValue::from_str(&request.call.soap_action())
            .map_err(|e| CallError::Malformed(format!("SOAPAction: {e}")))?;
        let mut response = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", soap_action)
            .body(encode_request(request))
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ENVELOPE_BYTES as u64)
        {
            return Err(CallError::Malformed(CodecError::TooLarge.to_string()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > MAX_ENVELOPE_BYTES {
                return Err(CallError::Malformed(CodecError::TooLarge.to_string()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn transport_error(&self, error: &reqwest::Error) -> CallError {
        if error.is_timeout() {
            return self.timed_out();
        }
        // reqwest's own message hides the cause (refused, reset, DNS) in its sources.
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        CallError::Connection(message)
    }
}

#[async_trait]
impl SystemClient for CmsClient {
    async fn execute(&self, request: &StepRequest) -> Result<OperationOutcome, CallError> {
        let call = match request.operation {
            Operation::ValidateCustomer => CmsCall::ValidateCustomer {
                customer_id: request.customer_id.as_str().to_owned(),
                order_id: request.order_id.as_str().to_owned(),
            },
            Operation::CancelCustomerOrder => CmsCall::CancelOrder {
                order_id: request.order_id.as_str().to_owned(),
            },
            _ => return Err(CallError::Malformed("operation not served by CMS".into())),
        };
        let cms_request = CmsRequest {
            idempotency_key: Some(request.idempotency_key()),
            call,
        };
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(&cms_request))
            .await
            .map_err(|_| self.timed_out())??;
        classify(&cms_request.call, status, decode_reply(&body))
    }
}

/// Sorts a reply into the saga's terms: a settled outcome, or an error worth
/// retrying. SOAP 1.1 sends faults with HTTP 500, so the body decides before the
/// status does; a redirect is never a SOAP answer, whatever its body says.
fn classify(
    call: &CmsCall,
    status: StatusCode,
    reply: Result<CmsReply, CodecError>,
) -> Result<OperationOutcome, CallError> {
    match (reply, call) {
        (_, _) if status.is_redirection() => Err(CallError::Malformed(format!(
            "CMS answered HTTP {status}: redirects are not followed"
        ))),
        (Ok(CmsReply::Fault(fault)), _) => match fault.kind {
            FaultKind::Client => Ok(OperationOutcome::Refused {
                reason: if fault.message.trim().is_empty() {
                    format!("CMS refused {}", call.operation_name())
                } else {
                    format!("CMS: {}", fault.message.trim())
                },
            }),
            FaultKind::Server => Err(CallError::Remote(format!(
                "CMS server fault: {}",
                fault.message.trim()
            ))),
        },
        (_, _) if !status.is_success() => {
            Err(CallError::Remote(format!("CMS answered HTTP {status}")))
        }
        (Ok(CmsReply::Validation(validation)), CmsCall::ValidateCustomer { customer_id, .. }) => {
            if validation.valid {
                Ok(OperationOutcome::CustomerValidated(CustomerProfile {
                    name: validation.customer_name,
                    tier: validation.tier,
                }))
            } else {
                Ok(OperationOutcome::Refused {
                    reason: format!("CMS: customer {customer_id} is not valid"),
                })
            }
        }
        // `cancelled = false` is the CMS not knowing the order: nothing to undo.
        (Ok(CmsReply::Cancellation { .. }), CmsCall::CancelOrder { .. }) => {
            Ok(OperationOutcome::Undone)
        }
        (Ok(_), _) => Err(CallError::Malformed(format!(
            "the CMS answered {} with another operation's response",
            call.operation_name()
        ))),
        (Err(error), _) => Err(CallError::Malformed(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::cms::codec::{CustomerValidation, SoapFault, encode_reply};

    fn validate() -> CmsCall {
        CmsCall::ValidateCustomer {
            customer_id: "usr_1".into(),
            order_id: "ORD-1".into(),
        }
    }

    fn fault(kind: FaultKind) -> Result<CmsReply, CodecError> {
        Ok(CmsReply::Fault(SoapFault {
            kind,
            message: "Unknown customer".into(),
        }))
    }

    #[test]
    fn a_client_fault_is_a_refusal_whatever_the_status() {
        for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
            assert_eq!(
                classify(&validate(), status, fault(FaultKind::Client)),
                Ok(OperationOutcome::Refused {
                    reason: "CMS: Unknown customer".into()
                })
            );
        }
    }

    #[test]
    fn server_trouble_is_an_error_to_retry() {
        let server_fault = classify(
            &validate(),
            StatusCode::INTERNAL_SERVER_ERROR,
            fault(FaultKind::Server),
        );
        assert!(matches!(server_fault, Err(CallError::Remote(_))));
        let gateway = classify(
            &validate(),
            StatusCode::BAD_GATEWAY,
            decode_reply(b"<html>bad gateway</html>"),
        );
        assert!(matches!(gateway, Err(CallError::Remote(_))));
        let garbage = classify(
            &validate(),
            StatusCode::OK,
            decode_reply(b"{\"valid\":true}"),
        );
        assert!(matches!(garbage, Err(CallError::Malformed(_))));
    }

    #[test]
    fn a_redirect_is_a_protocol_failure_even_with_a_valid_body() {
        let valid = || {
            Ok(CmsReply::Validation(CustomerValidation {
                valid: true,
                customer_name: "Elsewhere".into(),
                tier: "gold".into(),
            }))
        };
        for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
            assert!(matches!(
                classify(&validate(), status, valid()),
                Err(CallError::Malformed(_))
            ));
            assert!(matches!(
                classify(&validate(), status, fault(FaultKind::Client)),
                Err(CallError::Malformed(_))
            ));
        }
    }

    #[test]
    fn an_invalid_customer_is_refused() {
        let reply = Ok(CmsReply::Validation(CustomerValidation {
            valid: false,
            customer_name: String::new(),
            tier: String::new(),
        }));
        assert!(matches!(
            classify(&validate(), StatusCode::OK, reply),
            Ok(OperationOutcome::Refused { .. })
        ));
    }

    #[test]
    fn a_cancellation_of_an_unknown_order_is_undone() {
        let cancel = CmsCall::CancelOrder {
            order_id: "ORD-1".into(),
        };
        let reply =
            decode_reply(encode_reply(&CmsReply::Cancellation { cancelled: false }).as_bytes());
        assert_eq!(
            classify(&cancel, StatusCode::OK, reply),
            Ok(OperationOutcome::Undone)
        );
    }

    #[test]
    fn a_response_to_the_wrong_operation_is_malformed() {
        let cancel = CmsCall::CancelOrder {
            order_id: "ORD-1".into(),
        };
        let reply = Ok(CmsReply::Validation(CustomerValidation {
            valid: true,
            customer_name: "A".into(),
            tier: "standard".into(),
        }));
        assert!(matches!(
            classify(&cancel, StatusCode::OK, reply),
            Err(CallError::Malformed(_))
        ));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(CmsClient::new("ftp://cms/", Duration::from_secs(1)).is_err());
        assert!(CmsClient::new("https://cms/", Duration::from_secs(1)).is_err());
        assert!(CmsClient::new("not a url", Duration::from_secs(1)).is_err());
        assert!(CmsClient::new("http://127.0.0.1:4000/cms", Duration::from_secs(1)).is_ok());
    }
}
