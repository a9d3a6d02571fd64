//! Accounts, tokens and login sessions.
//!
//! - Passwords: argon2id hashes (about 19 MiB each), computed on the blocking pool
//!   in a fixed number of slots, split between logins and registrations so that a
//!   flood of one never starves the other (see [`HashingClass`]).
//! - Access tokens: HS256 JWTs with the seed's claims (section 8.5) plus `iss`, `aud`,
//!   `nbf`, `jti` and `sid` (the login session), short-lived (`auth.access_token_ttl_secs`,
//!   15 min) and refused when their lifetime is longer than that, whatever their `exp`.
//! - Refresh tokens: opaque, one per login session, rotated on every use; only the
//!   current one's SHA-256 is stored. Each carries its session id, its generation and
//!   an HMAC, so that a genuine but superseded token (a stolen copy replayed) is
//!   recognised: it revokes the whole session.
//! - Every request's token is checked against its session and user (cached for
//!   `auth.session_cache_ms`): after a logout, a revocation or the user's removal the
//!   token stops working although its signature is still good.

use crate::config::{AuthSettings, Settings};
use crate::domain::user::MIN_PASSWORD_LEN;
use crate::domain::{Email, LoginSession, Role, User, UserId};
use crate::store::{StoreError, UserStore};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Most hashes computed at once for logins; each holds about 19 MiB while it runs.
/// Fewer run where there are fewer cores: hashing is CPU-bound, so more hashes than
/// cores only take longer each and add 19 MiB apiece to the node's peak memory
/// (six at once took a 2-core node from 65 to 193 MiB).
const MAX_LOGIN_HASHES: usize = 6;
/// Hashes computed at once for registrations (and bootstrap accounts): few, so a
/// registration flood queues behind itself and leaves the cores to logins.
const REGISTRATION_HASHES: usize = 1;
const GENERATED_PASSWORD_LEN: usize = 20;
/// Cached session checks kept before the cache is emptied (bounded memory).
const MAX_CACHED_SESSIONS: usize = 100_000;
/// Verified access tokens kept before that cache is emptied: about half a kilobyte
/// each with their claims, so at most a few megabytes.
const MAX_VERIFIED_TOKENS: usize = 10_000;

static LOGIN_SLOTS: OnceLock<Semaphore> = OnceLock::new();
static REGISTRATION_SLOTS: Semaphore = Semaphore::const_new(REGISTRATION_HASHES);
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

/// The JWT payload: the seed's claims plus the registered ones that make a token
/// checkable (`iss`, `aud`, `nbf`, `jti`) and its login session (`sid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Claims {
    pub(crate) user_id: UserId,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) nbf: u64,
    pub(crate) jti: String,
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) sid: String,
}

/// Signing and verification keys for one secret. Deliberately not `Debug`: it holds
/// the secret.
#[derive(Clone)]
pub(crate) struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Keys the refresh tokens' HMAC.
    refresh_key: Vec<u8>,
    ttl: chrono::Duration,
    leeway: u64,
    issuer: String,
    audience: String,
}

impl TokenKeys {
    pub fn new(auth: &AuthSettings) -> Self {
        let secret = auth.jwt_secret.as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = auth.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[auth.issuer.as_str()]);
        validation.set_audience(&[auth.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud"]);
        let secs = i64::try_from(auth.access_token_ttl_secs).unwrap_or(i64::MAX);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            refresh_key: [b"refresh-token:".as_slice(), secret].concat(),
            ttl: chrono::Duration::try_seconds(secs).unwrap_or(chrono::Duration::MAX),
            leeway: auth.leeway_secs,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        }
    }

    /// Whether claims that passed [`TokenKeys::verify`] are still within their
    /// lifetime: the one check of `verify` whose answer changes as time passes (`nbf`
    /// and `iat`, once passed, stay passed). Same rule as the verification's: expired
    /// once `exp` is more than the leeway behind `now`.
    fn unexpired(&self, claims: &Claims, now: DateTime<Utc>) -> bool {
        let now = u64::try_from(now.timestamp()).unwrap_or(0);
        claims.exp.saturating_add(self.leeway) >= now
    }

