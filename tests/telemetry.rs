//! Supervision telemetry as an SRE uses it: the restart history, mailbox figures,
//! one order's actor and the Prometheus exposition.

mod common;

use common::{TestApp, periodic_check, spawn_app};
use serde_json::Value;
use std::time::Duration;
use swiftlogistics::domain::System;

const WAIT: Duration = Duration::from_secs(15);

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_adapter_crash_is_in_the_restart_history_with_its_reason() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (client, _) = app.register_client().await;
    let (status, _) = get(&app, &client, "/api/telemetry/events").await;
    assert_eq!(status, 403, "only admins read the history");

    let (_, started) = get(&app, &admin, "/api/telemetry/events?kind=started").await;
    let names: Vec<_> = started["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap().to_owned())
        .collect();
    for actor in ["root", "adapters", "adapter-wms", "orders", "notifier"] {
        assert!(names.iter().any(|n| n == actor), "{actor} in {started}");
    }

    assert!(app.runtime.control().crash_adapter(System::Wms));
    let path = "/api/telemetry/events?actor=adapter-wms";
    let restarted = periodic_check(
        || async {
            kinds(&get(&app, &admin, path).await.1)
                .first()
                .map(String::as_str)
                == Some("restarted")
        },
        WAIT,
    )
    .await;
    let (_, page) = get(&app, &admin, path).await;
    assert!(restarted, "{page}");
    assert_eq!(
        kinds(&page),
        ["restarted", "restarting", "failed", "started"]
    );
    let failed = &page["events"][2];
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("fault injected into the wms adapter"),
        "the panic message is the reason: {failed}"
    );
    assert!(!failed["node"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed["at"].as_str().is_some(), "{failed}");

    let (_, only_failures) = get(
        &app,
        &admin,
        "/api/telemetry/events?actor=adapter&kind=failed",
    )
    .await;
    assert_eq!(kinds(&only_failures), ["failed"]);

    let (_, first) = get(&app, &admin, &format!("{path}&limit=2")).await;
    assert_eq!(kinds(&first), ["restarted", "restarting"]);
    let before = first["nextBefore"].as_u64().expect("a next page");
    let (_, second) = get(&app, &admin, &format!("{path}&limit=2&before={before}")).await;
    assert_eq!(kinds(&second), ["failed", "started"]);
    assert!(second.get("nextBefore").is_none(), "{second}");

    let (status, _) = get(&app, &admin, "/api/telemetry/events?kind=exploded").await;
    assert_eq!(status, 400);
    app.runtime.shutdown().await;
}
