//! The runtime's side of the CMS: one SOAP call per saga step.
//!
//! Like seed 000's zeep client, the client takes each operation's soapAction, and the
//! service address unless one is configured, from the CMS's WSDL: real SOAP servers
//! dispatch by the `SOAPAction` header. The WSDL is read at start; while it cannot be
//! read, or after the CMS stopped answering, it is read again in the background (the
//! CMS may have moved), and meanwhile the configured address and our own soapActions
//! are used, which the log and `/api/services/health` say.

use super::codec::{
    CmsCall, CmsReply, CmsRequest, CodecError, FaultKind, MAX_ENVELOPE_BYTES, decode_reply,
    encode_request,
};
use super::wsdl::{self, MAX_WSDL_BYTES, ServiceDescription};
use crate::domain::StepRequest;
use crate::domain::{CustomerProfile, Operation, OperationOutcome};
use crate::protocols::{CallError, ContractStatus, SystemClient};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CmsClientError {
    #[error("invalid CMS url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Where the CMS is to be found and how it is described.
#[derive(Debug, Clone)]
pub struct CmsTarget {
    /// The WSDL's URL (`http://...`) or file path.
    pub wsdl: String,
    /// An address configured explicitly: it wins over the WSDL's.
    pub url: Option<String>,
    /// The address used while no WSDL names one.
    pub fallback_url: String,
    /// How often the WSDL is read again while it cannot be read or the CMS is
    /// unreachable.
    pub reread_every: Duration,
}

/// Calls share one connection pool, so concurrent saga steps reuse kept-alive
/// connections instead of opening one each.
#[derive(Debug)]
pub struct CmsClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    timeout: Duration,
    endpoint: RwLock<Arc<Endpoint>>,
    target: Option<CmsTarget>,
    /// The CMS was unreachable since the WSDL was last read.
    stale: AtomicBool,
    /// Ends the background reader when the client goes.
    stop: CancellationToken,
}

/// What a call goes by: the address, the soapAction of each operation, and where
/// both came from.
#[derive(Debug)]
struct Endpoint {
    url: reqwest::Url,
    actions: HashMap<String, String>,
    contract: Option<ContractStatus>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn http_url(url: &str) -> Result<reqwest::Url, CmsClientError> {
    let invalid = |reason: String| CmsClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    // reqwest is built without TLS: an https URL would fail on every call.
    if parsed.scheme() != "http" {
        return Err(invalid("only plain http:// URLs are supported".into()));
    }
    Ok(parsed)
}

/// Calls (and WSDL reads) go to the configured CMS only: a redirect is not followed
/// (it would re-post the envelope to wherever the CMS points, SSRF) but is a
/// protocol failure of the CMS, see `classify`.
fn http_client(timeout: Duration) -> Result<reqwest::Client, CmsClientError> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?)
}

impl CmsClient {
    /// A client for a CMS at `url` that uses our own soapActions and reads no WSDL.
    /// `timeout` bounds each whole call: connecting, sending and reading the reply.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, CmsClientError> {
        let endpoint = Endpoint {
            url: http_url(url)?,
            actions: HashMap::new(),
            contract: None,
        };
        Ok(Self::with(http_client(timeout)?, timeout, endpoint, None))
    }

    /// A client that goes by the CMS's WSDL: read once here (within `timeout`), and
    /// again in the background while it cannot be read or the CMS is unreachable.
    /// Must be called within a tokio runtime.
    pub async fn from_wsdl(target: CmsTarget, timeout: Duration) -> Result<Self, CmsClientError> {
        let configured = http_url(target.url.as_deref().unwrap_or(&target.fallback_url))?;
        let endpoint = Endpoint {
            actions: HashMap::new(),
            contract: Some(ContractStatus::configured(
                &target.wsdl,
                configured.as_str(),
                "not read yet",
            )),
            url: configured,
        };
        let every = target.reread_every;
        let client = Self::with(http_client(timeout)?, timeout, endpoint, Some(target));
        if let Err(error) = client.inner.read_wsdl().await {
            let endpoint = client.inner.endpoint();
            tracing::warn!(wsdl = %client.inner.target.as_ref().map_or("", |t| &t.wsdl), %error,
                address = %endpoint.url,
                "CMS WSDL unreachable: using the configured address and our soapActions until it can be read");
        }
        let (inner, stop) = (Arc::downgrade(&client.inner), client.inner.stop.clone());
        tokio::spawn(reread_while_unreachable(inner, stop, every));
        Ok(client)
    }

    fn with(
        http: reqwest::Client,
        timeout: Duration,
        endpoint: Endpoint,
        target: Option<CmsTarget>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                timeout,
                endpoint: RwLock::new(Arc::new(endpoint)),
                target,
                stale: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        }
    }
}

/// Reads the WSDL again every `every` while it is needed, until the client is gone.
async fn reread_while_unreachable(inner: Weak<Inner>, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.needs_wsdl() {
            if let Err(error) = inner.read_wsdl().await {
                tracing::debug!(%error, "CMS WSDL still unreadable");
            }
        }
    }
}

