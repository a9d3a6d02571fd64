//! Extractors: the authenticated caller, the client address for rate limiting, and
//! JSON/path/query wrappers whose rejections use the API's error shape instead of
//! axum's plain-text defaults.

use super::error::ApiError;
use crate::auth::TokenKeys;
use crate::domain::{Role, UserId};
use crate::service::Viewer;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A JSON body; bad JSON or a missing `Content-Type: application/json` is a 400,
/// a body of the wrong shape a 422.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Whoever presented a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
}

impl Caller {
    pub fn viewer(&self) -> Viewer {
        Viewer {
            user_id: self.user_id.clone(),
            role: self.role,
        }
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this action is not allowed for the {} role",
                self.role.as_str()
            )))
        }
    }
}

/// Validates a raw token, wherever it came from (header, WebSocket query string).
pub fn authenticate(keys: &TokenKeys, token: &str) -> Result<Caller, ApiError> {
    let claims = keys.verify(token)?;
    Ok(Caller {
        user_id: claims.user_id,
        email: claims.email,
        role: claims.role,
    })
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<TokenKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::Unauthorized("an Authorization: Bearer <token> header is required".into())
        })?;
        authenticate(&Arc::<TokenKeys>::from_ref(state), token)
    }
}

/// The address rate limits are keyed by: the peer's IP, with IPv6 addresses reduced
/// to their /64 (one subscriber usually owns a whole /64, so per-address limits would
/// be no limit at all). Without connection info (a server not started with
/// `into_make_service_with_connect_info`) all clients share one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn rate_key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(prefix))
                }
            },
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
        Ok(Self(Self::rate_key(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut builder = Request::builder().uri("/api/orders");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_other_schemes_ignored() {
        assert_eq!(
            bearer_token(&parts(Some("Bearer abc.def"))),
            Some("abc.def")
        );
        assert_eq!(bearer_token(&parts(Some("bearer  abc"))), Some("abc"));
        assert_eq!(bearer_token(&parts(Some("Basic dXNlcjpwdw=="))), None);
        assert_eq!(bearer_token(&parts(Some("Bearer"))), None);
        assert_eq!(bearer_token(&parts(None)), None);
    }

    #[tokio::test]
    async fn caller_needs_a_valid_token() {
        let keys = Arc::new(TokenKeys::new(
            b"a-secret-of-16-bytes",
            chrono::Duration::hours(1),
        ));
        let email = crate::domain::Email::parse("d@x.com").unwrap();
        let token = keys
            .issue(
                &UserId::from_trusted("usr_d"),
                &email,
                Role::Driver,
                chrono::Utc::now(),
            )
            .unwrap();
        let mut good = parts(Some(&format!("Bearer {token}")));
        let caller = Caller::from_request_parts(&mut good, &keys).await.unwrap();
        assert_eq!(caller.role, Role::Driver);
        assert!(caller.require(&[Role::Driver, Role::Admin]).is_ok());
        assert!(matches!(
            caller.require(&[Role::Client]),
            Err(ApiError::Forbidden(_))
        ));

        let mut missing = parts(None);
        let err = Caller::from_request_parts(&mut missing, &keys)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(_)));
        let mut forged = parts(Some("Bearer eyJhbGciOiJub25lIn0.e30."));
        let err = Caller::from_request_parts(&mut forged, &keys)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(_)));
    }

    #[test]
    fn ipv6_clients_are_limited_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientIp::rate_key(a), ClientIp::rate_key(b));
        assert_ne!(ClientIp::rate_key(a), ClientIp::rate_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            ClientIp::rate_key(mapped),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
    }
}
