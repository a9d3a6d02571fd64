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

/// A normalised (trimmed, lower-cased) e-mail address, so that `John@X.com` and
/// `john@x.com` are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Option<Self> {
        let email = raw.trim().to_lowercase();
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

/// A registration that passed validation; the password is still in clear text and
/// must be hashed before it goes anywhere near a store.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub email: Email,
    pub password: String,
    pub phone: Option<String>,
    pub company: Option<String>,
}

pub const MIN_PASSWORD_LEN: usize = 8;
const MAX_PASSWORD_LEN: usize = 256;
const MAX_TEXT_LEN: usize = 200;

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
        if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
            errors.add("password", "must be 8 to 256 characters");
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
    fn registration_reports_every_bad_field() {
        let err = Registration::parse("J", "nope", "short", None, None).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "email", "password"]);
    }
}
