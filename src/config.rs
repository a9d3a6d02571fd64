//! Settings, layered: `config/default.toml` (compiled in, so the binary runs from any
//! directory), an optional file, `SWIFT__SECTION__KEY` environment variables, the
//! seed's `MONGODB_URI` / `RABBITMQ_URL` / `JWT_SECRET`, then CLI flags.

use crate::domain::System;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub(crate) const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const DEFAULT_JWT_SECRET: &str = "dev-only-change-me-swiftlogistics-secret";
/// Secrets anyone can read: ours, the seed's `.env.example`, and the usual suspects.
const KNOWN_JWT_SECRETS: [&str; 6] = [
    DEFAULT_JWT_SECRET,
    "your-secret-key-change-in-production",
    "secret",
    "changeme",
    "change-me",
    "jwt-secret",
];
/// Shortest secret accepted on a node reachable from other machines (256 bits as hex
/// would be 64; 32 bytes is the floor that `openssl rand -hex 16` still meets).
const MIN_EXPOSED_SECRET_LEN: usize = 32;

/// Unknown sections are refused all the same: every section not named here must be
/// a back-office system's (`systems`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub profile: Profile,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    /// Each back-office system's section (`[cms]`, `[wms]`, `[ros]`).
    #[serde(flatten)]
    pub(crate) systems: SystemSections,
    pub(crate) circuit: CircuitSettings,
    pub(crate) saga: SagaSettings,
    pub(crate) orders: OrderSettings,
    pub(crate) supervision: SupervisionSettings,
    pub simulators: SimulatorSettings,
    pub websocket: WebSocketSettings,
    pub rate_limit: RateLimitSettings,
    pub(crate) cluster: ClusterSettings,
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
    pub(crate) max_body_bytes: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) request_timeout_secs: u64,
    pub(crate) header_read_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    pub(crate) cors_allowed_origins: Vec<String>,
    pub(crate) metrics_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub(crate) jwt_secret: String,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) access_token_ttl_secs: u64,
    pub(crate) refresh_token_ttl_hours: u64,
    pub(crate) leeway_secs: u64,
    pub(crate) session_cache_ms: u64,
    pub login_per_minute: u32,
    pub lockout_failures: u32,
    pub(crate) lockout_minutes: u64,
    pub register_per_hour: u32,
    pub(crate) generated_passwords_file: PathBuf,
    pub(crate) admin_email: String,
    pub(crate) admin_password: String,
    pub(crate) driver_email: String,
    pub(crate) driver_password: String,
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
    pub(crate) mongodb_uri: String,
    pub database: String,
    pub(crate) timeout_secs: u64,
    /// Page cache of the embedded store, in MiB.
    pub(crate) cache_mib: u64,
    /// Recently written orders the embedded store keeps in memory.
    pub(crate) cached_orders: usize,
    /// How long a lone write of the embedded store waits to share its commit.
    pub(crate) commit_window_us: u64,
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
    pub(crate) rabbitmq_url: String,
    pub(crate) shards: u32,
    pub prefetch: u16,
    pub(crate) timeout_secs: u64,
    pub(crate) namespace: String,
    /// Brokers holding each new quorum queue on a RabbitMQ cluster (0: all).
    pub(crate) quorum_initial_group_size: u32,
}

/// How a back-office system may be called, whichever its protocol: each call's bound
/// and how many calls may be in flight at once (`timeout_ms`, `concurrency` of its
/// section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    pub(crate) timeout_ms: u64,
    pub(crate) concurrency: usize,
}

impl Settings {
    /// The section of `system`.
    pub(crate) fn system(&self, system: System) -> &SystemSettings {
        self.systems.get(system)
    }

    /// The call limits of `system`'s section, for the adapter and the checks below.
    pub(crate) fn call_limits(&self, system: System) -> CallLimits {
        let section = self.system(system);
        CallLimits {
            timeout_ms: section.timeout_ms,
            concurrency: section.concurrency,
        }
    }
}

