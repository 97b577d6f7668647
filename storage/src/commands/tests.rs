//! Golden-byte, corruption and state machine tests of the command record, and the
//! fixtures the table tests share.

use super::*;
use proptest::prelude::*;

use super::format::encode_command;
use crate::test_support::{self, hex, unhex};

/// A new command `id` of `device`: 1 s answer timeout, 2 retries, 10 s TTL, created at
/// 100 ms.
pub(crate) fn new_cmd(id: &str, device: &str, kind: &str) -> NewCommandRecord {
    NewCommandRecord {
        command_id: id.into(),
        device_id: test_support::id(device),
        kind: kind.into(),
        params_json: "{}".into(),
        metadata_json: None,
        idempotency_key: None,
        timeout_ms: 1_000,
        max_retries: 2,
        ttl_ms: 10_000,
        created_at_ms: 100,
    }
}

pub(super) fn dev(s: &str) -> DeviceId {
    s.parse().unwrap()
}

/// A queued record with every descriptive field set.
fn queued() -> CommandRecord {
    CommandRecord::new(
        NewCommandRecord {
            command_id: "c1".into(),
            device_id: dev("d1"),
            kind: "RELOAD".into(),
            params_json: r#"{"x":1}"#.into(),
            metadata_json: Some(r#"{"b":1,  "a":[1,2]}"#.into()),
            idempotency_key: Some("k".into()),
            timeout_ms: 30_000,
            max_retries: 3,
            ttl_ms: 86_400_000,
            created_at_ms: 1_000,
        },
        7,
    )
}

/// A completed record with every optional field set.
fn completed_late() -> CommandRecord {
    let mut r = queued();
    r.send(2_000, 32_000).unwrap();
    r.acknowledge(2_500).unwrap();
    r.complete(3_000, Some(r#"{"ok":true}"#.into())).unwrap();
    r.record_late_response(r#"{"success":false}"#.into())
        .unwrap();
    r
}

// Golden bytes: if one of these fails, the file format changed. Add a `V2` variant
// instead of editing `V1`.
const QUEUED_V1: &str = concat!(
    "00",               // StoredCommand::V1
    "026331",           // command_id "c1"
    "026431",           // device_id "d1"
    "07",               // seq
    "0652454c4f4144",   // kind "RELOAD"
    "077b2278223a317d", // params_json
    "0113",             // metadata_json: Some, 19 bytes
    "7b2262223a312c20202261223a5b312c325d7d",
    "01016b",   // idempotency_key Some("k")
    "b0ea01",   // timeout_ms 30000
    "03",       // max_retries
    "80b89929", // ttl_ms 86400000
    "e807",     // created_at_ms 1000
    "00",       // status Queued
    "00",       // attempts
    "00",
    "00",
    "00", // sent/delivered/completed_at
    "00",
    "00",
    "00",         // result, error, late_response
    "01e8bf9929", // next_deadline_ms 86401000
);

const COMPLETED_V1: &str = concat!(
    "00",
    "026331",
    "026431",
    "07",
    "0652454c4f4144",
    "077b2278223a317d",
    "0113",
    "7b2262223a312c20202261223a5b312c325d7d",
    "01016b",
    "b0ea01",
    "03",
    "80b89929",
    "e807",
    "03",                                     // status Completed
    "01",                                     // attempts
    "01d00f",                                 // sent_at 2000
    "01c413",                                 // delivered_at 2500
    "01b817",                                 // completed_at 3000
    "010b7b226f6b223a747275657d",             // result_json
    "00",                                     // error
    "01117b2273756363657373223a66616c73657d", // late_response_json
    "00",                                     // next_deadline_ms None
);

#[test]
fn golden_bytes() {
    for (rec, golden) in [(queued(), QUEUED_V1), (completed_late(), COMPLETED_V1)] {
        let bytes = encode_command(&rec).unwrap();
        assert_eq!(hex(&bytes), golden);
        assert_eq!(decode_command("c1", &unhex(golden)).unwrap(), rec);
    }
}

fn assert_corrupt(r: Result<CommandRecord, StoreError>, why: &str) {
    match r {
        Err(StoreError::Corrupt {
            table: "commands",
            reason,
            ..
        }) => assert!(reason.contains(why), "{reason:?} does not mention {why:?}"),
        other => panic!("expected Corrupt ({why}), got {other:?}"),
    }
}

#[test]
fn truncation_trailing_bytes_and_unknown_versions_are_corrupt() {
    let full = unhex(COMPLETED_V1);
    for len in 0..full.len() {
        assert!(decode_command("c1", &full[..len]).is_err(), "len {len}");
    }
    let mut long = full.clone();
    long.push(0);
    assert_corrupt(decode_command("c1", &long), "trailing");
    let mut future = full.clone();
    future[0] = 1;
    assert_corrupt(decode_command("c1", &future), "");
    let mut bad_status = unhex(QUEUED_V1);
    let status_at = QUEUED_V1.find("e80700").unwrap() / 2 + 2;
    bad_status[status_at] = 8;
    assert_corrupt(decode_command("c1", &bad_status), "");
}

#[test]
fn broken_invariants_are_corrupt() {
    assert_corrupt(decode_command("c2", &unhex(QUEUED_V1)), "c1");
    let mut bytes = unhex(QUEUED_V1);
    bytes[5] = b'/'; // device "d1" -> "d/"
    assert_corrupt(decode_command("c1", &bytes), "device id");

    // Records no transition can produce.
    let mut r = queued();
    r.attempts = 1;
    assert_corrupt(
        decode_command("c1", &encode_command(&r).unwrap()),
        "attempts",
    );
    let mut r = queued();
    r.next_deadline_ms = None;
    assert_corrupt(
        decode_command("c1", &encode_command(&r).unwrap()),
        "deadline",
    );
    let mut r = completed_late();
    r.completed_at_ms = None;
    assert_corrupt(
        decode_command("c1", &encode_command(&r).unwrap()),
        "completed_at",
    );
    let mut r = queued();
    r.status = CommandStatus::Delivered;
    r.attempts = 1;
    r.sent_at_ms = Some(1);
    assert_corrupt(
        decode_command("c1", &encode_command(&r).unwrap()),
        "delivered_at",
    );
    let mut r = queued();
    r.timeout_ms = 0;
    assert_corrupt(
        decode_command("c1", &encode_command(&r).unwrap()),
        "timeout",
    );
}

// ---- state machine ------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Step {
    Send,
    Ack,
    Complete,
    Fail,
    Expire,
    Cancel,
    Supersede,
    Postpone,
    Late,
}

const STEPS: [Step; 9] = [
    Step::Send,
    Step::Ack,
    Step::Complete,
    Step::Fail,
    Step::Expire,
    Step::Cancel,
    Step::Supersede,
    Step::Postpone,
    Step::Late,
];

fn apply(r: &mut CommandRecord, step: Step, now: u64) -> Result<(), InvalidTransition> {
    match step {
        Step::Send => r.send(now, now + r.timeout_ms),
        Step::Ack => r.acknowledge(now).map(drop),
        Step::Complete => r.complete(now, Some("1".into())),
        Step::Fail => r.fail(now, "timeout".into(), None),
        Step::Expire => r.expire(now),
        Step::Cancel => r.cancel(now, None),
        Step::Supersede => r.supersede(now),
        Step::Postpone => r.postpone(now + 5),
        Step::Late => r.record_late_response("{}".into()),
    }
}

fn in_status(status: CommandStatus) -> CommandRecord {
    let mut r = queued();
    let steps: &[Step] = match status {
        CommandStatus::Queued => &[],
        CommandStatus::Sent => &[Step::Send],
        CommandStatus::Delivered => &[Step::Send, Step::Ack],
        CommandStatus::Completed => &[Step::Complete],
        CommandStatus::Failed => &[Step::Fail],
        CommandStatus::Expired => &[Step::Expire],
        CommandStatus::Cancelled => &[Step::Cancel],
        CommandStatus::Superseded => &[Step::Supersede],
    };
    for s in steps {
        apply(&mut r, *s, 10).unwrap();
    }
    assert_eq!(r.status(), status);
    r
}

#[test]
fn every_transition_from_every_status() {
    use CommandStatus::*;
    for from in CommandStatus::ALL {
        for step in STEPS {
            let mut r = in_status(from);
            let before = r.clone();
            let got = apply(&mut r, step, 20).map(|()| r.status());
            let want = match (from, step) {
                (Queued, Step::Send) => Ok(Sent),
                (Sent | Delivered, Step::Send) => Ok(from),
                (Sent | Delivered, Step::Ack) => Ok(Delivered),
                (Queued | Sent | Delivered, Step::Complete) => Ok(Completed),
                (Queued | Sent | Delivered, Step::Fail) => Ok(Failed),
                (Queued, Step::Expire) => Ok(Expired),
                (Queued | Sent | Delivered, Step::Cancel) => Ok(Cancelled),
                (Queued | Sent | Delivered, Step::Supersede) => Ok(Superseded),
                (Queued | Sent | Delivered, Step::Postpone) => Ok(from),
                (Completed | Failed | Expired | Cancelled | Superseded, Step::Late) => Ok(from),
                _ => Err(from),
            };
            match (got, want) {
                (Ok(s), Ok(w)) => assert_eq!(s, w, "{from} {step:?}"),
                (Err(e), Err(_)) => {
                    assert_eq!(e.from, from);
                    assert_eq!(r, before, "a refused transition changed the record");
                }
                (g, w) => panic!("{from} {step:?}: got {g:?}, want {w:?}"),
            }
            // Whatever happened, the record still satisfies the decoder's invariants.
            assert_eq!(
                decode_command("c1", &encode_command(&r).unwrap()).unwrap(),
                r
            );
        }
    }
}

#[test]
fn send_counts_attempts_and_arms_the_timeout() {
    let mut r = queued();
    assert_eq!(r.next_deadline_ms(), Some(r.expires_at_ms()));
    r.send(50, 150).unwrap();
    assert_eq!(
        (r.status(), r.attempts(), r.sent_at_ms()),
        (CommandStatus::Sent, 1, Some(50))
    );
    assert_eq!(r.next_deadline_ms(), Some(150));
    assert!(r.acknowledge(60).unwrap());
    assert!(!r.acknowledge(70).unwrap());
    assert_eq!(r.delivered_at_ms(), Some(60));
    r.send(200, 300).unwrap();
    assert_eq!((r.status(), r.attempts()), (CommandStatus::Delivered, 2));
    r.fail(400, "timeout".into(), None).unwrap();
    assert_eq!(r.error(), Some("timeout"));
    assert_eq!(
        (r.completed_at_ms(), r.next_deadline_ms()),
        (Some(400), None)
    );
}

#[test]
fn status_names_round_trip() {
    for s in CommandStatus::ALL {
        assert_eq!(s.as_str().parse::<CommandStatus>().unwrap(), s);
        assert_eq!(s.to_string(), s.as_str());
    }
    assert!("QUEUED".parse::<CommandStatus>().is_err());
    let terminal: Vec<_> = CommandStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal.len(), 5);
}

proptest! {
    #[test]
    fn reachable_records_round_trip(
        steps in proptest::collection::vec(0usize..STEPS.len(), 0..12),
        metadata in proptest::option::of(".{0,40}"),
        kind in ".{1,20}",
    ) {
        let mut r = queued();
        r.kind = kind;
        r.metadata_json = metadata;
        for (i, s) in steps.into_iter().enumerate() {
            let _ = apply(&mut r, STEPS[s], 10 + i as u64);
        }
        let bytes = encode_command(&r).unwrap();
        prop_assert_eq!(decode_command("c1", &bytes).unwrap(), r);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_command("c1", &bytes);
    }

    #[test]
    fn mutated_golden_bytes_never_panic(index in 0usize..200, byte in any::<u8>()) {
        let mut bytes = unhex(COMPLETED_V1);
        let i = index % bytes.len();
        bytes[i] = byte;
        let _ = decode_command("c1", &bytes);
    }
}
