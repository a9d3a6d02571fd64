//! Accounts and login sessions ([`UserStore`]): one document each, unique by id
//! (and users by e-mail), sessions rotated by compare-and-set on their generation.

use super::encoding::{SESSION_DATES, USER_DATES, bson_date, bson_int, decode, encode};
use super::{MongoStore, failure, is_duplicate_key};
use crate::domain::{Email, LoginSession, User, UserId};
use crate::store::{StoreError, UserStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{Bson, doc};

impl MongoStore {
    async fn insert_user_once(&self, user: &User) -> Result<(), StoreError> {
        let document = encode(user, USER_DATES)?;
        match self.users.insert_one(document).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                let email_taken = self
                    .users
                    .find_one(doc! { "email": user.email.as_str() })
                    .projection(doc! { "_id": 1 })
                    .await
                    .map_err(failure)?
                    .is_some();
                if email_taken {
                    Err(StoreError::DuplicateEmail)
                } else {
                    Err(StoreError::Corrupt(format!(
                        "a user with id {} already exists",
                        user.id
                    )))
                }
            }
            Err(e) => Err(failure(e)),
        }
    }
}

#[async_trait]
impl UserStore for MongoStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        self.bounded(self.insert_user_once(user)).await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.find_decoded(&self.users, doc! { "email": email.as_str() }, USER_DATES)
            .await
    }

    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.find_decoded(&self.users, doc! { "id": id.as_str() }, USER_DATES)
            .await
    }

    async fn insert_session(&self, session: &LoginSession) -> Result<(), StoreError> {
        let document = encode(session, SESSION_DATES)?;
        self.bounded(async {
            self.sessions
                .insert_one(document)
                .await
                .map(|_| ())
                .map_err(failure)
        })
        .await
    }

    async fn session(&self, id: &str) -> Result<Option<LoginSession>, StoreError> {
        self.find_decoded(&self.sessions, doc! { "id": id }, SESSION_DATES)
            .await
    }

    async fn rotate_session(
        &self,
        id: &str,
        expected_generation: u64,
        token_hash: &str,
    ) -> Result<Option<LoginSession>, StoreError> {
        let filter = doc! {
            "id": id,
            "generation": bson_int(expected_generation)?,
            "revokedAt": Bson::Null,
        };
        let update = doc! { "$set": {
            "generation": bson_int(expected_generation.saturating_add(1))?,
            "tokenHash": token_hash,
        }};
        self.bounded(async {
            self.sessions
                .find_one_and_update(filter, update)
                .projection(doc! { "_id": 0 })
                .return_document(mongodb::options::ReturnDocument::After)
                .await
                .map_err(failure)?
                .map(|document| decode(document, SESSION_DATES))
                .transpose()
        })
        .await
    }

    async fn revoke_session(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.bounded(async {
            self.sessions
                .update_one(
                    doc! { "id": id, "revokedAt": Bson::Null },
                    doc! { "$set": { "revokedAt": bson_date(&at) } },
                )
                .await
                .map(|_| ())
                .map_err(failure)
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.bounded(async {
            self.sessions
                .update_many(
                    doc! { "userId": user.as_str(), "revokedAt": Bson::Null },
                    doc! { "$set": { "revokedAt": bson_date(&at) } },
                )
                .await
                .map(|result| result.modified_count)
                .map_err(failure)
        })
        .await
    }
}