    /// Seconds an access token lives.
    pub(crate) fn ttl_secs(&self) -> u64 {
        u64::try_from(self.ttl.num_seconds()).unwrap_or(0)
    }

    /// A fresh access token for the user in login session `sid`.
    pub(crate) fn issue(
        &self,
        user: &User,
        sid: &str,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let iat = u64::try_from(now.timestamp()).unwrap_or(0);
        let claims = Claims {
            user_id: user.id.clone(),
            email: user.email.as_str().to_owned(),
            role: user.role,
            exp: iat.saturating_add(self.ttl_secs()),
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sid: sid.to_owned(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims; `issue` is the normal way in.
    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Hashing(format!("cannot sign a token: {e}")))
    }

    /// Checks signature, algorithm, issuer, audience, `exp` and `nbf` (with the
    /// leeway), that it was not issued in the future, and that it lives no longer
    /// than this node issues tokens for: an `exp` in the year 3000 is refused.
    pub(crate) fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AuthError::InvalidToken)?;
        let now = u64::try_from(now.timestamp()).unwrap_or(0);
        let lifetime = claims.exp.saturating_sub(claims.iat);
        let sane = claims.iat <= now.saturating_add(self.leeway)
            && lifetime <= self.ttl_secs().saturating_add(self.leeway)
            && !claims.jti.is_empty()
            && !claims.sid.is_empty();
        if sane {
            Ok(claims)
        } else {
            Err(AuthError::InvalidToken)
        }
    }

    fn refresh_mac(&self, sid: &str, generation: u64, nonce: &str) -> String {
        // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.refresh_key) else {
            return String::new();
        };
        mac.update(format!("{sid}.{generation}.{nonce}").as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// `<sid>.<generation>.<nonce>.<mac>`: the nonce makes it unguessable, the MAC
    /// proves this node made it (so a superseded one is told from a forgery).
    fn mint_refresh(&self, sid: &str, generation: u64) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>());
        let mac = self.refresh_mac(sid, generation, &nonce);
        format!("{sid}.{generation}.{nonce}.{mac}")
    }

    /// The session and generation of a refresh token this node made, if it is one.
    fn open_refresh<'t>(&self, token: &'t str) -> Option<(&'t str, u64)> {
        let mut parts = token.split('.');
        let (sid, generation, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let generation = generation.parse().ok()?;
        let expected = self.refresh_mac(sid, generation, nonce);
        same_secret(expected.as_bytes(), mac.as_bytes()).then_some((sid, generation))
    }
}

/// Compares two secrets in time that depends on their length only.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// SHA-256 of a refresh token, hex: what the store keeps.
fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whoever presented a valid token, as its session and user record say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) user_id: UserId,
    pub(crate) email: Email,
    pub(crate) role: Role,
    pub(crate) session_id: String,
    /// When the presented access token expires.
    pub(crate) expires_at: DateTime<Utc>,
}

/// What a login or a refresh hands out.
#[derive(Debug, Clone)]
pub(crate) struct IssuedTokens {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) expires_in_secs: u64,
    pub(crate) user: User,
}

/// The user behind a live session, as last read.
type SessionCheck = Option<(UserId, Email, Role)>;

/// How a login's password checked out.
#[derive(Debug)]
pub(crate) enum LoginCheck {
    Verified(User),
    /// Wrong password, or no such account (`known_account` is for the logs only).
    Refused {
        known_account: bool,
    },
}

/// Accounts and their login sessions: registering and checking passwords, issuing,
/// rotating, revoking, and checking tokens against the sessions.
pub(crate) struct Sessions {
    store: Arc<dyn UserStore>,
    keys: TokenKeys,
    session_ttl: chrono::Duration,
    cache_for: Duration,
    checked: DashMap<String, (Instant, SessionCheck)>,
    /// Access tokens verified before, by their exact text, with their claims. A
    /// client sends the same token with every request (a tracking page polling a
    /// status many times a minute), and checking its signature and parsing its claims
    /// again each time cost more than reading the status. Only tokens that passed
    /// [`TokenKeys::verify`] get in; a hit is checked again for expiry only.
    verified: DashMap<String, Claims>,
}

