//! The SPEC §4 payload envelope, with a fixed key set: key generations 1, 2 and 200
//! are known, every other generation is not.
//!
//! Input: a topic length byte (modulo 64), the topic (as lossy UTF-8), then the
//! envelope a device sent. The same input is also read as a plaintext to seal.
//!
//! Invariants: `open` refuses exactly as the format says (empty or short, a version
//! byte other than 0x01 and 0x02, unknown generation, failed tag); what opens re-seals
//! (in its version) to the same bytes (AES-GCM is deterministic for a key, nonce and
//! AAD); what is sealed, as 0x01 and as 0x02, opens to the same plaintext, generation
//! and version, and not under another topic, with one bit flipped, or (0x02) relabelled
//! as 0x01; a 0x02 nonce is taken once by a fresh `ReplayWindow` and refused after.

use fleetmq_broker::fuzz::{
    open, seal, seal_v2, CountedNonce, CryptoError, Opened, ReplayWindow, KEY_LEN,
    MIN_ENVELOPE_LEN, NONCE_LEN,
};

/// The key of each known generation.
pub(crate) fn key_for(generation: u8) -> Option<[u8; KEY_LEN]> {
    matches!(generation, 1 | 2 | 200).then(|| [generation.wrapping_mul(0x5b) ^ 0xa7; KEY_LEN])
}

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let Some((&topic_len, rest)) = data.split_first() else {
        return;
    };
    let (topic, envelope) = rest.split_at(usize::from(topic_len % 64).min(rest.len()));
    let topic = String::from_utf8_lossy(topic);
    open_arbitrary(&topic, envelope);
    seal_then_open(&topic, envelope);
}

/// What `open` must answer for `envelope`, short of checking the tag.
fn expected_refusal(envelope: &[u8]) -> Option<CryptoError> {
    match envelope {
        [] => Some(CryptoError::TooShort { len: 0 }),
        [version, ..] if !matches!(*version, 0x01 | 0x02) => {
            Some(CryptoError::UnknownVersion(*version))
        }
        _ if envelope.len() < MIN_ENVELOPE_LEN => Some(CryptoError::TooShort {
            len: envelope.len(),
        }),
        [_, generation, ..] if key_for(*generation).is_none() => {
            Some(CryptoError::UnknownGeneration(*generation))
        }
        _ => None,
    }
}

fn open_arbitrary(topic: &str, envelope: &[u8]) {
    let opened = open(key_for, topic, envelope);
    match (expected_refusal(envelope), opened) {
        (Some(want), got) => assert_eq!(got, Err(want), "{envelope:?}"),
        (None, Err(e)) => assert_eq!(e, CryptoError::Authentication, "{envelope:?}"),
        (None, Ok(opened)) => {
            let Opened {
                version,
                generation,
                nonce,
                ref plaintext,
                ..
            } = opened;
            assert_eq!((version, generation), (envelope[0], envelope[1]));
            let wire: [u8; NONCE_LEN] = envelope[2..2 + NONCE_LEN].try_into().unwrap();
            assert_eq!(nonce, wire);
            let key = key_for(generation).unwrap();
            let resealed = match opened.counted() {
                Some(counted) => seal_v2(&key, generation, counted, topic, plaintext),
                None => seal(&key, generation, nonce, topic, plaintext),
            };
            assert_eq!(
                resealed, envelope,
                "an opened envelope does not re-seal to itself"
            );
        }
    }
}

fn seal_then_open(topic: &str, data: &[u8]) {
    let generation = data.first().map_or(1, |&g| [1, 2, 200][usize::from(g % 3)]);
    let mut nonce = [0u8; NONCE_LEN];
    for (n, b) in nonce.iter_mut().zip(data.iter().rev()) {
        *n = *b;
    }
    let key = key_for(generation).unwrap();
    let counted = CountedNonce::from_bytes(nonce);
    for version in [0x01, 0x02] {
        let mut envelope = if version == 0x01 {
            seal(&key, generation, nonce, topic, data)
        } else {
            seal_v2(&key, generation, counted, topic, data)
        };
        assert_eq!(envelope.len(), MIN_ENVELOPE_LEN + data.len());
        assert_eq!(envelope[0], version);
        assert_eq!(
            open(key_for, topic, &envelope),
            Ok(Opened {
                version,
                generation,
                nonce,
                plaintext: data.to_vec(),
            })
        );
        let other = format!("{topic}/x");
        assert_eq!(
            open(key_for, &other, &envelope),
            Err(CryptoError::Authentication),
            "opened under another topic"
        );
        if version == 0x02 {
            let mut relabelled = envelope.clone();
            relabelled[0] = 0x01;
            assert_eq!(
                open(key_for, topic, &relabelled),
                Err(CryptoError::Authentication),
                "a 0x02 envelope opened as 0x01"
            );
            let mut window = ReplayWindow::new();
            assert_eq!(window.accept(counted), Ok(()));
            assert!(window.accept(counted).is_err(), "{counted:?} taken twice");
        }
        // Flip one bit past the version and generation bytes (those have their own errors).
        let at = 2 + data.len() % (envelope.len() - 2);
        envelope[at] ^= 1 << (data.len() % 8);
        assert_eq!(
            open(key_for, topic, &envelope),
            Err(CryptoError::Authentication),
            "opened with bit {} of byte {at} flipped",
            data.len() % 8
        );
    }
}