impl Inner {
    fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn needs_wsdl(&self) -> bool {
        let from_wsdl = self
            .endpoint()
            .contract
            .as_ref()
            .is_some_and(|c| c.error.is_none());
        !from_wsdl || self.stale.load(Ordering::Relaxed)
    }

    /// Reads the WSDL and goes by it; on failure keeps what it had and says why.
    async fn read_wsdl(&self) -> Result<(), String> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let read = self.fetch_wsdl(&target.wsdl).await.and_then(|description| {
            self.endpoint_from(target, description)
                .map_err(|e| e.to_string())
        });
        let previous = self.endpoint();
        let next = match read {
            Ok(endpoint) => {
                self.stale.store(false, Ordering::Relaxed);
                tracing::info!(wsdl = %target.wsdl, address = %endpoint.url,
                    actions = ?endpoint.actions, "CMS described by its WSDL");
                endpoint
            }
            // A description read before stays in force: the CMS may be down, not moved.
            Err(error)
                if previous
                    .contract
                    .as_ref()
                    .is_some_and(|c| c.error.is_none()) =>
            {
                return Err(error);
            }
            Err(error) => {
                let next = Endpoint {
                    url: previous.url.clone(),
                    actions: HashMap::new(),
                    contract: Some(ContractStatus::configured(
                        &target.wsdl,
                        previous.url.as_str(),
                        &error,
                    )),
                };
                self.replace(next);
                return Err(error);
            }
        };
        self.replace(next);
        Ok(())
    }

    fn replace(&self, endpoint: Endpoint) {
        *self
            .endpoint
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(endpoint);
    }

    fn endpoint_from(
        &self,
        target: &CmsTarget,
        description: ServiceDescription,
    ) -> Result<Endpoint, CmsClientError> {
        let address = match (&target.url, &description.address) {
            (Some(configured), _) => configured.clone(),
            (None, Some(described)) => described.clone(),
            (None, None) => target.fallback_url.clone(),
        };
        let url = http_url(&address)?;
        Ok(Endpoint {
            contract: Some(ContractStatus {
                source: "wsdl",
                wsdl: target.wsdl.clone(),
                address: url.to_string(),
                error: None,
            }),
            url,
            actions: description.actions,
        })
    }

    /// The WSDL from a URL or a file, capped in size and bounded in time.
    async fn fetch_wsdl(&self, source: &str) -> Result<ServiceDescription, String> {
        let bytes = if source.starts_with("http://") || source.starts_with("https://") {
            let response = self
                .http
                .get(source)
                .send()
                .await
                .map_err(|e| transport_message(&e))?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            let mut response = response;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| transport_message(&e))? {
                if body.len() + chunk.len() > MAX_WSDL_BYTES {
                    return Err(wsdl::WsdlError::TooLarge.to_string());
                }
                body.extend_from_slice(&chunk);
            }
            body
        } else {
            let path = source.strip_prefix("file://").unwrap_or(source);
            let read = async {
                let file = tokio::fs::File::open(path).await?;
                let mut body = Vec::new();
                use tokio::io::AsyncReadExt as _;
                file.take(MAX_WSDL_BYTES as u64 + 1)
                    .read_to_end(&mut body)
                    .await?;
                Ok::<_, std::io::Error>(body)
            };
            tokio::time::timeout(self.timeout, read)
                .await
                .map_err(|_| "timed out reading the file".to_owned())?
                .map_err(|e| format!("{path}: {e}"))?
        };
        wsdl::parse(&bytes).map_err(|e| e.to_string())
    }
}

impl CmsClient {
    fn timed_out(&self) -> CallError {
        CallError::Timeout(u64::try_from(self.inner.timeout.as_millis()).unwrap_or(u64::MAX))
    }

    /// Posts one envelope and returns the HTTP status with the reply body.
    async fn exchange(&self, request: &CmsRequest) -> Result<(StatusCode, Vec<u8>), CallError> {
        let endpoint = self.inner.endpoint();
        let action = endpoint
            .actions
            .get(request.call.operation_name())
            .map_or_else(|| request.call.soap_action(), |a| format!("\"{a}\""));
        let soap_action = HeaderValue::from_str(&action)
            .map_err(|e| CallError::Malformed(format!("SOAPAction: {e}")))?;
        let mut response = self
            .inner
            .http
            .post(endpoint.url.clone())
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
        // Unreachable: it may have moved, which its WSDL would tell.
        self.inner.stale.store(true, Ordering::Relaxed);
        CallError::Connection(transport_message(error))
    }
}

/// reqwest's own message hides the cause (refused, reset, DNS) in its sources.
fn transport_message(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
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
        let (status, body) = tokio::time::timeout(self.inner.timeout, self.exchange(&cms_request))
            .await
            .map_err(|_| self.timed_out())??;
        classify(&cms_request.call, status, decode_reply(&body))
    }

    fn contract(&self) -> Option<ContractStatus> {
        self.inner.endpoint().contract.clone()
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
