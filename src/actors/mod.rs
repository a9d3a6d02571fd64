//! The supervisor tree of DESIGN section 3.
//!
//! ```text
//! root
//! ├── adapters (one_for_one, restart intensity limit, backoff)
//! │   ├── cms   ├── wms   └── ros
//! ├── orders   (one OrderActor per live order)
//! ├── notifier
//! ├── bridges
//! └── telemetry
//! ```

pub mod control;

pub use control::{ActorNode, CircuitState, RuntimeControl, ServiceHealth};