impl Sessions {
    pub fn new(store: Arc<dyn UserStore>, auth: &AuthSettings) -> Self {
        let hours = i64::try_from(auth.refresh_token_ttl_hours).unwrap_or(i64::MAX);
        Self {
            store,
            keys: TokenKeys::new(auth),
            session_ttl: chrono::Duration::try_hours(hours).unwrap_or(chrono::Duration::MAX),
            cache_for: Duration::from_millis(auth.session_cache_ms),
            checked: DashMap::new(),
            verified: DashMap::new(),
        }
    }

    /// Creates a client's account. `false` when the e-mail address has one already:
    /// nothing changes, and the caller answers as if it had not (no account probing).
    pub(crate) async fn register(&self, user: &User) -> Result<bool, AuthError> {
        match self.store.insert_user(user).await {
            Ok(()) => Ok(true),
            Err(StoreError::DuplicateEmail) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a login's password. An unknown or malformed address costs the same
    /// hashing time as a known one, so timing tells nothing.
    pub(crate) async fn check_login(
        &self,
        email: Option<&Email>,
        password: String,
    ) -> Result<LoginCheck, AuthError> {
        let user = match email {
            Some(email) => self.store.user_by_email(email).await?,
            None => None,
        };
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let verified = verify_password(password, stored).await?;
        Ok(match user {
            Some(user) if verified => LoginCheck::Verified(user),
            known => LoginCheck::Refused {
                known_account: known.is_some(),
            },
        })
    }

    /// The account with this id, if there is one.
    pub(crate) async fn account(&self, id: &UserId) -> Result<Option<User>, AuthError> {
        Ok(self.store.user_by_id(id).await?)
    }

    /// Starts a login session for `user` (whose password was checked).
    pub async fn start(&self, user: User) -> Result<IssuedTokens, AuthError> {
        let now = Utc::now();
        let id = format!("ses_{}", uuid::Uuid::new_v4().simple());
        let refresh_token = self.keys.mint_refresh(&id, 0);
        let session = LoginSession {
            id: id.clone(),
            user_id: user.id.clone(),
            generation: 0,
            token_hash: token_hash(&refresh_token),
            created_at: now,
            expires_at: now.checked_add_signed(self.session_ttl).unwrap_or(now),
            revoked_at: None,
        };
        self.store.insert_session(&session).await?;
        Ok(IssuedTokens {
            access_token: self.keys.issue(&user, &id, now)?,
            refresh_token,
            expires_in_secs: self.keys.ttl_secs(),
            user,
        })
    }

    /// Exchanges a refresh token for a new pair. A superseded token of a live
    /// session is a replay: the session is revoked, for its holder and the thief.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens, AuthError> {
        let (sid, generation) = self
            .keys
            .open_refresh(refresh_token)
            .ok_or(AuthError::InvalidToken)?;
        let now = Utc::now();
        let session = self
            .store
            .session(sid)
            .await?
            .filter(|s| s.is_live(now))
            .ok_or(AuthError::InvalidToken)?;
        if generation < session.generation {
            tracing::warn!(
                session = sid,
                user_id = %session.user_id,
                presented = generation,
                current = session.generation,
                "a superseded refresh token was presented: revoking its session"
            );
            self.revoke(sid).await?;
            return Err(AuthError::InvalidToken);
        }
        if generation != session.generation || token_hash(refresh_token) != session.token_hash {
            return Err(AuthError::InvalidToken);
        }
        let next = self.keys.mint_refresh(sid, generation + 1);
        let Some(rotated) = self
            .store
            .rotate_session(sid, generation, &token_hash(&next))
            .await?
        else {
            // Someone rotated it a moment ago with the same token: also a replay.
            tracing::warn!(
                session = sid,
                "a refresh token was used twice at once: revoking its session"
            );
            self.revoke(sid).await?;
            return Err(AuthError::InvalidToken);
        };
        let user = self
            .store
            .user_by_id(&rotated.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        Ok(IssuedTokens {
            access_token: self.keys.issue(&user, sid, now)?,
            refresh_token: next,
            expires_in_secs: self.keys.ttl_secs(),
            user,
        })
    }

    /// The session a refresh token belongs to, if this node made the token.
    pub(crate) fn session_of_refresh<'t>(&self, refresh_token: &'t str) -> Option<&'t str> {
        self.keys.open_refresh(refresh_token).map(|(sid, _)| sid)
    }

