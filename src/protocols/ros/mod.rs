//! ROS, the route optimiser: REST/JSON over HTTP.
//!
//! `POST /api/routes/optimize {orderId, pickup, delivery}` with an `Idempotency-Key`
//! header plans a route (`{routeId, waypoints, distance, eta}`); `DELETE
//! /api/routes/{routeId}` cancels it. `client` is the runtime's side, `simulator` an
//! optimiser for tests, benchmarks and the embedded default.

pub(crate) mod client;
pub(crate) mod simulator;

pub use client::RosClient;
pub use simulator::RosSimulator;

use super::{
    BackOffice, ProtocolSettings, Simulation, SimulatorStart, SystemClient, read_settings,
    stand_in_at,
};
use crate::domain::{Location, OrderId, Route, System, Waypoint};
use crate::protocols::simulator::KnobSettings;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The body of `POST /api/routes/optimize`: the order's locations as the client sent
/// them (seed 000 6.3). Our client always names the order; seed 000's adapter does
/// not, so the simulator does without.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OptimizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) order_id: Option<OrderId>,
    pub(crate) pickup: Location,
    pub(crate) delivery: Location,
}

/// Reads an optimiser's answer. Ours is `{routeId, waypoints, distance, eta}`; seed
/// 000 shows the plan without an id (section 8.3) and nested under `route` with
/// `eta` and `distance` beside it (section 6.3), `route` being the plan object or
/// its waypoint list. Every such form is read; anything else is refused with what
/// is missing.
pub fn read_route(body: &[u8]) -> Result<Route, String> {
    let reply: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let top = reply.as_object().ok_or("not a JSON object")?;
    let nested = top.get("route");
    let plan = nested.and_then(Value::as_object);
    let field = |name: &str| top.get(name).or_else(|| plan.and_then(|p| p.get(name)));
    let waypoints = field("waypoints")
        .or_else(|| nested.filter(|n| n.is_array()))
        .ok_or("no waypoints")?;
    let waypoints: Vec<Waypoint> =
        serde_json::from_value(waypoints.clone()).map_err(|e| format!("waypoints: {e}"))?;
    if !waypoints
        .iter()
        .all(|w| (-90.0..=90.0).contains(&w.lat) && (-180.0..=180.0).contains(&w.lng))
    {
        return Err("a waypoint is off the map".into());
    }
    let distance = field("distance")
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite() && *d >= 0.0)
        .ok_or("no distance (a non-negative number)")?;
    let eta = field("eta")
        .and_then(Value::as_str)
        .filter(|e| !e.trim().is_empty())
        .ok_or("no eta (a string)")?
        .to_owned();
    let route_id = match field("routeId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.clone()),
        Some(_) => return Err("routeId is not a non-empty string".into()),
    };
    Ok(Route {
        route_id,
        waypoints,
        distance,
        eta,
    })
}

/// The body of every 4xx and 5xx answer: `{"error": "<reason>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

/// Where the optimiser is when nothing says otherwise (seed 000 section 11's port).
const DEFAULT_URL: &str = "http://127.0.0.1:4001";

/// The ROS's keys of `[ros]` (see config/default.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosSettings {
    #[serde(default)]
    url: Option<String>,
}

impl RosSettings {
    fn read(settings: &ProtocolSettings) -> Result<Self, String> {
        read_settings(System::Ros, settings)
    }

    fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }
}

/// The ROS's entry in `protocols::BACK_OFFICE`.
pub(crate) struct Registration;

#[async_trait]
impl BackOffice for Registration {
    fn system(&self) -> System {
        System::Ros
    }

    fn label(&self) -> &'static str {
        "ROS REST"
    }

    fn check(&self, settings: &ProtocolSettings) -> Result<(), String> {
        RosSettings::read(settings).map(drop)
    }

    async fn client(
        &self,
        settings: &ProtocolSettings,
        timeout: Duration,
    ) -> anyhow::Result<Arc<dyn SystemClient>> {
        let settings = RosSettings::read(settings).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(RosClient::new(settings.url(), timeout)?))
    }

    fn target(&self, settings: &ProtocolSettings) -> String {
        RosSettings::read(settings).map_or_else(|e| e, |s| s.url().to_owned())
    }

    fn stand_in(&self, settings: &mut ProtocolSettings, address: &str) -> bool {
        stand_in_at(settings, "url", address)
    }

    fn simulate(&self, start: SimulatorStart) -> Simulation {
        let simulator =
            RosSimulator::new(KnobSettings::default()).remembering(start.remembered_effects);
        start.serve(simulator, RosSimulator::serve)
    }

    fn simulator_address(&self, listening: SocketAddr) -> String {
        format!("http://{listening}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_reply_and_the_forms_of_seed_000() {
        let ours = read_route(
            br#"{"routeId":"RT-1","waypoints":[{"lat":1,"lng":2}],"distance":3.5,"eta":"2026-02-05T10:45:00Z"}"#,
        )
        .unwrap();
        assert_eq!(ours.route_id.as_deref(), Some("RT-1"));
        let plan = r#"{"waypoints":[{"lat":40.7128,"lng":-74.006},{"lat":40.75,"lng":-73.99}],"distance":12.3,"eta":"2026-02-05T10:45:00Z"}"#;
        let seed_8_3 = read_route(plan.as_bytes()).unwrap();
        assert_eq!(seed_8_3.route_id, None);
        assert_eq!(seed_8_3.waypoints.len(), 2);
        let seed_6_3 =
            format!(r#"{{"route":{plan},"eta":"2026-02-05T10:45:00Z","distance":12.3}}"#);
        assert_eq!(read_route(seed_6_3.as_bytes()).unwrap(), seed_8_3);
        let as_list = br#"{"route":[{"lat":1,"lng":2}],"eta":"soon","distance":1}"#;
        assert_eq!(read_route(as_list).unwrap().waypoints.len(), 1);
    }

    #[test]
    fn refuses_replies_that_are_not_a_route_and_says_why() {
        for (body, why) in [
            (&b"<html>"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"distance":1,"eta":"x"}"#, "no waypoints"),
            (
                br#"{"waypoints":[{"lat":91,"lng":0}],"distance":1,"eta":"x"}"#,
                "off the map",
            ),
            (
                br#"{"waypoints":[],"distance":-1,"eta":"x"}"#,
                "no distance",
            ),
            (br#"{"waypoints":[],"distance":1,"eta":5}"#, "no eta"),
            (
                br#"{"waypoints":[],"distance":1,"eta":"x","routeId":7}"#,
                "routeId",
            ),
        ] {
            let error = read_route(body).unwrap_err();
            assert!(error.contains(why), "{error:?} does not say {why:?}");
        }
    }
}
