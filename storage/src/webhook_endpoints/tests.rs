//! Golden bytes, round trips and the table operations.

use super::*;
use crate::test_support::{hex, temp_store, unhex};
use proptest::prelude::*;

fn endpoint(id: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.into(),
        url: "http://h/x".into(),
        secret: "s3".into(),
        events: Some(vec!["device.*".into()]),
        enabled: true,
        created_at_ms: 1_000,
    }
}

// Golden bytes: if this fails, the file format changed. Add a `V2` instead of
// editing `V1`.
const ENDPOINT_V1: &str = concat!(
    "00",                     // V1
    "0a687474703a2f2f682f78", // url "http://h/x"
    "027333",                 // secret "s3"
    "0101086465766963652e2a", // Some(["device.*"])
    "01",                     // enabled
    "e807",                   // created_at_ms 1000
);

#[test]
fn golden_bytes() {
    let bytes = encode_endpoint(&endpoint("wh-1")).unwrap();
    assert_eq!(hex(&bytes), ENDPOINT_V1);
    assert_eq!(
        decode_endpoint("wh-1", &unhex(ENDPOINT_V1)).unwrap(),
        endpoint("wh-1")
    );
}

#[test]
fn corrupt_bytes_are_reported_not_panicked() {
    let mut bytes = unhex(ENDPOINT_V1);
    bytes.push(0);
    let err = decode_endpoint("wh-1", &bytes).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let err = decode_endpoint("wh-1", &[7]).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn debug_hides_the_secret() {
    let shown = format!("{:?}", endpoint("wh-1"));
    assert!(!shown.contains("s3"), "{shown}");
}

#[test]
fn create_update_list_delete() {
    let (_dir, store) = temp_store();
    store.create_webhook_endpoint(&endpoint("wh-b")).unwrap();
    store.create_webhook_endpoint(&endpoint("wh-a")).unwrap();
    assert!(matches!(
        store.create_webhook_endpoint(&endpoint("wh-a")),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create_webhook_endpoint(&endpoint("")),
        Err(StoreError::Invalid(_))
    ));
    let mut changed = endpoint("wh-a");
    changed.enabled = false;
    changed.events = None;
    store.update_webhook_endpoint(&changed).unwrap();
    assert!(matches!(
        store.update_webhook_endpoint(&endpoint("nope")),
        Err(StoreError::NotFound { .. })
    ));
    let all = store.list_webhook_endpoints().unwrap();
    assert_eq!(all, vec![changed.clone(), endpoint("wh-b")]);
    assert_eq!(
        store.get_webhook_endpoint("wh-a").unwrap(),
        Some(changed.clone())
    );
    assert_eq!(store.delete_webhook_endpoint("wh-a").unwrap(), changed);
    assert!(matches!(
        store.delete_webhook_endpoint("wh-a"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_webhook_endpoint("wh-a").unwrap(), None);
}

proptest! {
    #[test]
    fn roundtrip(
        url in ".{0,64}",
        secret in ".{0,32}",
        events in proptest::option::of(proptest::collection::vec(".{0,16}", 0..4)),
        enabled in any::<bool>(),
        created_at_ms in any::<u64>(),
    ) {
        let e = WebhookEndpoint { id: "wh-1".into(), url, secret, events, enabled, created_at_ms };
        let bytes = encode_endpoint(&e).unwrap();
        prop_assert_eq!(decode_endpoint("wh-1", &bytes).unwrap(), e);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_endpoint("wh-1", &bytes);
    }
}
