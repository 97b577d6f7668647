use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

fn n(epoch: u32, counter: u64) -> CountedNonce {
    CountedNonce { epoch, counter }
}

#[test]
fn nonce_bytes_are_epoch_then_counter_big_endian() {
    let nonce = n(0x0102_0304, 0x0506_0708_090a_0b0c);
    assert_eq!(nonce.to_bytes(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(CountedNonce::from_bytes(nonce.to_bytes()), nonce);
    assert!(!nonce.from_broker());
    assert!(n(0, BROKER_DIRECTION).from_broker());
}

#[test]
fn in_order_duplicates_and_out_of_order_within_the_window() {
    let mut w = ReplayWindow::new();
    assert_eq!(w.newest(), None);
    assert_eq!(w.accept(n(1, 10)), Ok(()));
    assert_eq!(
        w.accept(n(1, 10)),
        Err(ReplayError::Duplicate {
            epoch: 1,
            counter: 10
        })
    );
    assert_eq!(w.accept(n(1, 12)), Ok(()));
    // 11 came late: still accepted once.
    assert_eq!(w.accept(n(1, 11)), Ok(()));
    assert_eq!(
        w.accept(n(1, 11)),
        Err(ReplayError::Duplicate {
            epoch: 1,
            counter: 11
        })
    );
    // Below the first accepted counter but inside the window: never seen, accepted.
    assert_eq!(w.accept(n(1, 0)), Ok(()));
    assert_eq!(w.newest(), Some(n(1, 12)));
}

#[test]
fn the_window_edge() {
    let mut w = ReplayWindow::new();
    w.accept(n(7, 1000)).unwrap();
    // The 63 counters below the newest are inside, the 64th is not.
    assert_eq!(w.check(n(7, 1000 - (WINDOW - 1))), Ok(()));
    let too_old = ReplayError::TooOld {
        epoch: 7,
        counter: 1000 - WINDOW,
        newest: 1000,
    };
    assert_eq!(w.check(n(7, 1000 - WINDOW)), Err(too_old));
    // A jump of exactly WINDOW forgets everything before; the old newest is too old.
    w.accept(n(7, 1000 + WINDOW)).unwrap();
    assert!(matches!(
        w.check(n(7, 1000)),
        Err(ReplayError::TooOld { .. })
    ));
    assert_eq!(w.check(n(7, 1001)), Ok(()));
    // A huge jump (no shift overflow).
    w.accept(n(7, u64::MAX - 1)).unwrap();
    assert!(matches!(
        w.check(n(7, 1001)),
        Err(ReplayError::TooOld { .. })
    ));
}

#[test]
fn counter_wrap_is_refused() {
    let mut w = ReplayWindow::new();
    w.accept(n(3, u64::MAX)).unwrap();
    // Wrapping back to 0 in the same epoch is an old counter, not a new one.
    assert!(matches!(w.accept(n(3, 0)), Err(ReplayError::TooOld { .. })));
    assert!(matches!(
        w.accept(n(3, u64::MAX)),
        Err(ReplayError::Duplicate { .. })
    ));
    // The way on is a new epoch.
    assert_eq!(w.accept(n(4, 0)), Ok(()));
}

#[test]
fn epochs_only_go_up() {
    let mut w = ReplayWindow::new();
    w.accept(n(5, 100)).unwrap();
    // A reboot: the counter starts again in a higher epoch.
    assert_eq!(w.accept(n(6, 0)), Ok(()));
    assert_eq!(
        w.accept(n(5, 101)),
        Err(ReplayError::OldEpoch {
            epoch: 5,
            current: 6
        })
    );
    // The new epoch's window starts empty: 1 is new, 0 is a duplicate.
    assert_eq!(w.accept(n(6, 1)), Ok(()));
    assert!(matches!(
        w.accept(n(6, 0)),
        Err(ReplayError::Duplicate { .. })
    ));
}

#[test]
fn a_device_keeps_one_window_per_key_and_refuses_the_broker_direction() {
    let mut d = DeviceReplay::default();
    assert!(!d.uses_v2());
    let (k1, k2) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
    d.accept(&k1, n(1, 5)).unwrap();
    assert!(d.uses_v2());
    // Another key (a rotation, a re-provisioned device) has its own window.
    d.accept(&k2, n(1, 5)).unwrap();
    assert!(matches!(
        d.accept(&k1, n(1, 5)),
        Err(ReplayError::Duplicate { .. })
    ));
    assert_eq!(
        d.accept(&k1, n(1, BROKER_DIRECTION | 6)),
        Err(ReplayError::WrongDirection(BROKER_DIRECTION | 6))
    );
    assert_eq!(d.accept(&k1, n(1, DEVICE_COUNTER_MAX)), Ok(()));
    d.saw_v1();
    assert!(!d.uses_v2());
}

#[test]
fn a_device_keeps_at_most_a_few_keys() {
    let mut d = DeviceReplay::default();
    for byte in 0..=200u8 {
        d.accept(&[byte; KEY_LEN], n(1, 1)).unwrap();
        assert!(d.windows.len() <= MAX_KEYS_PER_DEVICE);
    }
    // The most recent keys are still there; the least recently used went first.
    assert!(d.accept(&[200; KEY_LEN], n(1, 1)).is_err());
    d.accept(&[197; KEY_LEN], n(1, 2)).unwrap();
    d.accept(&[201; KEY_LEN], n(1, 1)).unwrap();
    assert!(
        d.accept(&[197; KEY_LEN], n(1, 2)).is_err(),
        "recently used, kept"
    );
    assert_eq!(
        d.accept(&[198; KEY_LEN], n(1, 1)),
        Ok(()),
        "evicted, starts afresh"
    );
}

#[test]
fn the_registry_shares_a_device_between_connections() {
    let r = ReplayRegistry::default();
    let id: DeviceId = "d1".parse().unwrap();
    let a = r.device(&id);
    let b = r.device(&id);
    a.lock().unwrap().accept(&[1; KEY_LEN], n(1, 1)).unwrap();
    assert!(b.lock().unwrap().accept(&[1; KEY_LEN], n(1, 1)).is_err());
    let other = r.device(&"d2".parse().unwrap());
    assert!(other.lock().unwrap().accept(&[1; KEY_LEN], n(1, 1)).is_ok());
    // A deleted device is forgotten.
    r.forget(&id);
    assert_eq!(r.devices.lock().unwrap().len(), 1);
    assert!(r
        .device(&id)
        .lock()
        .unwrap()
        .accept(&[1; KEY_LEN], n(1, 1))
        .is_ok());
}

#[test]
fn broker_nonces_are_one_increasing_broker_direction_sequence() {
    let a = broker_nonce();
    let b = broker_nonce();
    assert!(a.from_broker() && b.from_broker());
    assert_eq!(a.epoch, b.epoch);
    assert!(b.counter > a.counter);
    // Seeded from the clock: past 2020 in nanoseconds.
    assert!(a.counter & DEVICE_COUNTER_MAX > 1_577_836_800_000_000_000);
    // A device can check them with a window under epoch 0.
    let mut w = ReplayWindow::new();
    assert_eq!(w.accept(n(0, b.counter)), Ok(()));
    assert_eq!(w.accept(n(0, a.counter)), Ok(()));
    assert!(w.accept(n(0, a.counter)).is_err());
}

/// A nonce near a small set of values, so that duplicates, the window edge and epoch
/// changes all come up often.
fn nonce() -> impl Strategy<Value = CountedNonce> {
    (0u32..3, prop_oneof![0u64..150, (u64::MAX - 70)..=u64::MAX])
        .prop_map(|(epoch, counter)| n(epoch, counter))
}

proptest! {
    /// The window against a model that remembers everything: it accepts exactly the
    /// nonces that are new and not older than the window allows.
    #[test]
    fn window_matches_a_model(nonces in prop::collection::vec(nonce(), 1..300)) {
        let mut w = ReplayWindow::new();
        let mut accepted = HashSet::new();
        let mut newest: Option<(u32, u64)> = None;
        for nonce in nonces {
            let key = (nonce.epoch, nonce.counter);
            let want = match newest {
                None => true,
                Some((e, _)) if nonce.epoch < e => false,
                Some((e, _)) if nonce.epoch > e => true,
                Some((_, c)) => {
                    !accepted.contains(&key) && (nonce.counter > c || c - nonce.counter < WINDOW)
                }
            };
            let got = w.accept(nonce);
            prop_assert_eq!(got.is_ok(), want, "{:?} after {:?}: {:?}", nonce, newest, got);
            if want {
                accepted.insert(key);
                if newest.is_none_or(|n| key > n) {
                    newest = Some(key);
                }
            }
            // Never twice, whatever came before.
            prop_assert!(w.accept(nonce).is_err());
        }
    }
}
