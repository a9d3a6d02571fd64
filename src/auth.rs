//! Accounts and tokens: argon2id password hashes, HS256 JWTs with the seed's claims
//! (seed 000 section 8.5), and the admin and driver accounts an operator needs on the
//! first start.
//!
//! Hashing is deliberately slow and memory-hungry (argon2id, about 19 MiB per hash),
//! so it runs on the blocking pool and a fixed number of hashes run at once: a flood
//! of logins queues up instead of exhausting memory.

use crate::config::{AuthSettings, Settings};
use crate::domain::user::MIN_PASSWORD_LEN;
use crate::domain::{Email, Role, User, UserId};
use crate::store::{SharedStore, StoreError};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// Hashes computed at once; each holds about 19 MiB while it runs.
const MAX_CONCURRENT_HASHES: usize = 8;
const GENERATED_PASSWORD_LEN: usize = 20;

static HASHING_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_HASHES);
/// A hash of a random password, verified when a login names no account so that an
/// unknown e-mail costs as much as a wrong password.
static DUMMY_HASH: OnceLock<Option<String>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("bootstrap account {email}: {reason}")]
    Bootstrap { email: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The JWT payload, exactly the seed's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    pub exp: u64,
    pub iat: u64,
}

/// Signing and verification keys for one secret. Deliberately not `Debug`: it holds
/// the secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl: chrono::Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: Validation::new(Algorithm::HS256),
            ttl,
        }
    }

    pub fn from_settings(auth: &AuthSettings) -> Self {
        let hours = i64::try_from(auth.token_ttl_hours).unwrap_or(i64::MAX);
        let ttl = chrono::Duration::try_hours(hours).unwrap_or(chrono::Duration::MAX);
        Self::new(auth.jwt_secret.as_bytes(), ttl)
    }

    pub fn issue(
        &self,
        user_id: &UserId,
        email: &Email,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let iat = u64::try_from(now.timestamp()).unwrap_or(0);
        let exp = now
            .checked_add_signed(self.ttl)
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .unwrap_or(u64::MAX);
        let claims = Claims {
            user_id: user_id.clone(),
            email: email.as_str().to_owned(),
            role,
            exp,
            iat,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims; `issue` is the normal way in.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Hashing(format!("cannot sign a token: {e}")))
    }

    /// Checks signature, algorithm and expiry. Used by the HTTP extractor and by the
    /// WebSocket endpoint, which may receive the token as a query parameter.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AuthError::InvalidToken)
    }
}

fn hash_blocking(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

fn verify_blocking(password: &str, stored: Option<&str>) -> Result<bool, AuthError> {
    let dummy = DUMMY_HASH
        .get_or_init(|| hash_blocking(&generate_password()).ok())
        .as_deref();
    let (phc, real) = match (stored, dummy) {
        (Some(stored), _) => (stored, true),
        (None, Some(dummy)) => (dummy, false),
        (None, None) => return Ok(false),
    };
    let parsed = PasswordHash::new(phc).map_err(|e| AuthError::Hashing(e.to_string()))?;
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    Ok(real && matches)
}

async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let _slot = HASHING_SLOTS
        .acquire()
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AuthError::Hashing(format!("hashing task failed: {e}")))?
}

/// An argon2id PHC string with a fresh random salt.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    on_blocking_pool(move || hash_blocking(&password)).await
}

/// Whether `password` matches `stored`. With no stored hash (unknown account) a dummy
/// hash is verified anyway and the answer is `false`, so both cost the same time.
pub async fn verify_password(password: String, stored: Option<String>) -> Result<bool, AuthError> {
    on_blocking_pool(move || verify_blocking(&password, stored.as_deref())).await
}

pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// Creates the configured admin and driver accounts if they do not exist yet.
/// Returns the accounts created with a generated password, so that the caller can
/// show each password once; existing accounts are never touched.
pub async fn ensure_bootstrap_accounts(
    store: &SharedStore,
    settings: &Settings,
) -> Result<Vec<(Email, Role, String)>, AuthError> {
    let auth = &settings.auth;
    let accounts = [
        (
            &auth.admin_email,
            &auth.admin_password,
            Role::Admin,
            "Administrator",
        ),
        (
            &auth.driver_email,
            &auth.driver_password,
            Role::Driver,
            "Driver",
        ),
    ];
    let mut generated = Vec::new();
    for (raw_email, configured, role, name) in accounts {
        let bootstrap_error = |reason: &str| AuthError::Bootstrap {
            email: raw_email.clone(),
            reason: reason.to_owned(),
        };
        let email =
            Email::parse(raw_email).ok_or_else(|| bootstrap_error("not a valid e-mail address"))?;
        if store.user_by_email(&email).await?.is_some() {
            continue;
        }
        let (password, was_generated) = if configured.is_empty() {
            (generate_password(), true)
        } else if configured.chars().count() < MIN_PASSWORD_LEN {
            return Err(bootstrap_error(
                "the configured password must be at least 8 characters",
            ));
        } else {
            (configured.clone(), false)
        };
        let user = User {
            id: UserId::generate(),
            name: name.to_owned(),
            email: email.clone(),
            role,
            password_hash: hash_password(password.clone()).await?,
            phone: None,
            company: None,
            created_at: Utc::now(),
        };
        match store.insert_user(&user).await {
            Ok(()) => {
                tracing::info!(
                    email = email.as_str(),
                    role = role.as_str(),
                    "bootstrap account created"
                );
                if was_generated {
                    generated.push((email, role, password));
                }
            }
            // Another node created it first: theirs stands.
            Err(StoreError::DuplicateEmail) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(secret.as_bytes(), chrono::Duration::hours(24))
    }

    fn email() -> Email {
        Email::parse("john@example.com").unwrap()
    }

    #[test]
    fn tokens_carry_exactly_the_seed_claims() {
        let now = Utc::now();
        let token = keys("a-secret-of-16-bytes")
            .issue(&UserId::from_trusted("usr_1"), &email(), Role::Client, now)
            .unwrap();
        let claims = keys("a-secret-of-16-bytes").verify(&token).unwrap();
        assert_eq!(claims.user_id.as_str(), "usr_1");
        assert_eq!(claims.role, Role::Client);
        assert_eq!(claims.exp - claims.iat, 24 * 3600);

        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let mut names: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["email", "exp", "iat", "role", "userId"]);
        assert_eq!(json["role"], "client");
        let header = token.split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        assert!(String::from_utf8(header).unwrap().contains("HS256"));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let k = keys("a-secret-of-16-bytes");
        let past = Utc::now() - chrono::Duration::hours(30);
        let expired = k
            .issue(&UserId::from_trusted("usr_1"), &email(), Role::Admin, past)
            .unwrap();
        assert!(matches!(k.verify(&expired), Err(AuthError::InvalidToken)));

        let good = k
            .issue(
                &UserId::from_trusted("usr_1"),
                &email(),
                Role::Client,
                Utc::now(),
            )
            .unwrap();
        assert!(keys("another-secret-entirely").verify(&good).is_err());
        let mut tampered = good.clone();
        tampered.push('x');
        assert!(k.verify(&tampered).is_err());
        assert!(k.verify("not.a.token").is_err());
        assert!(k.verify("").is_err());
    }

    #[tokio::test]
    async fn passwords_hash_to_salted_argon2id_and_verify() {
        let a = hash_password("correct horse".into()).await.unwrap();
        let b = hash_password("correct horse".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(
            verify_password("correct horse".into(), Some(a.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse".into(), Some(a))
                .await
                .unwrap()
        );
        assert!(!verify_password("correct horse".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_costs_as_much_as_a_wrong_password() {
        let stored = hash_password("the real password".into()).await.unwrap();
        // Warm the dummy hash so its one-time creation is not measured.
        verify_password("x".into(), None).await.unwrap();
        let mut wrong = std::time::Duration::MAX;
        let mut unknown = std::time::Duration::MAX;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            verify_password("guess".into(), Some(stored.clone()))
                .await
                .unwrap();
            wrong = wrong.min(started.elapsed());
            let started = std::time::Instant::now();
            verify_password("guess".into(), None).await.unwrap();
            unknown = unknown.min(started.elapsed());
        }
        assert!(
            unknown * 3 > wrong,
            "unknown {unknown:?} vs wrong {wrong:?}"
        );
    }

    fn settings(admin_password: &str, driver_password: &str) -> Settings {
        Settings::defaults_with(serde_json::json!({"auth": {
            "admin_password": admin_password, "driver_password": driver_password}}))
        .unwrap()
    }

    #[tokio::test]
    async fn bootstrap_creates_missing_accounts_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            std::sync::Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let first = ensure_bootstrap_accounts(&store, &settings("", "driver-password"))
            .await
            .unwrap();
        assert_eq!(first.len(), 1, "only generated passwords are returned");
        let (email, role, password) = &first[0];
        assert_eq!(
            (email.as_str(), *role),
            ("admin@swiftlogistics.local", Role::Admin)
        );
        assert_eq!(password.len(), GENERATED_PASSWORD_LEN);
        let admin = store.user_by_email(email).await.unwrap().unwrap();
        assert!(
            verify_password(password.clone(), Some(admin.password_hash.clone()))
                .await
                .unwrap()
        );
        let driver_email = Email::parse("driver@swiftlogistics.local").unwrap();
        let driver = store.user_by_email(&driver_email).await.unwrap().unwrap();
        assert_eq!(driver.role, Role::Driver);
        assert!(
            verify_password("driver-password".into(), Some(driver.password_hash.clone()))
                .await
                .unwrap()
        );

        let again = ensure_bootstrap_accounts(&store, &settings("", "a-new-driver-password"))
            .await
            .unwrap();
        assert!(again.is_empty());
        let admin_after = store.user_by_email(email).await.unwrap().unwrap();
        let driver_after = store.user_by_email(&driver_email).await.unwrap().unwrap();
        assert_eq!(admin_after, admin);
        assert_eq!(driver_after, driver);
    }

    #[tokio::test]
    async fn a_too_short_configured_password_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            std::sync::Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let err = ensure_bootstrap_accounts(&store, &settings("short", ""))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::Bootstrap { .. }), "{err}");
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
