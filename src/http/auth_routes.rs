//! Accounts and sessions (seed 000 sections 2 and 13.1): `POST /api/auth/register`,
//! `login`, `refresh` and `logout`, and `DELETE /api/admin/users/{id}/sessions`.
//!
//! Registration does not reveal whether an e-mail address has an account: a new
//! address and a taken one get the same 202 and the same message, after the same
//! work (the password is hashed either way); the caller then logs in. Only the log
//! says which it was.

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Caller, ClientIp};
use super::limits::rate_limited;
use crate::auth::{AuthError, IssuedTokens, LoginCheck, hash_password};
use crate::domain::{Email, Registration, Role, User, UserId, ValidationErrors};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Required text fields are read as "" when absent or not strings, so that
/// `Registration::parse` reports them; optional ones must be strings or null.
fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn optional_text<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    errors: &mut ValidationErrors,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            errors.add(key, "must be a string");
            None
        }
    }
}

fn parse_registration(body: &Value) -> Result<Registration, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let Some(obj) = body.as_object() else {
        errors.add("body", "must be a JSON object");
        return Err(errors);
    };
    let phone = optional_text(obj, "phone", &mut errors);
    let company = optional_text(obj, "company", &mut errors);
    let parsed = Registration::parse(
        text(obj, "name"),
        text(obj, "email"),
        text(obj, "password"),
        phone,
        company,
    );
    match parsed {
        Ok(registration) if errors.is_empty() => Ok(registration),
        Ok(_) => Err(errors),
        Err(mut field_errors) => {
            field_errors.0.extend(errors.0);
            Err(field_errors)
        }
    }
}

/// Counted against the address's registration budget first, malformed or not.
pub(crate) async fn register(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.limits.registrations.check(&ip) {
        tracing::warn!(client = %ip, "registration rate limit reached");
        return Err(rate_limited(wait));
    }
    let ApiJson(body) = body?;
    let registration = parse_registration(&body)?;
    let user = User {
        id: UserId::generate(),
        name: registration.name,
        email: registration.email,
        role: Role::Client,
        password_hash: hash_password(registration.password).await?,
        phone: registration.phone,
        company: registration.company,
        created_at: Utc::now(),
    };
    if state.sessions.register(&user).await? {
        tracing::info!(user_id = %user.id, client = %ip, "account registered");
    } else {
        tracing::info!(
            client = %ip,
            "registration for an e-mail address that has an account; nothing changed"
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "message": "If this e-mail address had no account, it has one now: log in with it and the password you chose.",
            "email": user.email,
        })),
    )
        .into_response())
}

fn tokens_json(issued: &IssuedTokens) -> Value {
    let user = &issued.user;
    json!({
        "token": issued.access_token,
        "refreshToken": issued.refresh_token,
        "expiresIn": issued.expires_in_secs,
        "tokenType": "Bearer",
        "user": {"id": user.id, "email": user.email, "role": user.role, "name": user.name},
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginRequest {
    email: String,
    password: String,
}

/// The attempt is counted before anything else, so even malformed attempts use up
/// the address's budget; then the e-mail address's lockout is checked. Failures are
/// logged with the client address (never the password).
pub(crate) async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    body: Result<ApiJson<LoginRequest>, ApiError>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.limits.logins.check(&ip) {
        tracing::warn!(client = %ip, "login rate limit reached");
        return Err(rate_limited(wait));
    }
    let ApiJson(request) = body?;
    let email = Email::parse(&request.email);
    let account = email.as_ref().map_or("", Email::as_str).to_owned();
    if let Err(wait) = state.limits.lockout.check(&account) {
        tracing::warn!(client = %ip, email = %account, "login refused: the address is locked after failed logins");
        return Err(rate_limited(wait));
    }
    let user = match state
        .sessions
        .check_login(email.as_ref(), request.password)
        .await?
    {
        LoginCheck::Verified(user) => user,
        LoginCheck::Refused { known_account } => {
            let locked = state.limits.lockout.failed(&account);
            tracing::warn!(client = %ip, email = %account, known_account, locked, "failed login");
            return Err(ApiError::Unauthorized("invalid e-mail or password".into()));
        }
    };
    state.limits.lockout.succeeded(&account);
    let issued = state.sessions.start(user).await?;
    Ok(axum::Json(tokens_json(&issued)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// A new access token and the session's next refresh token; the one presented is
/// spent. Presenting a spent one ends the session (see `auth::Sessions::refresh`).
pub(crate) async fn refresh(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    match state.sessions.refresh(&request.refresh_token).await {
        Ok(issued) => Ok(axum::Json(tokens_json(&issued)).into_response()),
        Err(AuthError::InvalidToken) => {
            tracing::warn!(client = %ip, "refresh refused");
            Err(ApiError::Unauthorized(
                "invalid, spent or revoked refresh token".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogoutRequest {
    refresh_token: Option<String>,
}

/// Ends the login session of the access token presented (or of the refresh token in
/// the body): its refresh token and every access token issued in it stop working.
pub(crate) async fn logout(
    State(state): State<ApiState>,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<LogoutRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let request = body.map(|ApiJson(r)| r).unwrap_or_default();
    let from_body = request
        .refresh_token
        .as_deref()
        .and_then(|token| state.sessions.session_of_refresh(token))
        .map(str::to_owned);
    let session = match (&caller, from_body) {
        (Ok(caller), _) => caller.session_id.clone(),
        (Err(_), Some(session)) => session,
        (Err(e), None) => {
            return Err(ApiError::Unauthorized(format!(
                "{e}; send the access token, or {{\"refreshToken\"}} in the body"
            )));
        }
    };
    state.sessions.revoke(&session).await?;
    tracing::info!(session = %session, "logged out");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Admins: ends every login session of a user (a stolen laptop, a leaver). Their
/// access tokens stop working within `auth.session_cache_ms` on every node.
pub(crate) async fn revoke_user_sessions(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let user = UserId::from_trusted(user_id);
    if state.sessions.account(&user).await?.is_none() {
        return Err(ApiError::NotFound("no such user".into()));
    }
    let revoked = state.sessions.revoke_user(&user).await?;
    tracing::info!(target: "audit", admin = %caller.user_id, admin_email = %caller.email,
        user_id = %user, revoked, "admin revoked a user's sessions");
    Ok(axum::Json(json!({"userId": user, "revokedSessions": revoked})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_reports_bad_types_and_bad_values_together() {
        let body = json!({"name": "J", "email": 5, "password": "longenough", "phone": 12});
        let err = parse_registration(&body).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "email", "phone"]);
        let ok = parse_registration(
            &json!({"name": "Jo", "email": "JO@x.com", "password": "longenough", "company": null}),
        )
        .unwrap();
        assert_eq!(ok.email.as_str(), "jo@x.com");
        assert!(parse_registration(&json!("x")).is_err());
    }
}
