//! Golden-byte, corruption and round-trip tests for the on-disk formats.

use super::*;
use proptest::prelude::*;

use crate::test_support::{hex, unhex};

fn loc(key: &str) -> Location<'_> {
    Location { table: "test", key }
}

fn credential() -> CredentialHash {
    CredentialHash {
        iterations: 100_000,
        salt: [0x11; 16],
        hash: [0x22; 32],
    }
}

fn device() -> DeviceRecord {
    DeviceRecord {
        id: "dev-1".parse().unwrap(),
        plugin: "json".into(),
        labels: BTreeMap::from([("site".to_owned(), "a".to_owned())]),
        encrypted: true,
        credential: DeviceCredential::Legacy(credential()),
        keys: vec![
            DeviceKey {
                generation: 1,
                key: [0x33; 32],
                created_at_ms: 1_000,
                superseded_at_ms: Some(2_000),
            },
            DeviceKey {
                generation: 2,
                key: [0x44; 32],
                created_at_ms: 2_000,
                superseded_at_ms: None,
            },
        ],
        created_at_ms: 1_000,
    }
}

fn service_client() -> ServiceClientRecord {
    ServiceClientRecord {
        name: "svc".into(),
        credential: credential(),
        rules: vec![
            AclRule {
                action: AclAction::Subscribe,
                topic: "device/+/telemetry".into(),
                allow: true,
            },
            AclRule {
                action: AclAction::All,
                topic: "#".into(),
                allow: false,
            },
        ],
        created_at_ms: 42,
    }
}

fn retained() -> RetainedMessage {
    RetainedMessage {
        topic: "a/b".into(),
        payload: vec![0, 1, 2, 0xff],
        qos: 1,
        stored_at_ms: 1_000,
        expires_at_ms: None,
        properties: MessageProperties::default(),
    }
}

// Golden bytes: if one of these fails, the file format changed. Add a new
// version variant instead of editing V1.
const DEVICE_V1: &str = concat!(
    "00",
    "056465762d31",
    "046a736f6e",
    "0104736974650161",
    "01",
    "a08d06111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222",
    "02",
    "013333333333333333333333333333333333333333333333333333333333333333e80701d00f",
    "024444444444444444444444444444444444444444444444444444444444444444d00f00",
    "e807",
);
/// [`DEVICE_V1`] as V2 writes it: version 1, and the credential tagged 0 (PBKDF2).
const DEVICE_V2_LEGACY: &str = concat!(
    "01",
    "056465762d31",
    "046a736f6e",
    "0104736974650161",
    "01",
    "00a08d06111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222",
    "02",
    "013333333333333333333333333333333333333333333333333333333333333333e80701d00f",
    "024444444444444444444444444444444444444444444444444444444444444444d00f00",
    "e807",
);
/// The same device with a keyed hash: the credential tagged 1, then the 32-byte tag.
const DEVICE_V2_KEYED: &str = concat!(
    "01",
    "056465762d31",
    "046a736f6e",
    "0104736974650161",
    "01",
    "015555555555555555555555555555555555555555555555555555555555555555",
    "02",
    "013333333333333333333333333333333333333333333333333333333333333333e80701d00f",
    "024444444444444444444444444444444444444444444444444444444444444444d00f00",
    "e807",
);
const TOKEN_KEY_V1: &str = "006666666666666666666666666666666666666666666666666666666666666666";
const SERVICE_CLIENT_V1: &str = concat!(
    "00",
    "03737663",
    "a08d06111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222",
    "02",
    "01126465766963652f2b2f74656c656d6574727901",
    "02012300",
    "2a",
);
const RETAINED_V1: &str = concat!("00", "03612f62", "04000102ff", "01", "e807",);
const RETAINED_V2: &str = concat!("01", "03612f62", "04000102ff", "01", "e807", "01", "d00f");
const RETAINED_V3: &str = concat!(
    "02",
    "03612f62",
    "04000102ff",
    "01",
    "e807",
    "01d00f",
    "0101",
    "010474657874",
    "010172",
    "0101c0",
    "02016b01760161016b"
);
const CREDENTIAL_V1: &str = concat!(
    "00",
    "a08d06111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222",
);

#[test]
fn device_golden_bytes() {
    // V1 records (written before keyed hashes) still read, as legacy credentials.
    assert_eq!(
        decode_device(loc("dev-1"), &unhex(DEVICE_V1)).unwrap(),
        device()
    );
    // Re-encoded, they become V2 with the same PBKDF2 hash.
    let bytes = encode_device(loc("dev-1"), &device()).unwrap();
    assert_eq!(hex(&bytes), DEVICE_V2_LEGACY);
    assert_eq!(decode_device(loc("dev-1"), &bytes).unwrap(), device());
    let keyed = DeviceRecord {
        credential: DeviceCredential::Keyed(TokenHash { tag: [0x55; 32] }),
        ..device()
    };
    let bytes = encode_device(loc("dev-1"), &keyed).unwrap();
    assert_eq!(hex(&bytes), DEVICE_V2_KEYED);
    assert_eq!(decode_device(loc("dev-1"), &bytes).unwrap(), keyed);
    // A V2 PBKDF2 credential is checked like a V1 one.
    let zero = unhex(&DEVICE_V2_LEGACY.replacen("00a08d06", "0000", 1));
    assert_corrupt(decode_device(loc("dev-1"), &zero), "iterations");
}

