//! Nodes and simulators as processes of the built binary, for tests that crash,
//! signal or cluster them.

use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_swiftlogistics");

/// Starts the binary and returns it with the first stdout line containing `marker`.
pub async fn start(args: &[&str], envs: &[(&str, String)], marker: &str) -> (Child, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("SWIFT__LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr_for(envs))
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Generous: the first node of a fresh bus namespace declares every queue.
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("{BIN} exited before printing {marker:?}");
    })
    .await
    .expect("startup line in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
}

/// Where a process logs: nowhere, or with `SWIFT_TEST_LOGS=<dir>` set (to debug a
/// failing test) a file there named after its node id.
fn stderr_for(envs: &[(&str, String)]) -> Stdio {
    let Ok(dir) = std::env::var("SWIFT_TEST_LOGS") else {
        return Stdio::null();
    };
    let name = envs
        .iter()
        .find(|(key, _)| *key == "SWIFT__CLUSTER__NODE_ID")
        .map_or("process", |(_, id)| id.as_str());
    let path = std::path::Path::new(&dir).join(format!("{name}-{}.log", uuid::Uuid::new_v4()));
    std::fs::File::create(path).map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The text after `label` up to the next space.
pub fn field(line: &str, label: &str) -> String {
    let start = line.find(label).map(|i| i + label.len()).expect(label);
    line[start..]
        .split_whitespace()
        .next()
        .expect("value")
        .to_owned()
}

/// `swiftlogistics simulate` on random ports, with `latency_ms` on every system so
/// that orders stay mid-journey for a while. Returns the process, its banner line
/// and the control API's URL.
pub async fn start_simulators(latency_ms: u64) -> (Child, String, String) {
    let (child, line) = start(
        &["simulate"],
        &[
            ("SWIFT__SIMULATORS__CMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__ROS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__WMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__CONTROL_BIND", "127.0.0.1:0".to_owned()),
        ],
        "Simulators running",
    )
    .await;
    let control = field(&line, "control API ");
    let http = reqwest::Client::new();
    for system in ["cms", "wms", "ros"] {
        let response = http
            .put(format!("{control}/knobs/{system}"))
            .json(&json!({"latencyMs": latency_ms}))
            .send()
            .await
            .expect("knobs");
        assert!(response.status().is_success());
    }
    (child, line, control)
}

pub struct NodeProcess {
    pub child: Child,
    pub url: String,
}

/// `swiftlogistics serve --no-simulators` pointed at the simulators of `sims` (their
/// banner line), with its own data directory and `envs` on top.
pub async fn start_node(
    data: &std::path::Path,
    sims: &str,
    envs: &[(&'static str, String)],
) -> NodeProcess {
    let mut all = vec![
        ("SWIFT__HTTP__BIND", "127.0.0.1:0".to_owned()),
        ("SWIFT__STORE__PATH", data.display().to_string()),
        ("SWIFT__CMS__URL", field(sims, "CMS SOAP ")),
        ("SWIFT__ROS__URL", field(sims, "ROS REST ")),
        ("SWIFT__WMS__ADDR", field(sims, "WMS TCP ")),
        (
            "SWIFT__AUTH__ADMIN_PASSWORD",
            super::ADMIN_PASSWORD.to_owned(),
        ),
        (
            "SWIFT__AUTH__DRIVER_PASSWORD",
            super::DRIVER_PASSWORD.to_owned(),
        ),
    ];
    all.extend(envs.iter().cloned());
    let (child, banner) = start(&["serve", "--no-simulators"], &all, "API and pages at").await;
    NodeProcess {
        child,
        url: field(&banner, "API and pages at "),
    }
}
