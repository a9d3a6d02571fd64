//! Nodes and simulators as separate processes of the built binary, for tests that
//! kill things (a node, a broker) and need the rest to outlive it.

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
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
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

/// The text after `label` up to the next space.
pub fn field(line: &str, label: &str) -> String {
    let start = line.find(label).map(|i| i + label.len()).expect(label);
    line[start..]
        .split_whitespace()
        .next()
        .expect("value")
        .to_owned()
}

/// The simulators on random ports, with the line that names their addresses.
pub async fn start_simulators() -> (Child, String) {
    start(
        &["simulate"],
        &[
            ("SWIFT__SIMULATORS__CMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__ROS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__WMS_BIND", "127.0.0.1:0".to_owned()),
            ("SWIFT__SIMULATORS__CONTROL_BIND", "127.0.0.1:0".to_owned()),
        ],
        "Simulators running",
    )
    .await
}

pub struct Node {
    pub child: Child,
    pub url: String,
}

/// A node serving on a random port, calling the simulators of `sims` (their
/// banner line), with `envs` on top (the backend, bus settings).
pub async fn start_node(data: &std::path::Path, sims: &str, envs: &[(&str, String)]) -> Node {
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
    Node {
        child,
        url: field(&banner, "API and pages at "),
    }
}
