//! Accounts and roles (seed 000 section 2, DESIGN section 5).

use super::ids::UserId;
use super::validation::ValidationErrors;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Driver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Driver => "driver",
            Self::Admin => "admin",
        }
    }
}

/// A normalised e-mail address (NFKC, trimmed, lower-cased), so that `John@X.com`,
/// `john@x.com` and `ｊｏｈｎ@x.com` (fullwidth letters) are one account. Addresses
/// with invisible characters (zero-width spaces and joiners, soft hyphens, BOMs,
/// bidirectional marks) are refused outright: they exist only to make look-alikes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

/// Format characters (Unicode category Cf) and the like that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

impl Email {
    pub fn parse(raw: &str) -> Option<Self> {
        use unicode_normalization::UnicodeNormalization;
        if raw.chars().any(is_invisible) {
            return None;
        }
        let email = raw.nfkc().collect::<String>().trim().to_lowercase();
        let (local, domain) = email.split_once('@')?;
        let valid = !local.is_empty()
            && email.len() <= 254
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@');
        valid.then_some(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: Email,
    pub role: Role,
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One login: the family of refresh tokens that rotate from it. Only the current
/// token's hash is kept; `generation` counts rotations, so that a genuine but
/// superseded token (a replay of a stolen one) is recognised and ends the family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginSession {
    pub id: String,
    pub user_id: UserId,
    pub generation: u64,
    /// SHA-256 of the current refresh token, hex.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    /// The session ends here whatever the rotations.
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl LoginSession {
    pub(crate) fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A registration that passed validation; the password is still in clear text and
/// must be hashed before it goes anywhere near a store.
#[derive(Debug, Clone)]
pub struct Registration {
    pub(crate) name: String,
    pub(crate) email: Email,
    pub(crate) password: String,
    pub(crate) phone: Option<String>,
    pub(crate) company: Option<String>,
}

pub(crate) const MIN_PASSWORD_LEN: usize = 8;
const MAX_PASSWORD_LEN: usize = 256;
const MAX_TEXT_LEN: usize = 200;
/// Fewer different characters than this is a pattern, not a password (`aaaaaaaa`,
/// `abababab`, eight spaces).
const MIN_DISTINCT_CHARS: usize = 4;
/// Shipped in the binary; see the file's header.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn is_common_password(password: &str) -> bool {
    let lower = password.trim().to_lowercase();
    COMMON_PASSWORDS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .any(|common| common == lower)
}

/// Why `password` is not acceptable for the account `email`, if it is not. Length
/// counts characters, not bytes, and ignores surrounding whitespace.
pub(crate) fn password_problem(password: &str, email: &str) -> Option<&'static str> {
    let trimmed = password.trim();
    let chars = trimmed.chars().count();
    if chars < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Some("must be 8 to 256 characters (not counting surrounding spaces)");
    }
    let mut distinct: Vec<char> = trimmed.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return Some("must use at least 4 different characters");
    }
    if is_common_password(trimmed) {
        return Some("is one of the most common passwords; choose another");
    }
    let lower = trimmed.to_lowercase();
    let email = email.trim().to_lowercase();
    let local = email.split('@').next().unwrap_or_default();
    if lower == email || lower == local {
        return Some("must not be the e-mail address");
    }
    None
}

impl Registration {
    pub fn parse(
        name: &str,
        email: &str,
        password: &str,
        phone: Option<&str>,
        company: Option<&str>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = name.trim();
        if name.chars().count() < 2 || name.len() > MAX_TEXT_LEN {
            errors.add("name", "must be 2 to 200 characters");
        }
        let parsed_email = Email::parse(email);
        if parsed_email.is_none() {
            errors.add("email", "must be a valid e-mail address");
        }
        if let Some(problem) = password_problem(password, email) {
            errors.add("password", problem);
        }
        for (field, value) in [("phone", phone), ("company", company)] {
            if value.is_some_and(|v| v.len() > MAX_TEXT_LEN) {
                errors.add(field, "must be at most 200 characters");
            }
        }
        match (errors.is_empty(), parsed_email) {
            (true, Some(email)) => Ok(Self {
                name: name.to_owned(),
                email,
                password: password.to_owned(),
                phone: phone.map(str::to_owned),
                company: company.map(str::to_owned),
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse("  John@Example.COM ").unwrap().as_str(),
            "john@example.com"
        );
        for bad in [
            "",
            "john",
            "@x.com",
            "john@",
            "john@x",
            "jo hn@x.com",
            "a@b@c.com",
        ] {
            assert!(Email::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn look_alike_emails_are_one_account_or_refused() {
        let plain = Email::parse("john@example.com").unwrap();
        assert_eq!(
            Email::parse("ｊｏｈｎ@ｅｘａｍｐｌｅ.ｃｏｍ"),
            Some(plain.clone())
        );
        assert_eq!(Email::parse("JOHN@example.com"), Some(plain));
        for invisible in [
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}',
        ] {
            let raw = format!("jo{invisible}hn@example.com");
            assert!(Email::parse(&raw).is_none(), "{:?}", invisible);
        }
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        let email = "ada.lovelace@example.com";
        for weak in [
            "password",
            "12345678",
            "        ",
            "PassWord1",
            "qwerty123",
            "aaaaaaaa",
            "abababab",
            "ada.lovelace@example.com",
            "ADA.LOVELACE",
            "short",
        ] {
            assert!(password_problem(weak, email).is_some(), "{weak:?}");
        }
        for fine in ["correct-horse", "correct-horse-battery", "Tr0ub4dor&3x"] {
            assert_eq!(password_problem(fine, email), None, "{fine:?}");
        }
        assert!(is_common_password("Swiftlogistics"));
    }

    #[test]
    fn registration_reports_every_bad_field() {
        let err = Registration::parse("J", "nope", "short", None, None).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "email", "password"]);
    }
}
