//! `POST /api/auth/register` and `POST /api/auth/login` (seed 000 sections 2 and 13.1).

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ClientIp};
use crate::auth::{hash_password, verify_password};
use crate::domain::{Email, Registration, Role, User, UserId, ValidationErrors};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often idle addresses are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Tracked addresses that trigger an early sweep.
const SWEEP_ABOVE: usize = 100_000;

/// Login attempts per client address per minute. Addresses whose budget has refilled
/// are dropped on a sweep, done inline on logins (at most once a minute, or early
/// when many addresses are tracked), so memory stays bounded without a background
/// task.
pub struct LoginLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    last_sweep: Mutex<Instant>,
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// `Err(wait)` when the address has used up its attempts.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.sweep();
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    fn sweep(&self) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() >= SWEEP_EVERY || self.limiter.len() > SWEEP_ABOVE {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            *last = Instant::now();
        }
    }

    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "phone": user.phone,
        "company": user.company,
        "createdAt": user.created_at,
    })
}

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

pub async fn register(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
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
    state.app.store.insert_user(&user).await?;
    let token = state
        .tokens
        .issue(&user.id, &user.email, user.role, Utc::now())?;
    tracing::info!(user_id = %user.id, "account registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"token": token, "user": user_json(&user)})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    email: String,
    password: String,
}

/// The attempt is counted before anything else, so even malformed attempts use up
/// the budget.
pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    body: Result<ApiJson<LoginRequest>, ApiError>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.login_limiter.check(ip) {
        tracing::warn!(client = %ip, "login rate limit reached");
        return Err(ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let ApiJson(request) = body?;
    let user = match Email::parse(&request.email) {
        Some(email) => state.app.store.user_by_email(&email).await?,
        None => None,
    };
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let verified = verify_password(request.password, stored).await?;
    let user = match user {
        Some(user) if verified => user,
        _ => return Err(ApiError::Unauthorized("invalid e-mail or password".into())),
    };
    let token = state
        .tokens
        .issue(&user.id, &user.email, user.role, Utc::now())?;
    Ok(axum::Json(json!({
        "token": token,
        "user": {"id": user.id, "email": user.email, "role": user.role},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_the_quota_then_refuses_with_a_wait() {
        let limiter = LoginLimiter::new(5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(other).is_ok(), "limits are per address");
        assert_eq!(limiter.tracked(), 2);
    }

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
