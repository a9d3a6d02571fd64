//! SwiftLogistics: an order-processing runtime built as an actor system.

pub mod bus;
pub mod config;
pub mod domain;
pub mod protocols;
pub mod store;
