//! Named API keys against a real store: golden bytes, names, the last-admin rule.

use super::*;
use crate::test_support::{cheap_hash, hex, temp_store, unhex};

fn key(name: &str, role: ApiRole) -> ApiKeyRecord {
    ApiKeyRecord {
        name: name.into(),
        role,
        hash: TokenHash { tag: [0x22; 32] },
        created_at_ms: 42,
    }
}

// Golden bytes: if this fails, the file format changed. Add a version instead.
const API_KEY_V1: &str = concat!(
    "00",       // V1
    "036f7073", // name "ops"
    "02",       // Admin
    "2222222222222222222222222222222222222222222222222222222222222222",
    "2a", // created_at_ms 42
);

#[test]
fn golden_bytes() {
    let rec = key("ops", ApiRole::Admin);
    assert_eq!(hex(&encode(at("ops"), &rec).unwrap()), API_KEY_V1);
    assert_eq!(decode(at("ops"), &unhex(API_KEY_V1)).unwrap(), rec);
    for (role, byte) in [(ApiRole::Viewer, "00"), (ApiRole::Operator, "01")] {
        let bytes = hex(&encode(at("ops"), &key("ops", role)).unwrap());
        assert_eq!(&bytes[10..12], byte);
    }
}

#[test]
fn bad_bytes_are_corrupt() {
    let golden = unhex(API_KEY_V1);
    // Stored under another name, unknown version, unknown role, truncated, trailing.
    let mut unknown_role = golden.clone();
    unknown_role[5] = 3;
    let mut trailing = golden.clone();
    trailing.push(0);
    let mut v2 = golden.clone();
    v2[0] = 1;
    for (key, bytes) in [
        ("other", golden.clone()),
        ("ops", v2),
        ("ops", unknown_role),
        ("ops", golden[..golden.len() - 1].to_vec()),
        ("ops", trailing),
    ] {
        let err = decode(at(key), &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    table: "api_keys",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn names() {
    for ok in ["a", "ops-1", "CI_bot.2", &"x".repeat(64)] {
        assert!(valid_api_key_name(ok), "{ok}");
    }
    for bad in ["", "a b", "a/b", "é", "a:b", &"x".repeat(65)] {
        assert!(!valid_api_key_name(bad), "{bad}");
    }
}

#[test]
fn create_list_delete() {
    let (_dir, store) = temp_store();
    store.set_admin_key_hash(&cheap_hash("builtin")).unwrap();
    store.create_api_key(&key("zeta", ApiRole::Viewer)).unwrap();
    store.create_api_key(&key("alpha", ApiRole::Admin)).unwrap();
    let err = store
        .create_api_key(&key("alpha", ApiRole::Viewer))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                kind: "API key",
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .create_api_key(&key("a b", ApiRole::Viewer))
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let names: Vec<_> = store
        .list_api_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);

    assert_eq!(store.delete_api_key("zeta").unwrap().role, ApiRole::Viewer);
    assert!(matches!(
        store.delete_api_key("zeta"),
        Err(DeleteKeyError::NotFound(n)) if n == "zeta"
    ));
    // The built-in key is another admin, so `alpha` may go.
    store.delete_api_key("alpha").unwrap();
    assert!(store.list_api_keys().unwrap().is_empty());
}

#[test]
fn the_last_admin_key_stays() {
    let (_dir, store) = temp_store();
    store.set_admin_key_hash(&cheap_hash("builtin")).unwrap();
    // The built-in key alone: it cannot be revoked.
    assert!(matches!(
        store.revoke_admin_key("admin"),
        Err(DeleteKeyError::LastAdmin(_))
    ));
    store.create_api_key(&key("ops", ApiRole::Admin)).unwrap();
    store
        .create_api_key(&key("viewer", ApiRole::Viewer))
        .unwrap();
    store.revoke_admin_key("admin").unwrap();
    assert!(store.admin_key_hash().unwrap().is_none());
    assert!(store.admin_key_revoked().unwrap());
    assert!(matches!(
        store.revoke_admin_key("admin"),
        Err(DeleteKeyError::NotFound(_))
    ));
    // Now `ops` is the last admin; a viewer does not count.
    assert!(matches!(
        store.delete_api_key("ops"),
        Err(DeleteKeyError::LastAdmin(n)) if n == "ops"
    ));
    store.delete_api_key("viewer").unwrap();
    assert_eq!(store.list_api_keys().unwrap().len(), 1);
    // A configured key comes back and un-revokes.
    store.set_admin_key_hash(&cheap_hash("configured")).unwrap();
    assert!(!store.admin_key_revoked().unwrap());
    store.delete_api_key("ops").unwrap();
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rec = key("ops", ApiRole::Operator);
    Store::open(dir.path())
        .unwrap()
        .create_api_key(&rec)
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list_api_keys().unwrap(), [rec]);
}
