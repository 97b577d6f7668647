//! `POST /api/v1/backup`: a consistent copy of the store while the API runs.

use std::time::Duration;

use fleetmq_storage::{check_file, Integrity, Store, DB_FILE_NAME};
use http::{header, Method, StatusCode};

use crate::api::test_app;

#[tokio::test]
async fn a_backup_is_a_redb_file_with_the_same_devices_and_is_audited() {
    let app = test_app().await;
    for id in ["dev-1", "dev-2", "dev-3"] {
        app.provision(id).await;
    }
    let (status, headers, body) = app.send_raw(Method::POST, "/api/v1/backup").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(
        headers[header::CONTENT_LENGTH].to_str().unwrap(),
        body.len().to_string()
    );
    let tables: usize = headers["x-backup-tables"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(tables >= 30, "{tables}");

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join(DB_FILE_NAME);
    std::fs::write(&path, &body).unwrap();
    assert_eq!(check_file(&path).unwrap(), Integrity::Clean);
    let restored = Store::open(out.path()).unwrap();
    assert_eq!(restored.count_devices().unwrap(), 3);
    // The token key came along: a device's credential verifies in the copy as in the
    // original.
    let a = app.store.token_key().clone();
    let b = restored.token_key().clone();
    let cred = fleetmq_storage::secret::DeviceCredential::keyed(&a, b"tok");
    assert!(cred.verify(&b, b"tok"));
    drop(restored);

    // Nothing is left beside the live file.
    let data_dir = app.store.path().parent().unwrap().to_owned();
    let leftovers: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Audited like any state-changing request.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = app.get("/api/v1/audit").await.body;
        let found = (page["items"].as_array().unwrap().iter())
            .any(|e| e["route"] == "/api/v1/backup" && e["status"] == 200);
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
