//! Driver locations ([`DriverStore`]): one document per driver, replaced (or made)
//! on every report.

use super::encoding::{DRIVER_DATES, encode};
use super::{MongoStore, failure, is_duplicate_key};
use crate::domain::UserId;
use crate::store::{DriverLocation, DriverStore, StoreError};
use async_trait::async_trait;
use mongodb::bson::{Document, doc};

impl MongoStore {
    async fn put_driver_once(&self, document: Document, driver: &str) -> Result<(), StoreError> {
        let filter = doc! { "driverId": driver };
        match self
            .drivers
            .replace_one(filter.clone(), document.clone())
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            // Two first reports of one driver raced to insert: the other one made the
            // document, so this one now replaces it.
            Err(e) if is_duplicate_key(&e) => self
                .drivers
                .replace_one(filter, document)
                .await
                .map(|_| ())
                .map_err(failure),
            Err(e) => Err(failure(e)),
        }
    }
}

#[async_trait]
impl DriverStore for MongoStore {
    async fn put_driver_location(&self, location: &DriverLocation) -> Result<(), StoreError> {
        let document = encode(location, DRIVER_DATES)?;
        self.bounded(self.put_driver_once(document, location.driver_id.as_str()))
            .await
    }

    async fn driver_location(&self, driver: &UserId) -> Result<Option<DriverLocation>, StoreError> {
        self.find_decoded(
            &self.drivers,
            doc! { "driverId": driver.as_str() },
            DRIVER_DATES,
        )
        .await
    }
}
