//! `swiftlogistics bench-db` against the server at `MONGODB_URI`: every phase writes
//! and reads what it claims, and the scratch database is gone afterwards. Skipped
//! without `MONGODB_URI`, except under `CI=true`, where that is a failure.

use mongodb::Client;
use swiftlogistics::bench::db::{BenchDbArgs, measure};

fn mongo_uri() -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("MONGODB_URI must be set under CI (scripts/start-mongo.sh starts a server)");
            }
            eprintln!("skipped: MONGODB_URI is not set (scripts/start-mongo.sh starts a server)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_writes_all_its_documents_and_the_scratch_database_is_dropped() {
    let Some(uri) = mongo_uri() else {
        return;
    };
    let database = format!("bench{}", uuid::Uuid::new_v4().simple());
    let args = BenchDbArgs {
        uri: uri.clone(),
        database: database.clone(),
        documents: 100,
        concurrency: 4,
        batch: 16,
        json: false,
    };
    let phases = measure(&args).await.expect("the bench runs");

    let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "insert_one",
            "update_one (compare-and-set)",
            "find_one by orderId",
            "insert_many",
            "update command, compare-and-set",
        ]
    );
    for phase in &phases {
        assert_eq!(phase.documents, 100, "{phase:?}");
        assert!(phase.documents_per_second > 0.0, "{phase:?}");
        let calls = 100_u64.div_ceil(phase.documents_per_call);
        assert_eq!(phase.call_latency.count, calls, "{phase:?}");
    }

    let client = Client::with_uri_str(&uri).await.expect("connect");
    let left = client.list_database_names().await.expect("list databases");
    assert!(!left.contains(&database), "{database} is still there");
}
