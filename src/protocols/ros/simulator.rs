//! A route optimiser that speaks the ROS REST API, for tests, benchmarks and the
//! embedded default. Routes are great-circle plans (haversine distance, a midpoint
//! waypoint, an ETA at urban driving speed); every effect is applied once per
//! idempotency key and the shared knobs make failures and refusals reachable.

use super::{ErrorBody, OptimizeRequest};
use crate::domain::{Location, Operation, Route, Waypoint};
use crate::protocols::simulator::{
    ControlledSimulator, EffectLedger, KnobSettings, LedgerSummary, Remembered, SimulatorKnobs,
    Verdict,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Average door-to-door speed in town, traffic included.
const DRIVING_KMH: f64 = 40.0;
/// Loading and unloading on top of the drive.
const HANDLING_MINUTES: f64 = 15.0;
/// Longest idempotency key honoured; a longer one falls back to the order's key.
const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Default)]
pub struct RosSimulator {
    knobs: SimulatorKnobs,
    ledger: EffectLedger,
    /// Planned routes not yet cancelled, by route id.
    routes: Remembered<String, Route>,
}

impl RosSimulator {
    pub fn new(settings: KnobSettings) -> Self {
        Self {
            knobs: SimulatorKnobs::new(settings),
            ..Self::default()
        }
    }

    /// The same simulator, remembering its latest `effects` effects.
    pub fn remembering(self, effects: usize) -> Self {
        Self {
            ledger: EffectLedger::new(effects),
            routes: Remembered::new(effects),
            ..self
        }
    }

    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/routes/optimize", post(optimize))
            .route("/api/routes/{route_id}", delete(cancel))
            .with_state(self)
    }

    /// Serves the API until `shutdown` is cancelled, then lets requests in hand finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Routes planned and not cancelled.
    pub(crate) fn routes(&self) -> usize {
        self.routes.len()
    }
}

impl ControlledSimulator for RosSimulator {
    fn knobs(&self) -> &SimulatorKnobs {
        &self.knobs
    }

    fn summary(&self) -> LedgerSummary {
        self.ledger
            .summary(HashMap::from([("routes".to_owned(), self.routes())]))
    }
}

async fn optimize(
    State(sim): State<Arc<RosSimulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: OptimizeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    for (name, location) in [("pickup", &request.pickup), ("delivery", &request.delivery)] {
        if !on_earth(location) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{name} is not a latitude in [-90, 90] and a longitude in [-180, 180]"),
            );
        }
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .map(str::to_owned)
        .or_else(|| {
            let order_id = request.order_id.as_ref()?;
            Some(Operation::OptimizeRoute.idempotency_key(order_id))
        })
        // Seed 000's adapter names neither: each of its calls is a new plan.
        .unwrap_or_else(|| format!("anonymous:{}", uuid::Uuid::new_v4().simple()));
    let verdict = sim.knobs.judge(None).await;
    if verdict == Verdict::Fail {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "route optimiser unavailable",
        );
    }
    // A replay gets the route planned before even while new work is refused.
    if verdict == Verdict::Refuse && !sim.ledger.contains(&key) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "no route");
    }
    let body = sim.ledger.once(&key, || {
        let route = plan(&request.pickup, &request.delivery, Utc::now());
        let body = serde_json::to_string(&route).unwrap_or_default();
        if let Some(id) = route.route_id.clone() {
            sim.routes.insert(id, route);
        }
        body
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn cancel(State(sim): State<Arc<RosSimulator>>, Path(route_id): Path<String>) -> Response {
    // Cancelling undoes a plan: it is never refused, only failed.
    if sim.knobs.judge(None).await == Verdict::Fail {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "route optimiser unavailable",
        );
    }
    let key = format!("{route_id}:ros.cancel");
    let outcome = sim.ledger.once(&key, || {
        let removed = sim.routes.remove(&route_id);
        if removed.is_some() {
            "deleted"
        } else {
            "unknown"
        }
        .to_owned()
    });
    if outcome == "deleted" {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "unknown route")
    }
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: reason.into(),
        }),
    )
        .into_response()
}

