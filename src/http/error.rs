//! One error type for the whole API, one JSON shape for every error:
//! `{"error": {"code", "message", "details"?}}`.
//!
//! Clients get a stable code and a message meant for them. What went wrong inside
//! (a store outage, a panic, a bus failure) is logged with tracing in the request's
//! span and never put in a response.

use crate::auth::AuthError;
use crate::bus::BusError;
use crate::domain::ValidationErrors;
use crate::service::ServiceError;
use crate::store::StoreError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Malformed request: bad JSON, wrong content type, bad header or query.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid fields, each reported with its path.
    #[error("the request has invalid fields")]
    Validation(ValidationErrors),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// An `Idempotency-Key` used before with a different request body.
    #[error(
        "this Idempotency-Key was used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency or this node is overloaded or down; worth retrying.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// A bug or corrupt data. The cause is logged, never returned.
    #[error("internal server error")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::Validation(_) => "VALIDATION_FAILED",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "CONFLICT",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after_secs,
        }
    }

    pub(crate) fn order_not_found() -> Self {
        Self::NotFound("order not found".into())
    }

    /// The JSON body clients see.
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Self::Validation(details) = self {
            error["details"] = json!(details);
        }
        json!({ "error": error })
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(cause = %cause, "request failed with an internal error");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if matches!(self, Self::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        Self::Validation(errors)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::order_not_found(),
            StoreError::DuplicateEmail => {
                Self::Conflict("an account with this e-mail address already exists".into())
            }
            StoreError::VersionConflict { .. } => {
                Self::Conflict("the order changed meanwhile; try again".into())
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "store unavailable");
                Self::unavailable("the order store is temporarily unavailable", Some(5))
            }
            StoreError::Corrupt(cause) => Self::Internal(format!("corrupt stored data: {cause}")),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "message bus unavailable");
                Self::unavailable("the message bus is temporarily unavailable", Some(5))
            }
            BusError::Rejected(cause) => Self::Internal(format!("bus rejected a message: {cause}")),
            e @ BusError::NoSuchQueue(_) => Self::NotFound(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => Self::order_not_found(),
            ServiceError::Invalid(errors) => Self::Validation(errors),
            ServiceError::Conflict(message) => Self::Conflict(message),
            ServiceError::KeyReused => Self::IdempotencyKeyReused,
            ServiceError::Busy { retry_after_secs } => Self::unavailable(
                "too many orders are being processed; retry shortly",
                Some(retry_after_secs),
            ),
            ServiceError::Draining { retry_after_secs } => Self::unavailable(
                "this node is shutting down; retry (any node of the cluster takes orders)",
                Some(retry_after_secs),
            ),
            ServiceError::Store(e) => e.into(),
            ServiceError::Bus(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidToken => Self::Unauthorized("invalid or expired token".into()),
            AuthError::Store(e) => e.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                let mut details = ValidationErrors::default();
                details.add("body", e.body_text());
                Self::Validation(details)
            }
            JsonRejection::MissingJsonContentType(_) => {
                Self::BadRequest("expected a JSON body with Content-Type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn rendered(error: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn validation_errors_are_422_with_field_details() {
        let mut details = ValidationErrors::default();
        details.add("packageDetails.weight", "must be greater than 0");
        let (status, _, body) = rendered(details.into()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "VALIDATION_FAILED");
        assert_eq!(
            body["error"]["details"][0]["field"],
            "packageDetails.weight"
        );
        assert_eq!(
            body["error"]["details"][0]["message"],
            "must be greater than 0"
        );
    }

    #[tokio::test]
    async fn unauthorized_challenges_for_a_bearer_token() {
        let (status, headers, body) = rendered(AuthError::InvalidToken.into()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        assert!(body["error"].get("details").is_none());
    }

    #[tokio::test]
    async fn busy_intake_is_503_with_retry_after() {
        let (status, headers, body) = rendered(
            ServiceError::Busy {
                retry_after_secs: 3,
            }
            .into(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "3");
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    }

    #[tokio::test]
    async fn rate_limit_is_429_with_retry_after() {
        let (status, headers, _) = rendered(ApiError::RateLimited {
            retry_after_secs: 12,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "12");
    }

    #[tokio::test]
    async fn internal_causes_never_reach_the_client() {
        let secret_cause = "redb file /var/lib/data/orders.redb: checksum mismatch";
        let (status, _, body) = rendered(StoreError::Corrupt(secret_cause.into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
        assert!(!body.to_string().contains("redb"));

        let (status, _, body) =
            rendered(StoreError::Unavailable("mongodb://user:pw@10.0.0.1 refused".into()).into())
                .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.to_string().contains("mongodb"));
    }

    #[tokio::test]
    async fn service_outcomes_map_to_their_statuses() {
        let cases = [
            (ServiceError::NotFound, StatusCode::NOT_FOUND, "NOT_FOUND"),
            (
                ServiceError::Conflict("out for delivery".into()),
                StatusCode::CONFLICT,
                "CONFLICT",
            ),
            (
                ServiceError::Store(StoreError::DuplicateEmail),
                StatusCode::CONFLICT,
                "CONFLICT",
            ),
            (
                ServiceError::Bus(BusError::Unavailable("down".into())),
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
            ),
        ];
        for (error, status, code) in cases {
            let (got_status, _, body) = rendered(error.into()).await;
            assert_eq!(got_status, status);
            assert_eq!(body["error"]["code"], code);
        }
    }
}
