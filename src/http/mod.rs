//! HTTP API (axum). Being written.
