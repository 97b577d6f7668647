//! Golden bytes, round trips and the table operations.

use super::*;
use crate::test_support::{hex, temp_store, unhex};

fn job(id: &str, target_count: u32) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        name: "fw".into(),
        status: JobStatus::Running,
        created_at_ms: 1_000,
        finished_at_ms: None,
        target_count,
        created: 0,
        settled: false,
        spec_json: "{}".into(),
    }
}

fn devices(n: usize) -> Vec<DeviceId> {
    (0..n).map(|i| format!("d-{i}").parse().unwrap()).collect()
}

// Golden bytes: if this fails, the file format changed. Add a `V2` instead of
// editing `V1`.
const JOB_V1: &str = concat!(
    "00",     // V1
    "026677", // name "fw"
    "00",     // status running
    "e807",   // created_at_ms 1000
    "00",     // finished_at_ms None
    "03",     // target_count 3
    "00",     // created 0
    "00",     // settled false
    "027b7d", // spec_json "{}"
);

#[test]
fn golden_bytes() {
    let bytes = encode_job(&job("j-1", 3)).unwrap();
    assert_eq!(hex(&bytes), JOB_V1);
    assert_eq!(decode_job("j-1", &unhex(JOB_V1)).unwrap(), job("j-1", 3));
}

#[test]
fn corrupt_bytes_are_reported_not_panicked() {
    let mut bytes = unhex(JOB_V1);
    bytes[4] = 9; // status 9
    let err = decode_job("j-1", &bytes).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let err = decode_job("j-1", &[7]).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn create_list_get_and_conflict() {
    let (_dir, store) = temp_store();
    store.create_job(&job("j-a", 2), &devices(2)).unwrap();
    let mut newer = job("j-b", 1);
    newer.created_at_ms = 2_000;
    store.create_job(&newer, &devices(1)).unwrap();
    let err = store.create_job(&job("j-a", 2), &devices(2)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let err = store.create_job(&job("j-c", 2), &devices(1)).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let ids: Vec<_> = store
        .list_jobs()
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids, ["j-b", "j-a"]);
    assert_eq!(store.get_job("j-a").unwrap(), Some(job("j-a", 2)));
    assert_eq!(store.get_job("nope").unwrap(), None);
}

#[test]
fn progress_is_recorded_in_order_and_replays_are_ignored() {
    let (_dir, store) = temp_store();
    store.create_job(&job("j", 3), &devices(3)).unwrap();
    let rec = store
        .record_job_commands("j", 0, &["c0".into(), "c1".into()])
        .unwrap();
    assert_eq!(rec.created, 2);
    // A replay of index 1 (after a crash) plus the next one.
    let rec = store
        .record_job_commands("j", 1, &["other".into(), String::new()])
        .unwrap();
    assert_eq!(rec.created, 3);
    let targets = store.job_targets("j", 0, 10).unwrap();
    let got: Vec<_> = targets
        .iter()
        .map(|t| (t.index, t.device_id.as_str(), t.command_id.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (0, "d-0", Some("c0")),
            (1, "d-1", Some("c1")),
            (2, "d-2", Some(""))
        ]
    );
    assert_eq!(store.job_targets("j", 2, 10).unwrap().len(), 1);
    // Past the end, and a gap.
    let err = store
        .record_job_commands("j", 3, &["x".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    store.create_job(&job("k", 3), &devices(3)).unwrap();
    let err = store
        .record_job_commands("k", 1, &["x".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

#[test]
fn status_updates_keep_progress() {
    let (_dir, store) = temp_store();
    store.create_job(&job("j", 2), &devices(2)).unwrap();
    store.record_job_commands("j", 0, &["c0".into()]).unwrap();
    let mut changed = job("j", 2);
    changed.status = JobStatus::Aborted;
    changed.finished_at_ms = Some(5);
    changed.settled = true;
    let stored = store.update_job_status(&changed).unwrap();
    assert_eq!(stored.created, 1);
    assert_eq!(stored.status, JobStatus::Aborted);
    assert_eq!(store.get_job("j").unwrap().unwrap(), stored);
    let err = store.update_job_status(&job("nope", 0)).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}