    /// Ends one login session: its refresh token and its access tokens stop working.
    pub(crate) async fn revoke(&self, sid: &str) -> Result<(), AuthError> {
        self.store.revoke_session(sid, Utc::now()).await?;
        self.checked.remove(sid);
        Ok(())
    }

    /// Ends every login session of a user; returns how many were live.
    pub(crate) async fn revoke_user(&self, user: &UserId) -> Result<u64, AuthError> {
        let revoked = self.store.revoke_user_sessions(user, Utc::now()).await?;
        self.checked
            .retain(|_, (_, check)| check.as_ref().is_none_or(|(id, _, _)| id != user));
        Ok(revoked)
    }

    /// Verifies an access token and that its session is live and its user still
    /// exists; the role is the user record's, not the token's.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = Utc::now();
        let claims = self.verified_claims(token, now)?;
        let (user_id, email, role) = self
            .check_session(&claims.sid)
            .await?
            .filter(|(user_id, _, _)| *user_id == claims.user_id)
            .ok_or(AuthError::InvalidToken)?;
        let expires_at = i64::try_from(claims.exp)
            .ok()
            .and_then(|exp| DateTime::from_timestamp(exp, 0))
            .unwrap_or(now);
        Ok(Principal {
            user_id,
            email,
            role,
            session_id: claims.sid,
            expires_at,
        })
    }

    /// The claims of a valid access token, verified once per token (see `verified`).
    fn verified_claims(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, AuthError> {
        if let Some(claims) = self.verified.get(token) {
            if self.keys.unexpired(&claims, now) {
                return Ok(claims.clone());
            }
            drop(claims);
            self.verified.remove(token);
            return Err(AuthError::InvalidToken);
        }
        let claims = self.keys.verify(token, now)?;
        if self.verified.len() >= MAX_VERIFIED_TOKENS {
            self.verified.clear();
        }
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    async fn check_session(&self, sid: &str) -> Result<SessionCheck, AuthError> {
        if let Some(entry) = self.checked.get(sid) {
            let (at, check) = entry.value();
            if at.elapsed() < self.cache_for {
                return Ok(check.clone());
            }
        }
        let now = Utc::now();
        let check = match self.store.session(sid).await?.filter(|s| s.is_live(now)) {
            Some(session) => self
                .store
                .user_by_id(&session.user_id)
                .await?
                .map(|user| (user.id, user.email, user.role)),
            None => None,
        };
        if self.checked.len() >= MAX_CACHED_SESSIONS {
            self.checked.clear();
        }
        self.checked
            .insert(sid.to_owned(), (Instant::now(), check.clone()));
        Ok(check)
    }
}

/// Who a password hash is computed for: each has its own slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashingClass {
    Login,
    Registration,
}

impl HashingClass {
    fn slots(self) -> &'static Semaphore {
        match self {
            Self::Login => LOGIN_SLOTS.get_or_init(|| Semaphore::new(login_hashes())),
            Self::Registration => &REGISTRATION_SLOTS,
        }
    }
}

/// Login hashes computed at once: one per core, at most [`MAX_LOGIN_HASHES`].
fn login_hashes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_LOGIN_HASHES)
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
    class: HashingClass,
    work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let _slot = class
        .slots()
        .acquire()
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AuthError::Hashing(format!("hashing task failed: {e}")))?
}

