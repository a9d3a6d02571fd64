//! Settings, layered: `config/default.toml` (compiled in, so the binary runs from any
//! directory), an optional file, `SWIFT__SECTION__KEY` environment variables, the
//! seed's `MONGODB_URI` / `RABBITMQ_URL` / `JWT_SECRET`, then CLI flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const DEFAULT_JWT_SECRET: &str = "dev-only-change-me-swiftlogistics-secret";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub profile: Profile,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub cms: HttpSystemSettings,
    pub ros: HttpSystemSettings,
    pub wms: WmsSettings,
    pub circuit: CircuitSettings,
    pub saga: SagaSettings,
    pub orders: OrderSettings,
    pub supervision: SupervisionSettings,
    pub simulators: SimulatorSettings,
    pub websocket: WebSocketSettings,
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Development,
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub token_ttl_hours: u64,
    pub login_per_minute: u32,
    pub admin_email: String,
    pub admin_password: String,
    pub driver_email: String,
    pub driver_password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Embedded,
    Mongo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub mongodb_uri: String,
    pub database: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Local,
    Amqp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    pub rabbitmq_url: String,
    pub shards: u32,
    pub prefetch: u16,
    pub timeout_secs: u64,
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSystemSettings {
    pub url: String,
    pub timeout_ms: u64,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WmsSettings {
    pub addr: String,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitSettings {
    pub failure_threshold: u32,
    pub open_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub step_watchdog_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    pub max_in_flight: usize,
    pub passivate_after_secs: u64,
    pub resume_sweep_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    pub max_restarts: u32,
    pub window_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Lifecycle events of supervised actors kept in memory for the SRE page.
    pub history: usize,
    /// Stamp messages when sent and observe their time in the mailbox when handled.
    pub mailbox_timing: bool,
    /// OTLP/HTTP endpoint traces are exported to (e.g. `http://127.0.0.1:4318`);
    /// empty: no traces are exported.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    pub enabled: bool,
    pub cms_bind: String,
    pub ros_bind: String,
    pub wms_bind: String,
    pub control_bind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub session_buffer: usize,
    pub max_subscriptions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub node_id: String,
    pub heartbeat_ms: u64,
    pub missed_heartbeats: u32,
    pub drain_timeout_secs: u64,
}

/// Longest node id: it is part of queue names, which AMQP bounds.
const MAX_NODE_ID_LEN: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("refusing to start: {0}")]
    Unsafe(String),
}

impl Settings {
    /// The layered settings of the process: defaults, `file`, the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(Env::prefixed("SWIFT__").split("__").lowercase(true))
            .merge(
                Env::raw()
                    .only(&["MONGODB_URI"])
                    .map(|_| "store.mongodb_uri".into()),
            )
            .merge(
                Env::raw()
                    .only(&["RABBITMQ_URL"])
                    .map(|_| "bus.rabbitmq_url".into()),
            )
            .merge(
                Env::raw()
                    .only(&["JWT_SECRET"])
                    .map(|_| "auth.jwt_secret".into()),
            );
        Self::extract(figment)
    }

    /// Defaults with overrides given as a serialisable value (tests, benchmarks).
    pub fn defaults_with(overrides: impl Serialize) -> Result<Self, ConfigError> {
        Self::extract(
            Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::defaults(overrides)),
        )
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.profile == Profile::Production && self.auth.jwt_secret == DEFAULT_JWT_SECRET {
            return Err(ConfigError::Unsafe(
                "the production profile needs its own auth.jwt_secret (JWT_SECRET)".into(),
            ));
        }
        if self.auth.jwt_secret.len() < 16 {
            return invalid("auth.jwt_secret must be at least 16 bytes");
        }
        if self.bus.shards == 0 || self.saga.max_attempts == 0 || self.wms.connections == 0 {
            return invalid("bus.shards, saga.max_attempts and wms.connections must be positive");
        }
        if self.cms.concurrency == 0 || self.ros.concurrency == 0 || self.wms.concurrency == 0 {
            return invalid("the concurrency of each system must be positive");
        }
        if self.orders.max_in_flight == 0 || self.circuit.failure_threshold == 0 {
            return invalid("orders.max_in_flight and circuit.failure_threshold must be positive");
        }
        let id = &self.cluster.node_id;
        if id.len() > MAX_NODE_ID_LEN || !id.bytes().all(node_id_byte) {
            return invalid("cluster.node_id must be at most 48 characters of A-Z a-z 0-9 - _ .");
        }
        if self.cluster.heartbeat_ms == 0
            || self.cluster.missed_heartbeats == 0
            || self.cluster.drain_timeout_secs == 0
        {
            return invalid("every cluster setting but node_id must be positive");
        }
        let ws = &self.websocket;
        if ws.ping_interval_ms == 0
            || ws.pong_timeout_ms == 0
            || ws.session_buffer == 0
            || ws.max_subscriptions == 0
        {
            return invalid("every websocket setting must be positive");
        }
        Ok(())
    }

    pub fn uses_default_secret(&self) -> bool {
        self.auth.jwt_secret == DEFAULT_JWT_SECRET
    }

    /// `cluster.node_id`, or the host name and HTTP port (`web-1-3000`), which tell
    /// apart the nodes of one cluster as long as no two share host and port.
    pub fn node_id(&self, http_port: u16) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| {
                if node_id_byte(c as u8) && c.is_ascii() {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_NODE_ID_LEN - 6)
            .collect();
        let host = if host.is_empty() {
            "node".to_owned()
        } else {
            host
        };
        format!("{host}-{http_port}")
    }
}

fn node_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_parse() {
        let s = Settings::defaults_with(json!({})).unwrap();
        assert_eq!(s.http.bind, "127.0.0.1:3000");
        assert_eq!(s.circuit.failure_threshold, 3);
        assert_eq!(s.store.kind, StoreKind::Embedded);
    }

    #[test]
    fn production_refuses_the_default_secret() {
        let err = Settings::defaults_with(json!({"profile": "production"})).unwrap_err();
        assert!(matches!(err, ConfigError::Unsafe(_)));
        let ok = Settings::defaults_with(
            json!({"profile": "production", "auth": {"jwt_secret": "a-real-secret-of-some-length"}}),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        assert!(Settings::defaults_with(json!({"http": {"bnd": "x"}})).is_err());
        assert!(Settings::defaults_with(json!({"store": {"kind": "postgres"}})).is_err());
        assert!(Settings::defaults_with(json!({"bus": {"shards": 0}})).is_err());
        assert!(Settings::defaults_with(json!({"cluster": {"node_id": "a b"}})).is_err());
    }

    #[test]
    fn the_node_id_is_configured_or_host_and_port() {
        let named = Settings::defaults_with(json!({"cluster": {"node_id": "web-1"}})).unwrap();
        assert_eq!(named.node_id(3000), "web-1");
        let default = Settings::defaults_with(json!({})).unwrap();
        let id = default.node_id(3001);
        assert!(id.ends_with("-3001"), "{id}");
        assert!(
            id.len() <= MAX_NODE_ID_LEN && id.bytes().all(node_id_byte),
            "{id}"
        );
    }
}
