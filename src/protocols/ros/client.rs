//! The runtime's side of the ROS REST API.
//!
//! Cancelling a route whose creation outcome is unknown (the optimise call timed out)
//! replays the optimise request with its original idempotency key: the optimiser
//! answers with the route it planned, or plans it now, and either way the route that
//! comes back is the one to delete. That keeps compensation exact without asking the
//! optimiser for a lookup it does not offer.

use super::{ErrorBody, OptimizeRequest, read_route};
use crate::domain::StepRequest;
use crate::domain::{Operation, OperationOutcome};
use crate::protocols::{CallError, SystemClient};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use reqwest::{RequestBuilder, StatusCode, Url};
use std::time::Duration;

/// Largest reply body read; a route is a few hundred bytes.
const MAX_BODY: usize = 1024 * 1024;
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

#[derive(Debug, Clone)]
pub struct RosClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

impl RosClient {
    /// `base_url` is the optimiser's root, e.g. `http://127.0.0.1:4001`; a path prefix
    /// is kept. Fails on a URL that cannot be a base for `/api/routes/...`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, CallError> {
        let base = Url::parse(base_url)
            .map_err(|e| CallError::Connection(format!("invalid ROS url {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CallError::Connection(format!(
                "invalid ROS url {base_url:?}: not an http base"
            )));
        }
        // Calls go to the configured optimiser only: a redirect (to another host, or
        // anywhere) is not followed but answered as a protocol failure, so a hostile
        // or hijacked optimiser cannot make us send order addresses elsewhere (SSRF).
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CallError::Connection(e.to_string()))?;
        Ok(Self {
            http,
            base,
            timeout,
        })
    }

    /// Plans (or, for a key seen before, returns) the route of one order.
    pub(crate) async fn optimize(
        &self,
        request: &OptimizeRequest,
        idempotency_key: &str,
    ) -> Result<OperationOutcome, CallError> {
        let post = self
            .http
            .post(self.url(&["api", "routes", "optimize"])?)
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .json(request);
        let (status, body) = self.send(post).await?;
        if status.is_success() {
            let route =
                read_route(&body).map_err(|e| CallError::Malformed(format!("route: {e}")))?;
            return Ok(OperationOutcome::RouteOptimized(route));
        }
        settle_failure(status, &body)
    }

    /// Deletes a route; a route the optimiser does not know is already undone.
    pub(crate) async fn cancel(
        &self,
        route_id: &str,
        idempotency_key: &str,
    ) -> Result<OperationOutcome, CallError> {
        let delete = self
            .http
            .delete(self.url(&["api", "routes", route_id])?)
            .header(IDEMPOTENCY_KEY, idempotency_key);
        let (status, body) = self.send(delete).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(OperationOutcome::Undone);
        }
        settle_failure(status, &body)
    }

    /// Cancels the route of an order whose optimise call never settled: see the
    /// module comment.
    async fn cancel_unknown_route(
        &self,
        request: &StepRequest,
    ) -> Result<OperationOutcome, CallError> {
        let optimize_key = Operation::OptimizeRoute.idempotency_key(&request.order_id);
        match self
            .optimize(&optimize_request(request), &optimize_key)
            .await?
        {
            OperationOutcome::RouteOptimized(route) => match route.route_id {
                Some(route_id) => self.cancel(&route_id, &request.idempotency_key()).await,
                // An optimiser that names no route offers no way to cancel one.
                None => Ok(OperationOutcome::Undone),
            },
            // Refused now, so nothing was planned under that key before either.
            _ => Ok(OperationOutcome::Undone),
        }
    }

    /// Percent-encodes each segment, so a route id from the optimiser cannot step
    /// outside `/api/routes/`.
    fn url(&self, segments: &[&str]) -> Result<Url, CallError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CallError::Connection("ROS url cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn send(&self, request: RequestBuilder) -> Result<(StatusCode, Bytes), CallError> {
        let mut response = request.send().await.map_err(|e| self.classify(e))?;
        let status = response.status();
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(CallError::Malformed(format!(
                    "HTTP {status}: body over {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body.freeze()))
    }

    fn classify(&self, error: reqwest::Error) -> CallError {
        if error.is_timeout() {
            CallError::Timeout(millis(self.timeout))
        } else {
            CallError::Connection(error.to_string())
        }
    }
}

#[async_trait]
impl SystemClient for RosClient {
    async fn execute(&self, request: &StepRequest) -> Result<OperationOutcome, CallError> {
        let call = async {
            match request.operation {
                Operation::OptimizeRoute => {
                    self.optimize(&optimize_request(request), &request.idempotency_key())
                        .await
                }
                Operation::CancelRoute => match &request.route_id {
                    Some(route_id) => self.cancel(route_id, &request.idempotency_key()).await,
                    None => self.cancel_unknown_route(request).await,
                },
                other => Err(CallError::Malformed(format!(
                    "the route optimiser does not handle {}",
                    other.name()
                ))),
            }
        };
        // Cancelling an unknown route takes two requests; the bound is on the call.
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| CallError::Timeout(millis(self.timeout)))?
    }
}

fn optimize_request(request: &StepRequest) -> OptimizeRequest {
    OptimizeRequest {
        order_id: Some(request.order_id.clone()),
        pickup: request.pickup.clone(),
        delivery: request.delivery.clone(),
    }
}

/// A 4xx that states a reason is the optimiser saying no; a 5xx, 408 or 429 is a
/// failure worth retrying; anything else means we and the optimiser disagree on the
/// protocol.
fn settle_failure(status: StatusCode, body: &[u8]) -> Result<OperationOutcome, CallError> {
    let reason = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let transient = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    match (transient, status.is_client_error(), reason) {
        (true, _, reason) => Err(CallError::Remote(format!(
            "HTTP {status}: {}",
            reason.unwrap_or_default()
        ))),
        (false, true, Some(reason)) => Ok(OperationOutcome::Refused { reason }),
        (false, true, None) if status == StatusCode::UNPROCESSABLE_ENTITY => {
            Ok(OperationOutcome::Refused {
                reason: "no route".into(),
            })
        }
        (false, _, _) if status.is_redirection() => Err(CallError::Malformed(format!(
            "HTTP {status}: redirects are not followed"
        ))),
        (false, _, _) => Err(CallError::Malformed(format!("unexpected HTTP {status}"))),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_refusals_and_failures() {
        let refusal = settle_failure(StatusCode::UNPROCESSABLE_ENTITY, br#"{"error":"no route"}"#);
        assert_eq!(
            refusal,
            Ok(OperationOutcome::Refused {
                reason: "no route".into()
            })
        );
        assert!(matches!(
            settle_failure(StatusCode::UNPROCESSABLE_ENTITY, b""),
            Ok(OperationOutcome::Refused { .. })
        ));
        assert!(matches!(
            settle_failure(StatusCode::SERVICE_UNAVAILABLE, br#"{"error":"down"}"#),
            Err(CallError::Remote(_))
        ));
        assert!(matches!(
            settle_failure(StatusCode::TOO_MANY_REQUESTS, br#"{"error":"slow down"}"#),
            Err(CallError::Remote(_))
        ));
        assert!(matches!(
            settle_failure(StatusCode::NOT_FOUND, b"<html>"),
            Err(CallError::Malformed(_))
        ));
        for redirect in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
            assert!(matches!(
                settle_failure(redirect, br#"{"routeId":"RT-elsewhere"}"#),
                Err(CallError::Malformed(_))
            ));
        }
    }

    #[test]
    fn route_ids_cannot_escape_the_routes_path() {
        let client = RosClient::new("http://127.0.0.1:4001/ros/", Duration::from_secs(1)).unwrap();
        let url = client.url(&["api", "routes", "../../admin?x=1"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:4001/ros/api/routes/..%2F..%2Fadmin%3Fx=1"
        );
        assert!(RosClient::new("not a url", Duration::from_secs(1)).is_err());
        assert!(RosClient::new("mailto:ops@example.com", Duration::from_secs(1)).is_err());
    }
}
