//! The one rule of who may see and act on an order. Every reader of orders (the
//! HTTP routes, the WebSocket sessions, the notifier's fan-out) asks it here, so a
//! change of the rule cannot leave one of them behind.

use crate::domain::{Order, Role, UserId};

/// Who is asking. Clients see and cancel their own orders; drivers move on the
/// orders assigned to them; admins do everything. An order the caller may not act on
/// is answered as if it did not exist (404), so ids reveal nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewer {
    pub(crate) user_id: UserId,
    pub(crate) role: Role,
}

/// What a caller wants to do with one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read it, or cancel it (the route admits clients and admins only).
    Own,
    /// Take it out for delivery or mark it delivered.
    Deliver,
    /// Give it to a driver.
    Assign,
}

impl Viewer {
    /// Whose orders the viewer sees: `None` for everyone's (an admin), else the
    /// customer whose orders alone it sees (its own).
    pub(crate) fn customer_scope(&self) -> Option<&UserId> {
        (self.role != Role::Admin).then_some(&self.user_id)
    }

    /// Whether the viewer may see the orders of `customer`.
    pub(crate) fn may_see(&self, customer: &UserId) -> bool {
        self.customer_scope().is_none_or(|own| own == customer)
    }

    pub(crate) fn may(&self, action: Action, order: &Order) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        match action {
            Action::Own => self.may_see(&order.customer_id),
            Action::Deliver => {
                self.role == Role::Driver && order.driver_id.as_ref() == Some(&self.user_id)
            }
            Action::Assign => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use chrono::Utc;

    fn order_of(customer: &str, driver: Option<&str>) -> Order {
        let (mut order, _) = fixtures::received_by("ORD-1", customer, Utc::now());
        order.driver_id = driver.map(UserId::from_trusted);
        order
    }

    fn viewer(id: &str, role: Role) -> Viewer {
        Viewer {
            user_id: UserId::from_trusted(id),
            role,
        }
    }

    #[test]
    fn drivers_act_only_on_orders_assigned_to_them() {
        let assigned = order_of("usr_c", Some("usr_d"));
        let unassigned = order_of("usr_c", None);
        let driver = viewer("usr_d", Role::Driver);
        let other_driver = viewer("usr_e", Role::Driver);
        assert!(driver.may(Action::Deliver, &assigned));
        assert!(!other_driver.may(Action::Deliver, &assigned));
        assert!(!driver.may(Action::Deliver, &unassigned));
        assert!(
            !driver.may(Action::Own, &assigned),
            "drivers are not customers"
        );
        assert!(!driver.may(Action::Assign, &assigned));
    }

    #[test]
    fn a_client_with_a_drivers_id_is_no_driver() {
        // A client whose id was assigned by mistake still cannot deliver.
        let assigned_to_client = order_of("usr_c", Some("usr_x"));
        assert!(!viewer("usr_x", Role::Client).may(Action::Deliver, &assigned_to_client));
        assert!(viewer("usr_c", Role::Client).may(Action::Own, &assigned_to_client));
        assert!(!viewer("usr_c", Role::Client).may(Action::Deliver, &assigned_to_client));
    }

    #[test]
    fn admins_keep_full_access() {
        let admin = viewer("usr_a", Role::Admin);
        let order = order_of("usr_c", None);
        for action in [Action::Own, Action::Deliver, Action::Assign] {
            assert!(admin.may(action, &order));
        }
        assert_eq!(admin.customer_scope(), None);
        assert!(admin.may_see(&UserId::from_trusted("usr_c")));
    }

    #[test]
    fn everyone_else_sees_their_own_orders_only() {
        for role in [Role::Client, Role::Driver] {
            let own = viewer("usr_c", role);
            assert_eq!(own.customer_scope(), Some(&UserId::from_trusted("usr_c")));
            assert!(own.may_see(&UserId::from_trusted("usr_c")));
            assert!(!own.may_see(&UserId::from_trusted("usr_other")));
        }
    }
}
