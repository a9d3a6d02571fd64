//! SwiftLogistics: an order-processing runtime built as an actor system.

pub mod actors;
pub mod app;
pub mod auth;
pub mod bench;
pub mod bus;
pub mod config;
pub mod domain;
mod fifo_map;
pub mod http;
#[cfg(test)]
mod journey_simulation;
pub mod observability;
pub mod protocols;
pub mod service;
pub mod simulators;
pub mod store;