/// One back-office system's section, `[<name>]`: what every adapter needs, and the
/// keys of the system's protocol (its address, the CMS's WSDL, the WMS's pool),
/// which its protocol module reads and checks (`protocols::BackOffice`). A system's
/// address is optional: unset, an enabled simulator stands in for the system, else
/// the protocol's default address is used; set, it is used whatever else is on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemSettings {
    pub(crate) timeout_ms: u64,
    pub(crate) concurrency: usize,
    #[serde(flatten)]
    pub(crate) protocol: serde_json::Map<String, serde_json::Value>,
}

/// The sections of every system of `System::ALL`, in that order: reading the
/// settings fails if one is missing, or if a section names no system.
#[derive(Debug, Clone)]
pub(crate) struct SystemSections(Vec<SystemSettings>);

impl SystemSections {
    fn get(&self, system: System) -> &SystemSettings {
        // In bounds: the list holds one section per system of `System::ALL`, and
        // `index` is a system's place there.
        &self.0[system.index()]
    }

    pub(crate) fn get_mut(&mut self, system: System) -> &mut SystemSettings {
        &mut self.0[system.index()]
    }
}

impl Serialize for SystemSections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (system, section) in System::ALL.into_iter().zip(&self.0) {
            map.serialize_entry(system.as_str(), section)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for SystemSections {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Read loosely first, so that a section naming no system (a misspelt one)
        // is reported by its name rather than by the keys a system's would need.
        let mut sections =
            std::collections::HashMap::<String, serde_json::Value>::deserialize(deserializer)?;
        if let Some(unknown) = sections.keys().find(|k| System::parse(k).is_none()) {
            return Err(D::Error::custom(format!(
                "unknown section `{unknown}` (the back-office systems are {})",
                System::names()
            )));
        }
        System::ALL
            .into_iter()
            .map(|system| {
                let name = system.as_str();
                let section = sections
                    .remove(name)
                    .ok_or_else(|| D::Error::missing_field(name))?;
                serde_json::from_value(section)
                    .map_err(|e| D::Error::custom(format!("[{name}]: {e}")))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CircuitSettings {
    pub(crate) failure_threshold: u32,
    pub(crate) open_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SagaSettings {
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base_ms: u64,
    pub(crate) backoff_max_ms: u64,
    pub(crate) step_watchdog_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderSettings {
    pub(crate) max_in_flight: usize,
    pub(crate) passivate_after_secs: u64,
    /// Actors of orders waiting on nobody kept in memory at most; beyond it the
    /// longest at rest are passivated before `passivate_after_secs`.
    pub(crate) max_idle_actors: usize,
    pub(crate) resume_sweep_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupervisionSettings {
    pub(crate) max_restarts: u32,
    pub(crate) window_secs: u64,
    pub(crate) backoff_base_ms: u64,
    pub(crate) backoff_max_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Lifecycle events of supervised actors kept in memory for the SRE page.
    pub(crate) history: usize,
    /// Stamp messages when sent and observe their time in the mailbox when handled.
    pub(crate) mailbox_timing: bool,
    /// OTLP/HTTP endpoint traces are exported to (e.g. `http://127.0.0.1:4318`);
    /// empty: no traces are exported.
    pub(crate) otlp_endpoint: String,
}

/// Where the simulators listen: `control_bind` for their control API and a
/// `<name>_bind` for each system's simulator; and how many effects each remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimulatorSettings {
    pub enabled: bool,
    pub(crate) control_bind: String,
    /// Effects each simulator remembers (idempotency answers and what the effects
    /// left behind), the oldest forgotten first: their memory, in-process in the
    /// embedded default, is bounded by it.
    pub(crate) remembered_effects: usize,
    #[serde(flatten)]
    binds: std::collections::BTreeMap<String, String>,
}

impl SimulatorSettings {
    /// Where the simulator of `system` listens (`<name>_bind`).
    pub(crate) fn bind(&self, system: System) -> &str {
        self.binds
            .get(&format!("{}_bind", system.as_str()))
            .map_or("", String::as_str)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let named = |key: &str| key.strip_suffix("_bind").and_then(System::parse).is_some();
        if let Some(unknown) = self.binds.keys().find(|k| !named(k)) {
            return Err(ConfigError::Invalid(format!(
                "unknown setting simulators.{unknown}"
            )));
        }
        if self.remembered_effects == 0 {
            return Err(ConfigError::Invalid(
                "simulators.remembered_effects must be positive: a simulator that remembers no effect applies every replay again".into(),
            ));
        }
        match System::ALL.into_iter().find(|s| self.bind(*s).is_empty()) {
            Some(system) => Err(ConfigError::Invalid(format!(
                "simulators.{}_bind is missing",
                system.as_str()
            ))),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    pub(crate) ping_interval_ms: u64,
    pub(crate) pong_timeout_ms: u64,
    pub(crate) session_buffer: usize,
    pub(crate) max_subscriptions: usize,
    pub max_sessions_per_user: usize,
    pub(crate) allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub(crate) window_secs: u64,
    pub anonymous_per_window: u32,
    pub user_per_window: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterSettings {
    pub(crate) node_id: String,
    pub(crate) heartbeat_ms: u64,
    pub(crate) missed_heartbeats: u32,
    pub(crate) drain_timeout_secs: u64,
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

    /// Checks the settings as a whole; run again after anything changes them (the
    /// command line's `--bind` may expose a node the file kept on loopback).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.refuse_unsafe_secret()?;
        if self.auth.access_token_ttl_secs == 0 || self.auth.refresh_token_ttl_hours == 0 {
            return invalid(
                "auth.access_token_ttl_secs and auth.refresh_token_ttl_hours must be positive",
            );
        }
        let limits = &self.rate_limit;
        if limits.window_secs == 0
            || limits.anonymous_per_window == 0
            || limits.user_per_window == 0
        {
            return invalid("every rate_limit setting must be positive");
        }
        if self.http.max_connections == 0 || self.http.max_connections_per_client == 0 {
            return invalid(
                "http.max_connections and http.max_connections_per_client must be positive",
            );
        }
        if self.bus.shards == 0 || self.saga.max_attempts == 0 {
            return invalid("bus.shards and saga.max_attempts must be positive");
        }
        self.simulators.validate()?;
        if System::ALL
            .into_iter()
            .any(|system| self.call_limits(system).concurrency == 0)
        {
            return invalid("the concurrency of each system must be positive");
        }
        for back_office in crate::protocols::BACK_OFFICE {
            let section = &self.system(back_office.system()).protocol;
            back_office.check(section).map_err(ConfigError::Invalid)?;
        }
        if self.orders.max_in_flight == 0
            || self.orders.max_idle_actors == 0
            || self.circuit.failure_threshold == 0
        {
            return invalid(
                "orders.max_in_flight, orders.max_idle_actors and circuit.failure_threshold must be positive",
            );
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

    /// A node that others can reach, or one that says it is in production, must not
    /// accept tokens signed with a secret anyone can read or guess.
    fn refuse_unsafe_secret(&self) -> Result<(), ConfigError> {
        let secret = self.auth.jwt_secret.as_str();
        let known = KNOWN_JWT_SECRETS
            .iter()
            .any(|k| k.eq_ignore_ascii_case(secret.trim()));
        let exposed = self.profile == Profile::Production || !self.listens_on_loopback_only();
        if exposed && (known || secret.len() < MIN_EXPOSED_SECRET_LEN) {
            let why = if self.profile == Profile::Production {
                "the production profile".to_owned()
            } else {
                format!("listening on {}, beyond loopback,", self.http.bind)
            };
            return Err(ConfigError::Unsafe(format!(
                "{why} needs its own auth.jwt_secret (JWT_SECRET) of at least \
                 {MIN_EXPOSED_SECRET_LEN} bytes, not a built-in or well-known one; \
                 generate one with `openssl rand -hex 32`"
            )));
        }
        if secret.len() < 16 {
            return Err(ConfigError::Invalid(
                "auth.jwt_secret must be at least 16 bytes".into(),
            ));
        }
        Ok(())
    }

    /// Whether the HTTP API is reachable from this machine only (127.0.0.0/8, ::1,
    /// `localhost`). Anything else, including host names, counts as exposed.
    pub(crate) fn listens_on_loopback_only(&self) -> bool {
        let bind = self.http.bind.trim();
        if let Ok(addr) = bind.parse::<std::net::SocketAddr>() {
            return addr.ip().is_loopback();
        }
        bind.rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
    }

    pub fn uses_default_secret(&self) -> bool {
        self.auth.jwt_secret == DEFAULT_JWT_SECRET
    }

    /// `cluster.node_id`, or the host name and HTTP port (`web-1-3000`), which tell
    /// apart the nodes of one cluster as long as no two share host and port.
    pub(crate) fn node_id(&self, http_port: u16) -> String {
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
    fn the_simulators_remember_as_many_effects_by_default_as_when_built_directly() {
        let s = Settings::defaults_with(json!({})).unwrap();
        assert_eq!(
            s.simulators.remembered_effects,
            crate::protocols::simulator::REMEMBERED_EFFECTS
        );
        let none = Settings::defaults_with(json!({"simulators": {"remembered_effects": 0}}));
        assert!(matches!(none, Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn production_refuses_the_default_secret() {
        let err = Settings::defaults_with(json!({"profile": "production"})).unwrap_err();
        assert!(matches!(err, ConfigError::Unsafe(_)));
        let ok = Settings::defaults_with(
            json!({"profile": "production", "auth": {"jwt_secret": "a-real-secret-of-some-length-32b"}}),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn an_exposed_node_refuses_known_and_short_secrets() {
        for bind in [
            "0.0.0.0:3000",
            "[::]:3000",
            "10.1.2.3:80",
            "api.example.com:3000",
        ] {
            let err = Settings::defaults_with(json!({"http": {"bind": bind}})).unwrap_err();
            assert!(matches!(err, ConfigError::Unsafe(_)), "{bind}: {err}");
            let short = json!({"http": {"bind": bind}, "auth": {"jwt_secret": "sixteen-bytes-ok"}});
            assert!(Settings::defaults_with(short).is_err(), "{bind}");
            let seed = json!({"http": {"bind": bind},
                "auth": {"jwt_secret": "your-secret-key-change-in-production"}});
            assert!(Settings::defaults_with(seed).is_err(), "{bind}");
            let good = json!({"http": {"bind": bind},
                "auth": {"jwt_secret": "0123456789abcdef0123456789abcdef"}});
            assert!(Settings::defaults_with(good).is_ok(), "{bind}");
        }
        for bind in [
            "127.0.0.1:3000",
            "127.0.0.2:0",
            "[::1]:3000",
            "localhost:3000",
        ] {
            let s = Settings::defaults_with(json!({"http": {"bind": bind}})).unwrap();
            assert!(
                s.listens_on_loopback_only() && s.uses_default_secret(),
                "{bind}"
            );
        }
        let short = json!({"profile": "production", "auth": {"jwt_secret": "sixteen-bytes-ok"}});
        assert!(matches!(
            Settings::defaults_with(short).unwrap_err(),
            ConfigError::Unsafe(_)
        ));
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

    #[test]
    fn each_system_has_a_section_of_its_own() {
        let s = Settings::defaults_with(json!({"wms": {"timeout_ms": 7, "addr": "10.0.0.1:9"}}))
            .unwrap();
        assert_eq!(s.call_limits(System::Wms).timeout_ms, 7);
        assert_eq!(s.call_limits(System::Cms).timeout_ms, 5000);
        assert_eq!(s.system(System::Wms).protocol["addr"], "10.0.0.1:9");
        assert_eq!(s.simulators.bind(System::Ros), "127.0.0.1:4001");
        for refused in [
            json!({"erp": {"timeout_ms": 1, "concurrency": 1}}),
            json!({"cms": {"adress": "x"}}),
            json!({"wms": {"connections": 0}}),
            json!({"cms": {"wsdl_reread_secs": 0}}),
            json!({"ros": {"concurrency": 0}}),
            json!({"simulators": {"erp_bind": "127.0.0.1:0"}}),
        ] {
            assert!(Settings::defaults_with(&refused).is_err(), "{refused}");
        }
    }
}
