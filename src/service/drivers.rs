//! Drivers' own data: where they last reported being, and whether that makes them
//! online. Their work (the orders assigned to them) is the order service's.

use super::ServiceError;
use crate::domain::{User, UserId};
use crate::store::{DriverLocation, SharedStore};
use chrono::{DateTime, Utc};

/// A driver whose last report is older than this is shown offline.
const ONLINE_WITHIN: chrono::Duration = chrono::Duration::minutes(5);

/// A driver's account with their last reported location.
#[derive(Debug, Clone)]
pub(crate) struct DriverStatus {
    pub(crate) user: User,
    pub(crate) location: Option<DriverLocation>,
    pub(crate) online: bool,
}

#[derive(Clone)]
pub(crate) struct DriverService {
    store: SharedStore,
}

impl DriverService {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    pub(crate) async fn report_location(
        &self,
        location: &DriverLocation,
    ) -> Result<(), ServiceError> {
        Ok(self.store.put_driver_location(location).await?)
    }

    pub(crate) async fn location(
        &self,
        driver: &UserId,
    ) -> Result<Option<DriverLocation>, ServiceError> {
        Ok(self.store.driver_location(driver).await?)
    }

    /// `None` when the account no longer exists.
    pub(crate) async fn status(
        &self,
        driver: &UserId,
    ) -> Result<Option<DriverStatus>, ServiceError> {
        let (user, location) = tokio::try_join!(
            self.store.user_by_id(driver),
            self.store.driver_location(driver)
        )?;
        Ok(user.map(|user| DriverStatus {
            online: is_online(location.as_ref(), Utc::now()),
            user,
            location,
        }))
    }
}

pub(crate) fn is_online(location: Option<&DriverLocation>, now: DateTime<Utc>) -> bool {
    location.is_some_and(|l| now.signed_duration_since(l.updated_at) <= ONLINE_WITHIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_go_offline_five_minutes_after_their_last_report() {
        let now = Utc::now();
        let at = |ago: i64| DriverLocation {
            driver_id: UserId::from_trusted("usr_d"),
            lat: 0.0,
            lng: 0.0,
            heading: None,
            speed: None,
            updated_at: now - chrono::Duration::seconds(ago),
        };
        assert!(is_online(Some(&at(60)), now));
        assert!(!is_online(Some(&at(301)), now));
        assert!(!is_online(None, now));
    }
}
