//! Extractors: the authenticated caller, the client address for rate limiting, and
//! JSON/path/query wrappers whose rejections use the API's error shape instead of
//! axum's plain-text defaults.

use super::error::ApiError;
use crate::auth::{Principal, Sessions};
use crate::domain::{Role, UserId};
use crate::service::Viewer;
use axum::extract::Query;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use chrono::{DateTime, Utc};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A JSON body; bad JSON or a missing `Content-Type: application/json` is a 400,
/// a body of the wrong shape a 422.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

/// Whoever presented a valid token of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) user_id: UserId,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) session_id: String,
    /// When the presented access token expires.
    pub(crate) expires_at: DateTime<Utc>,
}

impl Caller {
    pub(crate) fn viewer(&self) -> Viewer {
        Viewer {
            user_id: self.user_id.clone(),
            role: self.role,
        }
    }

    /// 403 unless the caller has one of `roles`.
    pub(crate) fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
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

impl From<Principal> for Caller {
    fn from(p: Principal) -> Self {
        Self {
            user_id: p.user_id,
            email: p.email.as_str().to_owned(),
            role: p.role,
            session_id: p.session_id,
            expires_at: p.expires_at,
        }
    }
}

/// Validates a raw token, wherever it came from (header, WebSocket query string or
/// frame), against its session and user.
pub(crate) async fn authenticate(sessions: &Sessions, token: &str) -> Result<Caller, ApiError> {
    Ok(sessions.authenticate(token).await?.into())
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The session token a request carries: its `Authorization: Bearer` header, else
/// its `?token=` query parameter, the way browsers authenticate a WebSocket (they
/// cannot set its headers).
pub(crate) fn request_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    bearer(headers)
        .map(str::to_owned)
        .or_else(|| Query::<TokenQuery>::try_from_uri(uri).ok()?.0.token)
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Sessions>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized("an Authorization: Bearer <token> header is required".into())
        })?;
        let caller = authenticate(&Arc::<Sessions>::from_ref(state), token).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// The address rate limits are keyed by: the peer's IP, or behind a trusted proxy
/// the client's as the proxy reports it (see [`ClientIp::resolve`]), with IPv6
/// addresses reduced to their /64 (one subscriber usually owns a whole /64, so
/// per-address limits would be no limit at all). Without connection info all
/// clients share one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientIp(pub IpAddr);

impl ClientIp {
    pub(crate) fn rate_key(ip: IpAddr) -> IpAddr {
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

impl ClientIp {
    /// The client of a request from `peer`: the peer itself, unless it is one of the
    /// `trusted` proxies; then the right-most `X-Forwarded-For` address that is not a
    /// trusted proxy (addresses left of it could be made up by the client).
    pub(crate) fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(&peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if is_trusted(&ip) => continue,
                Ok(ip) => return ip,
                // Garbage where an address should be: stop believing the header.
                Err(_) => return peer,
            }
        }
        peer
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    /// Set by the rate-limit layer (which knows the trusted proxies); the peer
    /// address otherwise.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(resolved) = parts.extensions.get::<ClientIp>() {
            return Ok(*resolved);
        }
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

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut builder = Request::builder().uri("/api/orders");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap().into_parts().0.headers
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_other_schemes_ignored() {
        assert_eq!(bearer(&headers(Some("Bearer abc.def"))), Some("abc.def"));
        assert_eq!(bearer(&headers(Some("bearer  abc"))), Some("abc"));
        assert_eq!(bearer(&headers(Some("Basic dXNlcjpwdw=="))), None);
        assert_eq!(bearer(&headers(Some("Bearer"))), None);
        assert_eq!(bearer(&headers(None)), None);
    }

    #[test]
    fn the_header_token_comes_first_then_the_query_parameter() {
        let uri: Uri = "/ws?since=1&token=q.jwt%2B".parse().unwrap();
        assert_eq!(
            request_token(&headers(Some("Bearer h.jwt")), &uri).as_deref(),
            Some("h.jwt")
        );
        assert_eq!(
            request_token(&headers(None), &uri).as_deref(),
            Some("q.jwt+")
        );
        let bare: Uri = "/ws".parse().unwrap();
        assert_eq!(request_token(&headers(None), &bare), None);
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.0.0.2".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            ClientIp::resolve(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "the right-most untrusted hop, not what the client wrote first"
        );
        assert_eq!(ClientIp::resolve(stranger, &h, &trusted), stranger);
        assert_eq!(ClientIp::resolve(proxy, &HeaderMap::new(), &trusted), proxy);
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(ClientIp::resolve(proxy, &h, &trusted), proxy);
        assert_eq!(ClientIp::resolve(proxy, &h, &[]), proxy);
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