fn on_earth(location: &Location) -> bool {
    (-90.0..=90.0).contains(&location.lat) && (-180.0..=180.0).contains(&location.lng)
}

/// A route from `pickup` to `delivery` planned at `now`.
fn plan(pickup: &Location, delivery: &Location, now: DateTime<Utc>) -> Route {
    let distance = haversine_km(pickup, delivery);
    let minutes = HANDLING_MINUTES + distance / DRIVING_KMH * 60.0;
    // Whole seconds, and far below chrono's range even for antipodes.
    let eta = now + chrono::Duration::seconds((minutes * 60.0).round() as i64);
    let id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(12)
        .collect();
    Route {
        route_id: Some(format!("RT-{}", id.to_uppercase())),
        waypoints: vec![
            waypoint(pickup.lat, pickup.lng),
            midpoint(pickup, delivery),
            waypoint(delivery.lat, delivery.lng),
        ],
        distance: (distance * 100.0).round() / 100.0,
        eta: eta.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

fn waypoint(lat: f64, lng: f64) -> Waypoint {
    Waypoint { lat, lng }
}

/// Great-circle distance in kilometres.
pub(crate) fn haversine_km(a: &Location, b: &Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat2 - lat1;
    let d_lng = (b.lng - a.lng).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lng / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// The point halfway along the great circle, so a route across the antimeridian
/// does not pass through the other side of the world.
fn midpoint(a: &Location, b: &Location) -> Waypoint {
    let (lat1, lng1) = (a.lat.to_radians(), a.lng.to_radians());
    let lat2 = b.lat.to_radians();
    let d_lng = (b.lng - a.lng).to_radians();
    let bx = lat2.cos() * d_lng.cos();
    let by = lat2.cos() * d_lng.sin();
    let lat = (lat1.sin() + lat2.sin()).atan2(((lat1.cos() + bx).powi(2) + by.powi(2)).sqrt());
    let lng = lng1 + by.atan2(lat1.cos() + bx);
    let lng = (lng.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
    waypoint(lat.to_degrees(), lng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lng: f64) -> Location {
        Location::at(lat, lng, None)
    }

    #[test]
    fn distances_match_known_city_pairs() {
        let london = at(51.5074, -0.1278);
        let paris = at(48.8566, 2.3522);
        let d = haversine_km(&london, &paris);
        assert!((340.0..347.0).contains(&d), "{d}");
        assert_eq!(haversine_km(&london, &london), 0.0);
    }

    #[test]
    fn the_midpoint_of_a_route_across_the_antimeridian_stays_in_the_pacific() {
        let m = midpoint(&at(0.0, 170.0), &at(0.0, -170.0));
        assert!(
            m.lat.abs() < 1e-9 && (m.lng.abs() - 180.0).abs() < 1e-9,
            "{m:?}"
        );
        let m = midpoint(&at(10.0, 10.0), &at(20.0, 20.0));
        assert!(
            (14.0..16.0).contains(&m.lat) && (14.0..16.0).contains(&m.lng),
            "{m:?}"
        );
    }

    #[test]
    fn a_plan_drives_from_pickup_to_delivery_and_arrives_later() {
        let now = Utc::now();
        let colombo = at(6.9271, 79.8612);
        let kandy = at(7.2906, 80.6337);
        let route = plan(&colombo, &kandy, now);
        let id = route.route_id.unwrap();
        assert!(id.starts_with("RT-") && id.len() == 15);
        assert_eq!(
            route.waypoints.first(),
            Some(&waypoint(colombo.lat, colombo.lng))
        );
        assert_eq!(
            route.waypoints.last(),
            Some(&waypoint(kandy.lat, kandy.lng))
        );
        assert!(
            (90.0..100.0).contains(&route.distance),
            "{}",
            route.distance
        );
        let eta = DateTime::parse_from_rfc3339(&route.eta).unwrap();
        let minutes = (eta.with_timezone(&Utc) - now).num_minutes();
        assert!((140..170).contains(&minutes), "{minutes} minutes");
    }
}
