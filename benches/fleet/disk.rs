//! What a durable write costs on the filesystem the broker's data directory is on,
//! measured before the broker starts: a 4 KiB write + `fdatasync`, and one durable redb
//! commit of one small row through `fleetmq-storage` (the same kind of commit the
//! command engine makes per batch).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use fleetmq_storage::{RetainedMessage, Store};

use crate::report::percentile;

/// Median and p99 of each probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskCost {
    pub fsync_p50: Duration,
    pub fsync_p99: Duration,
    pub commit_p50: Duration,
    pub commit_p99: Duration,
}

/// Runs both probes `rounds` times in a temporary directory under `dir`.
pub fn probe(dir: &Path, rounds: usize) -> anyhow::Result<DiskCost> {
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::tempdir_in(dir)?;
    let mut file = std::fs::File::create(tmp.path().join("fsync.probe"))?;
    let block = [0x5au8; 4096];
    let mut fsyncs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        fsyncs.push(t.elapsed());
    }
    let store = Store::open(&tmp.path().join("data"))?;
    let mut commits = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let msg = RetainedMessage {
            topic: format!("probe/{}", i % 16),
            payload: b"{\"probe\":true}".to_vec(),
            qos: 1,
            stored_at_ms: i as u64,
            expires_at_ms: None,
            properties: Default::default(),
        };
        let t = Instant::now();
        store.put_retained(&msg)?;
        commits.push(t.elapsed());
    }
    fsyncs.sort();
    commits.sort();
    Ok(DiskCost {
        fsync_p50: percentile(&fsyncs, 0.50),
        fsync_p99: percentile(&fsyncs, 0.99),
        commit_p50: percentile(&commits, 0.50),
        commit_p99: percentile(&commits, 0.99),
    })
}