#[test]
fn token_key_golden_bytes() {
    let bytes = encode_token_key(loc("k"), &[0x66; 32]).unwrap();
    assert_eq!(hex(&bytes), TOKEN_KEY_V1);
    assert_eq!(
        decode_token_key(loc("k"), &unhex(TOKEN_KEY_V1)).unwrap(),
        [0x66; 32]
    );
    assert_corrupt(decode_token_key(loc("k"), &unhex(&TOKEN_KEY_V1[..20])), "");
    assert_corrupt(decode_token_key(loc("k"), &[1]), "");
}

#[test]
fn service_client_golden_bytes() {
    let bytes = encode_service_client(loc("svc"), &service_client()).unwrap();
    assert_eq!(hex(&bytes), SERVICE_CLIENT_V1);
    let back = decode_service_client(loc("svc"), &unhex(SERVICE_CLIENT_V1)).unwrap();
    assert_eq!(back, service_client());
}

#[test]
fn retained_golden_bytes() {
    // V1 records (written before expiry was kept) still read, with no expiry.
    assert_eq!(
        decode_retained(loc("a/b"), &unhex(RETAINED_V1)).unwrap(),
        retained()
    );
    let expiring = RetainedMessage {
        expires_at_ms: Some(2_000),
        ..retained()
    };
    // V2 records (written before properties were kept) still read, with none.
    assert_eq!(
        decode_retained(loc("a/b"), &unhex(RETAINED_V2)).unwrap(),
        expiring
    );
    let with_props = RetainedMessage {
        properties: MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(vec![0xc0]),
            // In order, repeats kept [MQTT-3.3.2-18].
            user_properties: vec![("k".into(), "v".into()), ("a".into(), "k".into())],
            subscription_ids: Vec::new(),
        },
        ..expiring
    };
    let bytes = encode_retained(loc("a/b"), &with_props).unwrap();
    assert_eq!(hex(&bytes), RETAINED_V3);
    assert_eq!(decode_retained(loc("a/b"), &bytes).unwrap(), with_props);
    let mut bad = with_props.clone();
    bad.properties.payload_format_indicator = Some(2);
    let bytes = encode_retained(loc("a/b"), &bad).unwrap();
    assert_corrupt(decode_retained(loc("a/b"), &bytes), "payload format");
    bad.properties.subscription_ids = vec![1];
    assert!(matches!(
        encode_retained(loc("a/b"), &bad),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn credential_golden_bytes() {
    let bytes = encode_credential(loc("k"), &credential()).unwrap();
    assert_eq!(hex(&bytes), CREDENTIAL_V1);
    assert_eq!(
        decode_credential(loc("k"), &unhex(CREDENTIAL_V1)).unwrap(),
        credential()
    );
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, why: &str) {
    match r {
        Err(StoreError::Corrupt {
            table: "test",
            reason,
            ..
        }) => {
            assert!(reason.contains(why), "{reason:?} does not mention {why:?}")
        }
        other => panic!("expected Corrupt ({why}), got {other:?}"),
    }
}

#[test]
fn unknown_version_truncation_and_trailing_bytes_are_corrupt() {
    let mut future = unhex(RETAINED_V2);
    future[0] = 2;
    assert_corrupt(decode_retained(loc("a/b"), &future), "");
    for golden in [DEVICE_V1, DEVICE_V2_LEGACY, DEVICE_V2_KEYED] {
        let full = unhex(golden);
        for len in 0..full.len() {
            assert!(
                decode_device(loc("dev-1"), &full[..len]).is_err(),
                "len {len}"
            );
        }
    }
    let full = unhex(DEVICE_V2_KEYED);
    let mut long = full.clone();
    long.push(0);
    assert_corrupt(decode_device(loc("dev-1"), &long), "trailing");
    assert_corrupt(decode_credential(loc("k"), &[]), "");
}

#[test]
fn broken_invariants_are_corrupt() {
    assert_corrupt(decode_device(loc("dev-2"), &unhex(DEVICE_V1)), "dev-1");
    assert_corrupt(
        decode_service_client(loc("x"), &unhex(SERVICE_CLIENT_V1)),
        "svc",
    );
    assert_corrupt(decode_retained(loc("a/c"), &unhex(RETAINED_V1)), "a/b");

    let mut d = device();
    d.keys.swap(0, 1);
    let bytes = encode_device(loc("dev-1"), &d).unwrap();
    assert_corrupt(decode_device(loc("dev-1"), &bytes), "ascending");

    let mut c = credential();
    c.iterations = 0;
    let bytes = encode_credential(loc("k"), &c).unwrap();
    assert_corrupt(decode_credential(loc("k"), &bytes), "iterations");

    let mut m = retained();
    m.qos = 3;
    let bytes = encode_retained(loc("a/b"), &m).unwrap();
    assert_corrupt(decode_retained(loc("a/b"), &bytes), "qos");

    // A device id that breaks SPEC section 2 (stored by a buggy writer).
    let mut bytes = unhex(DEVICE_V1);
    bytes[5] = b'/'; // "dev-1" -> "dev/1"
    assert_corrupt(decode_device(loc("dev/1"), &bytes), "device id");
}

fn arb_credential() -> impl Strategy<Value = CredentialHash> {
    (1u32.., any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(iterations, salt, hash)| {
        CredentialHash {
            iterations,
            salt,
            hash,
        }
    })
}

fn arb_device_credential() -> impl Strategy<Value = DeviceCredential> {
    prop_oneof![
        arb_credential().prop_map(DeviceCredential::Legacy),
        any::<[u8; 32]>().prop_map(|tag| DeviceCredential::Keyed(TokenHash { tag })),
    ]
}

fn arb_device() -> impl Strategy<Value = DeviceRecord> {
    (
        "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
        ".{0,16}",
        proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
        any::<bool>(),
        arb_device_credential(),
        proptest::collection::btree_map(
            any::<u8>(),
            (any::<[u8; 32]>(), any::<u64>(), any::<Option<u64>>()),
            0..3,
        ),
        any::<u64>(),
    )
        .prop_map(
            |(id, plugin, labels, encrypted, credential, keys, created_at_ms)| DeviceRecord {
                id: id.parse().unwrap(),
                plugin,
                labels,
                encrypted,
                credential,
                keys: keys
                    .into_iter()
                    .map(
                        |(generation, (key, created_at_ms, superseded_at_ms))| DeviceKey {
                            generation,
                            key,
                            created_at_ms,
                            superseded_at_ms,
                        },
                    )
                    .collect(),
                created_at_ms,
            },
        )
}

fn arb_action() -> impl Strategy<Value = AclAction> {
    prop_oneof![
        Just(AclAction::Publish),
        Just(AclAction::Subscribe),
        Just(AclAction::All)
    ]
}

proptest! {
    #[test]
    fn device_roundtrip(d in arb_device()) {
        let key = d.id.to_string();
        let bytes = encode_device(loc(&key), &d).unwrap();
        prop_assert_eq!(decode_device(loc(&key), &bytes).unwrap(), d);
    }

    #[test]
    fn service_client_roundtrip(
        name in ".{1,32}",
        credential in arb_credential(),
        rules in proptest::collection::vec((arb_action(), ".{0,32}", any::<bool>()), 0..5),
        created_at_ms in any::<u64>(),
    ) {
        let rec = ServiceClientRecord {
            name: name.clone(),
            credential,
            rules: rules
                .into_iter()
                .map(|(action, topic, allow)| AclRule { action, topic, allow })
                .collect(),
            created_at_ms,
        };
        let bytes = encode_service_client(loc(&name), &rec).unwrap();
        prop_assert_eq!(decode_service_client(loc(&name), &bytes).unwrap(), rec);
    }

    #[test]
    fn retained_roundtrip(
        topic in ".{0,64}",
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        qos in 0u8..=2,
        stored_at_ms in any::<u64>(),
        expires_at_ms in proptest::option::of(any::<u64>()),
    ) {
        let properties = MessageProperties::default();
        let msg = RetainedMessage { topic: topic.clone(), payload, qos, stored_at_ms, expires_at_ms, properties };
        let bytes = encode_retained(loc(&topic), &msg).unwrap();
        prop_assert_eq!(decode_retained(loc(&topic), &bytes).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_device(loc("dev-1"), &bytes);
        let _ = decode_service_client(loc("svc"), &bytes);
        let _ = decode_retained(loc("a/b"), &bytes);
        let _ = decode_credential(loc("k"), &bytes);
        let _ = decode_token_key(loc("k"), &bytes);
    }

    #[test]
    fn mutated_golden_bytes_never_panic(index in 0usize..200, byte in any::<u8>()) {
        for golden in [DEVICE_V1, DEVICE_V2_LEGACY, DEVICE_V2_KEYED] {
            let mut bytes = unhex(golden);
            let i = index % bytes.len();
            bytes[i] = byte;
            let _ = decode_device(loc("dev-1"), &bytes);
        }
    }
}
