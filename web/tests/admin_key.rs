//! `ensure_admin_key` against a real store in a temporary data directory.

use std::path::Path;

use fleetmq_storage::Store;
use fleetmq_web::{ensure_admin_key, ADMIN_KEY_FILE};

async fn open_store(dir: &Path) -> Store {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .unwrap()
        .unwrap()
}

async fn stored_hash_verifies(store: &Store, key: &str) -> bool {
    let key = key.to_owned();
    store
        .call(move |s| s.admin_key_hash())
        .await
        .unwrap()
        .is_some_and(|hash| hash.verify(key.as_bytes()))
}

#[tokio::test]
async fn first_start_generates_a_key_file_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;

    let admin_key = ensure_admin_key(&store, dir.path(), None).await.unwrap();

    let path = dir.path().join(ADMIN_KEY_FILE);
    let contents = std::fs::read_to_string(&path).unwrap();
    let key = contents.trim_end();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    assert!(admin_key.verify(key).await);
    assert!(!admin_key.verify("0".repeat(64).as_str()).await);
    assert!(stored_hash_verifies(&store, key).await);
    assert!(!dir.path().join(format!("{ADMIN_KEY_FILE}.tmp")).exists());
}

#[tokio::test]
async fn later_starts_reuse_the_stored_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    ensure_admin_key(&store, dir.path(), None).await.unwrap();
    let path = dir.path().join(ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&path)
        .unwrap()
        .trim_end()
        .to_owned();

    let again = ensure_admin_key(&store, dir.path(), None).await.unwrap();

    assert_eq!(std::fs::read_to_string(&path).unwrap().trim_end(), key);
    assert!(!again.verify("not-the-key").await, "slow path rejects");
    assert!(again.verify(&key).await, "slow path accepts");
    assert!(again.verify(&key).await, "cached path accepts");
    assert!(!again.verify("not-the-key").await, "cached path rejects");
}

#[tokio::test]
async fn a_configured_key_wins_and_replaces_the_stored_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    ensure_admin_key(&store, dir.path(), None).await.unwrap();
    let generated = std::fs::read_to_string(dir.path().join(ADMIN_KEY_FILE)).unwrap();
    let generated = generated.trim_end();

    let configured = "configured-admin-key-0123456789";
    let admin_key = ensure_admin_key(&store, dir.path(), Some(configured))
        .await
        .unwrap();

    assert!(admin_key.verify(configured).await);
    assert!(!admin_key.verify(generated).await);
    assert!(stored_hash_verifies(&store, configured).await);
    assert!(!stored_hash_verifies(&store, generated).await);
}

#[tokio::test]
async fn a_configured_key_writes_no_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let configured = "configured-admin-key-0123456789";
    ensure_admin_key(&store, dir.path(), Some(configured))
        .await
        .unwrap();
    assert!(!dir.path().join(ADMIN_KEY_FILE).exists());
    assert!(stored_hash_verifies(&store, configured).await);
}
