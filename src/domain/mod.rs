//! Pure logistics logic: no IO, no clocks read behind the caller's back, no async.
//! Everything here is unit-tested on its own; the rest of the crate depends on it,
//! never the other way round.

pub(crate) mod backoff;
pub(crate) mod cluster;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod ids;
pub(crate) mod order;
pub(crate) mod progress;
pub(crate) mod runner;
pub mod saga;
pub(crate) mod status;
pub(crate) mod step;
pub(crate) mod update;
pub(crate) mod user;
pub mod validation;

pub use ids::{OrderId, UserId};
pub use order::{
    Compensation, CustomerProfile, Location, LocationForm, NewOrder, Order, OrderEvent,
    PackageDetails, Reservation, Route, Waypoint,
};
pub use saga::{Operation, OperationOutcome, SagaDecision, SagaInput, StepState, System};
pub use status::OrderStatus;
pub use step::{StepReply, StepRequest};
pub use user::{Email, LoginSession, Registration, Role, User};
pub use validation::{FieldError, ValidationErrors};