/// An argon2id PHC string with a fresh random salt (for a new account).
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    on_blocking_pool(HashingClass::Registration, move || hash_blocking(&password)).await
}

/// Whether `password` matches `stored`. With no stored hash (unknown account) a dummy
/// hash is verified anyway and the answer is `false`, so both cost the same time.
pub(crate) async fn verify_password(
    password: String,
    stored: Option<String>,
) -> Result<bool, AuthError> {
    on_blocking_pool(HashingClass::Login, move || {
        verify_blocking(&password, stored.as_deref())
    })
    .await
}

pub(crate) fn generate_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// Creates the configured admin and driver accounts if they do not exist yet.
/// Returns the accounts created with a generated password, so that the caller can
/// show each password once; existing accounts are never touched.
pub(crate) async fn ensure_bootstrap_accounts(
    store: &dyn UserStore,
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

/// Tells the operator the generated passwords, once. In development they are part
/// of the banner (a laptop's terminal). In production stdout and the log usually go
/// to a log service, so they are appended to `auth.generated_passwords_file`, created
/// readable by the node's user only, and only that file's name is printed.
pub fn hand_over_generated_passwords(
    settings: &Settings,
    accounts: &[(Email, Role, String)],
) -> std::io::Result<Vec<String>> {
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    if settings.profile == crate::config::Profile::Development {
        return Ok(accounts
            .iter()
            .map(|(email, role, password)| {
                format!(
                    "  {} account created: {} / {password}   (shown once; keep it)",
                    role.as_str(),
                    email.as_str()
                )
            })
            .collect());
    }
    use std::io::Write as _;
    let path = &settings.auth.generated_passwords_file;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    for (email, role, password) in accounts {
        writeln!(file, "{}\t{}\t{password}", role.as_str(), email.as_str())?;
    }
    file.sync_all()?;
    tracing::warn!(
        file = %path.display(),
        accounts = accounts.len(),
        "generated passwords written to the file (mode 0600); read them, then delete it"
    );
    Ok(vec![format!(
        "  {} account(s) created with generated passwords: see {} (mode 0600)",
        accounts.len(),
        path.display()
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn auth(secret: &str) -> AuthSettings {
        let mut settings = Settings::defaults_with(serde_json::json!({})).unwrap().auth;
        secret.clone_into(&mut settings.jwt_secret);
        settings
    }

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&auth(secret))
    }

    fn user(role: Role) -> User {
        User {
            id: UserId::from_trusted("usr_1"),
            name: "John".into(),
            email: Email::parse("john@example.com").unwrap(),
            role,
            password_hash: String::new(),
            phone: None,
            company: None,
            created_at: Utc::now(),
        }
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn tokens_carry_the_seed_claims_and_the_registered_ones() {
        let now = Utc::now();
        let k = keys("a-secret-of-16-bytes");
        let token = k.issue(&user(Role::Client), "ses_1", now).unwrap();
        let claims = k.verify(&token, now).unwrap();
        assert_eq!(claims.user_id.as_str(), "usr_1");
        assert_eq!(claims.role, Role::Client);
        assert_eq!(claims.exp - claims.iat, 900, "15 minutes by default");
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            ("swiftlogistics", "swiftlogistics-api")
        );
        let json = payload(&token);
        let mut names: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "aud", "email", "exp", "iat", "iss", "jti", "nbf", "role", "sid", "userId"
            ]
        );
        let again = k.issue(&user(Role::Client), "ses_1", now).unwrap();
        assert_ne!(
            payload(&again)["jti"],
            json["jti"],
            "every token has its own jti"
        );
    }

    #[test]
    fn expired_early_overlong_foreign_and_tampered_tokens_are_refused() {
        let k = keys("a-secret-of-16-bytes");
        let now = Utc::now();
        let expired = k
            .issue(&user(Role::Admin), "s", now - chrono::Duration::minutes(16))
            .unwrap();
        assert!(matches!(
            k.verify(&expired, now),
            Err(AuthError::InvalidToken)
        ));
        let early = k
            .issue(&user(Role::Admin), "s", now + chrono::Duration::minutes(2))
            .unwrap();
        assert!(k.verify(&early, now).is_err(), "nbf and iat in the future");
        // Within the leeway, a clock a little ahead is fine.
        let skewed = k
            .issue(&user(Role::Admin), "s", now + chrono::Duration::seconds(3))
            .unwrap();
        assert!(k.verify(&skewed, now).is_ok());

        let good = k.issue(&user(Role::Client), "s", now).unwrap();
        let mut claims = k.verify(&good, now).unwrap();
        claims.exp = 32_503_680_000; // the year 3000
        let forever = k.sign(&claims).unwrap();
        assert!(
            k.verify(&forever, now).is_err(),
            "lifetime beyond the maximum"
        );
        let mut claims = k.verify(&good, now).unwrap();
        claims.aud = "someone-else".into();
        assert!(
            k.verify(&k.sign(&claims).unwrap(), now).is_err(),
            "foreign audience"
        );
        let mut claims = k.verify(&good, now).unwrap();
        claims.iss = "evil".into();
        assert!(
            k.verify(&k.sign(&claims).unwrap(), now).is_err(),
            "foreign issuer"
        );

        assert!(keys("another-secret-entirely").verify(&good, now).is_err());
        let mut tampered = good.clone();
        tampered.push('x');
        assert!(k.verify(&tampered, now).is_err());
        assert!(k.verify("not.a.token", now).is_err());
        assert!(k.verify("", now).is_err());
    }

    #[test]
    fn refresh_tokens_prove_their_origin() {
        let k = keys("a-secret-of-16-bytes");
        let token = k.mint_refresh("ses_abc", 3);
        assert_eq!(k.open_refresh(&token), Some(("ses_abc", 3)));
        assert_ne!(token, k.mint_refresh("ses_abc", 3), "each one is random");
        let forged = token.replacen(".3.", ".2.", 1);
        assert_eq!(
            k.open_refresh(&forged),
            None,
            "the generation is under the MAC"
        );
        assert_eq!(keys("another-secret-entirely").open_refresh(&token), None);
        assert_eq!(k.open_refresh("ses_abc.3"), None);
        assert_eq!(token_hash(&token).len(), 64);
    }

    #[tokio::test]
    async fn sessions_rotate_detect_replays_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn UserStore> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let client = user(Role::Client);
        store.insert_user(&client).await.unwrap();
        let sessions = Sessions::new(store.clone(), &auth("a-secret-of-16-bytes"));
        let first = sessions.start(client.clone()).await.unwrap();
        let who = sessions.authenticate(&first.access_token).await.unwrap();
        assert_eq!((who.user_id.as_str(), who.role), ("usr_1", Role::Client));

        let second = sessions.refresh(&first.refresh_token).await.unwrap();
        assert!(sessions.authenticate(&second.access_token).await.is_ok());
        let third = sessions.refresh(&second.refresh_token).await.unwrap();
        // Replaying a superseded token ends the session for everyone holding it.
        assert!(sessions.refresh(&first.refresh_token).await.is_err());
        assert!(sessions.refresh(&third.refresh_token).await.is_err());
        assert!(sessions.authenticate(&third.access_token).await.is_err());

        let other = sessions.start(client.clone()).await.unwrap();
        assert!(sessions.authenticate(&other.access_token).await.is_ok());
        // Known as verified now: revoking its session must still end it.
        sessions
            .revoke(&other.refresh_token[..other.refresh_token.find('.').unwrap()])
            .await
            .unwrap();
        assert!(sessions.authenticate(&other.access_token).await.is_err());
        let last = sessions.start(client.clone()).await.unwrap();
        assert_eq!(sessions.revoke_user(&client.id).await.unwrap(), 1);
        assert!(sessions.authenticate(&last.access_token).await.is_err());
        assert!(sessions.refresh(&last.refresh_token).await.is_err());
    }

    #[tokio::test]
    async fn a_token_verified_once_still_expires_and_a_forgery_never_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn UserStore> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let settings = auth("a-secret-of-16-bytes");
        let sessions = Sessions::new(store, &settings);
        let now = Utc::now();
        let token = sessions
            .keys
            .issue(&user(Role::Client), "ses_1", now)
            .unwrap();
        let claims = sessions.verified_claims(&token, now).unwrap();
        assert_eq!(sessions.verified_claims(&token, now).unwrap(), claims);

        let ttl = chrono::Duration::seconds(i64::try_from(settings.access_token_ttl_secs).unwrap());
        let leeway = chrono::Duration::seconds(i64::try_from(settings.leeway_secs).unwrap());
        let last_good = now + ttl + leeway;
        assert!(sessions.verified_claims(&token, last_good).is_ok());
        let later = last_good + chrono::Duration::seconds(1);
        assert!(matches!(
            sessions.verified_claims(&token, later),
            Err(AuthError::InvalidToken)
        ));
        assert!(
            sessions.verified.get(&token).is_none(),
            "an expired token leaves the cache"
        );

        // Only what passed verification is remembered: a tampered copy of a known
        // token fails every time.
        let known = sessions
            .keys
            .issue(&user(Role::Admin), "ses_2", now)
            .unwrap();
        sessions.verified_claims(&known, now).unwrap();
        let mut tampered = known.clone();
        tampered.push('x');
        for _ in 0..2 {
            assert!(sessions.verified_claims(&tampered, now).is_err());
        }
        assert!(sessions.verified.get(&tampered).is_none());
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

    /// A registration flood (its single slot taken and a long queue behind it) does
    /// not hold logins up: a login takes about as long as it does alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_do_not_queue_behind_a_registration_flood() {
        let stored = hash_password("the real password".into()).await.unwrap();
        let alone = {
            let started = Instant::now();
            verify_password("guess".into(), Some(stored.clone()))
                .await
                .unwrap();
            started.elapsed()
        };
        let flood: Vec<_> = (0..40)
            .map(|_| tokio::spawn(hash_password("flooding".into())))
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        verify_password("guess".into(), Some(stored)).await.unwrap();
        let under_flood = started.elapsed();
        let remaining = flood.iter().filter(|f| !f.is_finished()).count();
        for task in flood {
            task.await.unwrap().unwrap();
        }
        assert!(
            remaining > 10,
            "the flood was still queued ({remaining} left)"
        );
        assert!(
            under_flood < alone * 6 + Duration::from_millis(50),
            "login {under_flood:?} under the flood vs {alone:?} alone"
        );
    }

    #[tokio::test]
    async fn an_unknown_account_costs_as_much_as_a_wrong_password() {
        let stored = hash_password("the real password".into()).await.unwrap();
        // Warm the dummy hash so its one-time creation is not measured.
        verify_password("x".into(), None).await.unwrap();
        let mut wrong = Duration::MAX;
        let mut unknown = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            verify_password("guess".into(), Some(stored.clone()))
                .await
                .unwrap();
            wrong = wrong.min(started.elapsed());
            let started = Instant::now();
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
        let store = crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
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

    #[test]
    fn generated_passwords_go_to_a_private_file_in_production() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwords.txt");
        let settings = Settings::defaults_with(serde_json::json!({
            "profile": "production",
            "auth": {"jwt_secret": "a-production-secret-of-32-bytes!",
                     "generated_passwords_file": file}}))
        .unwrap();
        let accounts = [(
            Email::parse("admin@x.com").unwrap(),
            Role::Admin,
            "Generated123Password".to_owned(),
        )];
        let banner = hand_over_generated_passwords(&settings, &accounts).unwrap();
        assert!(
            !banner.concat().contains("Generated123Password"),
            "{banner:?}"
        );
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(written.contains("admin@x.com\tGenerated123Password"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let development = Settings::defaults_with(serde_json::json!({})).unwrap();
        let banner = hand_over_generated_passwords(&development, &accounts).unwrap();
        assert!(banner.concat().contains("Generated123Password"));
    }

    #[tokio::test]
    async fn a_too_short_configured_password_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
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
