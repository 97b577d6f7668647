//! The `retained` table: topic → versioned [`RetainedMessage`].

use redb::ReadableTable;

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::RetainedMessage;
use crate::schema::{RETAINED, RETAINED_TABLE as TABLE};
use crate::store::Store;

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

impl Store {
    /// Stores (or replaces) the retained message of `msg.topic`, committed
    /// durably before returning. Clearing a retained message (an empty
    /// payload in MQTT) is [`Store::delete_retained`]'s job; this stores what
    /// it is given. [`StoreError::Invalid`] if `qos` is not 0, 1 or 2.
    pub fn put_retained(&self, msg: &RetainedMessage) -> Result<(), StoreError> {
        if msg.qos > 2 {
            return Err(StoreError::Invalid(format!(
                "qos {} is not 0, 1 or 2",
                msg.qos
            )));
        }
        self.write(|txn| {
            let mut table = txn.open_table(RETAINED)?;
            let key = msg.topic.as_str();
            table.insert(key, codec::encode_retained(at(key), msg)?.as_slice())?;
            Ok(())
        })
    }

    /// Removes the retained message of `topic`; whether there was one.
    pub fn delete_retained(&self, topic: &str) -> Result<bool, StoreError> {
        self.write(|txn| Ok(txn.open_table(RETAINED)?.remove(topic)?.is_some()))
    }

    /// The retained message of `topic`, if any.
    pub fn get_retained(&self, topic: &str) -> Result<Option<RetainedMessage>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(RETAINED)?;
            match table.get(topic)? {
                Some(v) => Ok(Some(codec::decode_retained(at(topic), v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every retained message, ordered by topic.
    ///
    /// The broker restores these at start-up, so one undecodable record must
    /// not keep it from starting: such records are skipped and logged at
    /// error level instead of failing the whole list.
    pub fn list_retained(&self) -> Result<Vec<RetainedMessage>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(RETAINED)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                match codec::decode_retained(at(k.value()), v.value()) {
                    Ok(msg) => out.push(msg),
                    Err(error) => tracing::error!(%error, "skipping corrupt retained message"),
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageProperties;
    use crate::store::Store;
    use crate::test_support::temp_store;

    fn msg(topic: &str, payload: &[u8]) -> RetainedMessage {
        RetainedMessage {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 1,
            stored_at_ms: 7,
            expires_at_ms: None,
            properties: MessageProperties::default(),
        }
    }

    #[test]
    fn put_get_replace_delete() {
        let (_dir, store) = temp_store();
        assert_eq!(store.get_retained("a/b").unwrap(), None);
        store.put_retained(&msg("a/b", b"one")).unwrap();
        assert_eq!(store.get_retained("a/b").unwrap(), Some(msg("a/b", b"one")));
        store.put_retained(&msg("a/b", b"two")).unwrap();
        assert_eq!(store.get_retained("a/b").unwrap(), Some(msg("a/b", b"two")));
        assert!(store.delete_retained("a/b").unwrap());
        assert!(!store.delete_retained("a/b").unwrap());
        assert_eq!(store.get_retained("a/b").unwrap(), None);
    }

    #[test]
    fn list_is_ordered_by_topic() {
        let (_dir, store) = temp_store();
        store.put_retained(&msg("device/b/status", b"{}")).unwrap();
        store.put_retained(&msg("device/a/config", b"")).unwrap();
        store.put_retained(&msg("$SYS/x", &[0, 1, 2])).unwrap();
        let topics: Vec<String> = store
            .list_retained()
            .unwrap()
            .into_iter()
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["$SYS/x", "device/a/config", "device/b/status"]);
    }

    #[test]
    fn rejects_bad_qos() {
        let (_dir, store) = temp_store();
        let mut m = msg("t", b"x");
        m.qos = 3;
        assert!(matches!(
            store.put_retained(&m),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.get_retained("t").unwrap(), None);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0xa5u8; 256 * 1024];
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_retained(&msg("big", &big)).unwrap();
            store.put_retained(&msg("small", b"s")).unwrap();
            store.delete_retained("small").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_retained().unwrap(), vec![msg("big", &big)]);
    }

    #[test]
    fn list_skips_corrupt_records() {
        let (_dir, store) = temp_store();
        store.put_retained(&msg("ok", b"1")).unwrap();
        store
            .write(|txn| {
                txn.open_table(RETAINED)?
                    .insert("bad", [9u8, 9, 9].as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.get_retained("bad"),
            Err(StoreError::Corrupt {
                table: "retained",
                ..
            })
        ));
        assert_eq!(store.list_retained().unwrap(), vec![msg("ok", b"1")]);
        assert!(store.delete_retained("bad").unwrap());
    }
}
