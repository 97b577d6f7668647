//! The `stats_history` table: the samples behind the dashboard overview's trend
//! (`GET /api/v1/stats/history`, web `history`), so the last hours survive a restart.
//! One row a sample (a minute apart), bounded by count: each write also drops the
//! oldest rows past the bound, so the table never grows.

use redb::ReadableTableMetadata as _;

use crate::error::StoreError;
use crate::schema::{STATS_HISTORY, STATS_HISTORY_TABLE};
use crate::store::Store;

/// The broker's message and connection counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSample {
    /// Unix ms (the row's key).
    pub at_ms: u64,
    /// PUBLISH packets received since the broker started.
    pub received: u64,
    /// PUBLISH packets sent since the broker started.
    pub sent: u64,
    pub connections: u64,
    pub devices: u64,
}

/// The encoding's version byte.
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 4 * 8;

fn encode(s: &StatsSample) -> [u8; ENCODED_LEN] {
    let mut out = [0u8; ENCODED_LEN];
    out[0] = VERSION;
    for (i, v) in [s.received, s.sent, s.connections, s.devices]
        .into_iter()
        .enumerate()
    {
        out[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode(at_ms: u64, bytes: &[u8]) -> Result<StatsSample, StoreError> {
    if bytes.len() != ENCODED_LEN || bytes[0] != VERSION {
        return Err(StoreError::Corrupt {
            table: STATS_HISTORY_TABLE,
            key: at_ms.to_string(),
            reason: format!("expected {ENCODED_LEN} bytes of version {VERSION}"),
        });
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[1 + i * 8..9 + i * 8]);
        u64::from_le_bytes(b)
    };
    Ok(StatsSample {
        at_ms,
        received: word(0),
        sent: word(1),
        connections: word(2),
        devices: word(3),
    })
}

impl Store {
    /// Stores a sample and drops the oldest beyond `keep` (one small transaction).
    pub fn record_stats_sample(&self, sample: StatsSample, keep: usize) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(STATS_HISTORY)?;
            table.insert(sample.at_ms, encode(&sample).as_slice())?;
            while table.len()? > keep as u64 {
                table.pop_first()?;
            }
            Ok(())
        })
    }

    /// The stored samples taken at or after `since_ms`, oldest first.
    pub fn stats_samples(&self, since_ms: u64) -> Result<Vec<StatsSample>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(STATS_HISTORY)?;
            let mut out = Vec::new();
            for entry in table.range(since_ms..)? {
                let (at, value) = entry?;
                out.push(decode(at.value(), value.value())?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    fn sample(at_ms: u64) -> StatsSample {
        StatsSample {
            at_ms,
            received: at_ms * 2,
            sent: u64::MAX - at_ms,
            connections: 3,
            devices: 1,
        }
    }

    #[test]
    fn samples_are_kept_bounded_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for at in 1..=10 {
                store.record_stats_sample(sample(at * 1000), 4).unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.stats_samples(0).unwrap();
        let at: Vec<u64> = all.iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [7000, 8000, 9000, 10_000]);
        assert_eq!(all[0], sample(7000));
        let recent = store.stats_samples(8500).unwrap();
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn a_damaged_row_is_reported() {
        let (_dir, store) = temp_store();
        store
            .write(|txn| {
                txn.open_table(STATS_HISTORY)?
                    .insert(5, [9u8, 1].as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.stats_samples(0),
            Err(StoreError::Corrupt {
                table: "stats_history",
                ..
            })
        ));
    }
}
