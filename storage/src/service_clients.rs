//! The `service_clients` table: client name → versioned [`ServiceClientRecord`].

use redb::{ReadableTable, WriteTransaction};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::ServiceClientRecord;
use crate::schema::{DEVICES, SERVICE_CLIENTS, SERVICE_CLIENTS_TABLE as TABLE};
use crate::store::Store;

const KIND: &str = "service client";

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

impl Store {
    /// Stores a new service client.
    ///
    /// [`StoreError::Conflict`] if the name is taken by a service client or a
    /// device id (both are MQTT usernames); [`StoreError::Invalid`] if the
    /// name is empty.
    pub fn create_service_client(&self, rec: ServiceClientRecord) -> Result<(), StoreError> {
        if rec.name.is_empty() {
            return Err(StoreError::Invalid(
                "a service client name must not be empty".into(),
            ));
        }
        self.write(|txn| {
            let key = rec.name.as_str();
            // Device ids are MQTT usernames too (`devices` checks the other way round
            // with `ensure_name_free`).
            if txn.open_table(DEVICES)?.get(key)?.is_some() {
                return Err(StoreError::Conflict {
                    kind: "device",
                    key: key.to_owned(),
                });
            }
            let mut table = txn.open_table(SERVICE_CLIENTS)?;
            if table.get(key)?.is_some() {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    key: key.to_owned(),
                });
            }
            table.insert(key, codec::encode_service_client(at(key), &rec)?.as_slice())?;
            Ok(())
        })
    }

    /// The service client with this name, if any.
    pub fn get_service_client(
        &self,
        name: &str,
    ) -> Result<Option<ServiceClientRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SERVICE_CLIENTS)?;
            match table.get(name)? {
                Some(v) => Ok(Some(codec::decode_service_client(at(name), v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// All service clients, ordered by name.
    pub fn list_service_clients(&self) -> Result<Vec<ServiceClientRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SERVICE_CLIENTS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.push(codec::decode_service_client(at(k.value()), v.value())?);
            }
            Ok(out)
        })
    }

    /// Changes a service client's rules and/or credential (`None`: kept); the record
    /// as stored. [`StoreError::NotFound`] if absent.
    pub fn update_service_client(
        &self,
        name: &str,
        rules: Option<Vec<crate::model::AclRule>>,
        credential: Option<crate::secret::CredentialHash>,
    ) -> Result<ServiceClientRecord, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(SERVICE_CLIENTS)?;
            let mut rec = match table.get(name)? {
                Some(v) => codec::decode_service_client(at(name), v.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: KIND,
                        key: name.to_owned(),
                    })
                }
            };
            if let Some(rules) = rules {
                rec.rules = rules;
            }
            if let Some(credential) = credential {
                rec.credential = credential;
            }
            table.insert(
                name,
                codec::encode_service_client(at(name), &rec)?.as_slice(),
            )?;
            Ok(rec)
        })
    }

    /// Removes a service client. [`StoreError::NotFound`] if absent.
    pub fn delete_service_client(&self, name: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(SERVICE_CLIENTS)?;
            let existed = table.remove(name)?.is_some();
            if existed {
                Ok(())
            } else {
                Err(StoreError::NotFound {
                    kind: KIND,
                    key: name.to_owned(),
                })
            }
        })
    }
}

/// [`StoreError::Conflict`] if a service client already uses `name` as its
/// MQTT username.
pub(crate) fn ensure_name_free(txn: &WriteTransaction, name: &str) -> Result<(), StoreError> {
    if txn.open_table(SERVICE_CLIENTS)?.get(name)?.is_some() {
        return Err(StoreError::Conflict {
            kind: KIND,
            key: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AclAction, AclRule};
    use crate::store::Store;
    use crate::test_support::{cheap_hash, new_device, temp_store};

    fn client(name: &str) -> ServiceClientRecord {
        ServiceClientRecord {
            name: name.into(),
            credential: cheap_hash("pw"),
            rules: vec![
                AclRule {
                    action: AclAction::Subscribe,
                    topic: "device/+/telemetry".into(),
                    allow: true,
                },
                AclRule {
                    action: AclAction::Publish,
                    topic: "%c/out".into(),
                    allow: false,
                },
            ],
            created_at_ms: 42,
        }
    }

    #[test]
    fn crud() {
        let (_dir, store) = temp_store();
        let alpha = client("alpha");
        store.create_service_client(client("zeta")).unwrap();
        store.create_service_client(alpha.clone()).unwrap();
        assert_eq!(store.get_service_client("alpha").unwrap(), Some(alpha));
        assert_eq!(store.get_service_client("nope").unwrap(), None);

        let err = store.create_service_client(client("alpha")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { kind: "service client", key } if key == "alpha"),
            "{err:?}"
        );

        let names: Vec<String> = store
            .list_service_clients()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["alpha", "zeta"]);

        store.delete_service_client("alpha").unwrap();
        assert_eq!(store.get_service_client("alpha").unwrap(), None);
        let err = store.delete_service_client("alpha").unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { kind: "service client", key } if key == "alpha"),
            "{err:?}"
        );
        assert_eq!(store.list_service_clients().unwrap().len(), 1);
    }

    #[test]
    fn update_changes_rules_and_credential() {
        let (_dir, store) = temp_store();
        store.create_service_client(client("svc")).unwrap();
        let rules = vec![AclRule {
            action: AclAction::All,
            topic: "#".into(),
            allow: true,
        }];
        let got = store
            .update_service_client("svc", Some(rules.clone()), None)
            .unwrap();
        assert_eq!(got.rules, rules);
        assert!(got.credential.verify(b"pw"));
        let got = store
            .update_service_client("svc", None, Some(cheap_hash("new")))
            .unwrap();
        assert_eq!(got.rules, rules);
        let stored = store.get_service_client("svc").unwrap().unwrap();
        assert!(stored.credential.verify(b"new") && !stored.credential.verify(b"pw"));
        assert_eq!(stored.created_at_ms, 42);
        let err = store.update_service_client("nope", None, None).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn name_must_not_be_empty_or_a_device() {
        let (_dir, store) = temp_store();
        assert!(matches!(
            store.create_service_client(client("")),
            Err(StoreError::Invalid(_))
        ));
        store.create_device(new_device("dev")).unwrap();
        let err = store.create_service_client(client("dev")).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { kind: "device", .. }),
            "{err:?}"
        );
        assert!(store.list_service_clients().unwrap().is_empty());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let svc = client("svc");
        Store::open(dir.path())
            .unwrap()
            .create_service_client(svc.clone())
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let got = store.get_service_client("svc").unwrap().unwrap();
        assert_eq!(got, svc);
        assert!(got.credential.verify(b"pw"));
    }

    #[test]
    fn corrupt_record_is_reported() {
        let (_dir, store) = temp_store();
        store
            .write(|txn| {
                txn.open_table(SERVICE_CLIENTS)?
                    .insert("x", [0x00u8].as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.get_service_client("x"),
            Err(StoreError::Corrupt {
                table: "service_clients",
                ..
            })
        ));
        assert!(store.list_service_clients().is_err());
        // Deleting does not need to decode.
        store.delete_service_client("x").unwrap();
    }
}
