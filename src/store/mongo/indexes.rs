//! The indexes every query and unique rule of the store relies on, created by
//! `MongoStore::connect` when missing (idempotent: every node runs it at start).

use super::encoding::IDEMPOTENCY_FIELD;
use super::{MongoStore, failure};
use crate::store::StoreError;
use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;

impl MongoStore {
    pub(super) async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = || IndexOptions::builder().unique(true).build();
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        let unique_index =
            |keys: Document| IndexModel::builder().keys(keys).options(unique()).build();
        let idempotency = IndexModel::builder()
            .keys(doc! { "customerId": 1, IDEMPOTENCY_FIELD: 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! { IDEMPOTENCY_FIELD: { "$exists": true } })
                    .build(),
            )
            .build();
        self.orders
            .create_indexes([
                unique_index(doc! { "orderId": 1 }),
                // A customer's orders, newest first (GET /api/orders).
                index(doc! { "customerId": 1, "createdAt": -1, "orderId": -1 }),
                // Every order, newest first (admins).
                index(doc! { "createdAt": -1, "orderId": -1 }),
                // Admin listings by status, unfinished orders, counts.
                index(doc! { "status": 1, "createdAt": -1, "orderId": -1 }),
                // A driver's work list (GET /api/driver/orders).
                index(doc! { "driverId": 1, "status": 1, "createdAt": -1, "orderId": -1 }),
                idempotency,
            ])
            .await
            .map_err(failure)?;
        self.users
            .create_indexes([
                unique_index(doc! { "email": 1 }),
                unique_index(doc! { "id": 1 }),
            ])
            .await
            .map_err(failure)?;
        self.drivers
            .create_index(unique_index(doc! { "driverId": 1 }))
            .await
            .map_err(failure)?;
        self.sessions
            .create_indexes([unique_index(doc! { "id": 1 }), index(doc! { "userId": 1 })])
            .await
            .map_err(failure)?;
        Ok(())
    }
}
