//! The CMS, the legacy client management system: SOAP 1.1 over HTTP (DESIGN
//! section 6). `ValidateCustomer` is the saga's first, read-only step;
//! `CancelOrder` is its compensation.
//!
//! - `codec`: envelopes in and out, no IO
//! - `CmsClient`: the runtime's `SystemClient` for the CMS
//! - `CmsSimulator`: the other side, for tests, benchmarks and the embedded default

pub mod codec;
pub mod wsdl;

mod client;
mod simulator;

pub use client::{CmsClient, CmsClientError, CmsTarget};
pub use simulator::CmsSimulator;
