//! The SPEC §4 payload envelope, with a fixed key set: key generations 1, 2 and 200
//! are known, every other generation is not.
//!
//! Input: a topic length byte (modulo 64), the topic (as lossy UTF-8), then the
//! envelope a device sent. The same input is also read as a plaintext to seal.
//!
//! Invariants: `open` refuses exactly as the format says (empty or short, wrong
//! version byte, unknown generation, failed tag); what opens re-seals to the same
//! bytes (AES-GCM is deterministic for a key, nonce and topic); what is sealed opens
//! to the same plaintext and generation, and not under another topic or with one bit
//! flipped.

use fleetmq_broker::fuzz::{open, seal, CryptoError, Opened, KEY_LEN, MIN_ENVELOPE_LEN, NONCE_LEN};

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
        [version, ..] if *version != 0x01 => Some(CryptoError::UnknownVersion(*version)),
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
        (
            None,
            Ok(Opened {
                generation,
                plaintext,
            }),
        ) => {
            assert_eq!(generation, envelope[1]);
            let nonce: [u8; NONCE_LEN] = envelope[2..2 + NONCE_LEN].try_into().unwrap();
            let key = key_for(generation).unwrap();
            assert_eq!(
                seal(&key, generation, nonce, topic, &plaintext),
                envelope,
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
    let mut envelope = seal(&key, generation, nonce, topic, data);
    assert_eq!(envelope.len(), MIN_ENVELOPE_LEN + data.len());
    assert_eq!(
        open(key_for, topic, &envelope),
        Ok(Opened {
            generation,
            plaintext: data.to_vec(),
        })
    );
    let other = format!("{topic}/x");
    assert_eq!(
        open(key_for, &other, &envelope),
        Err(CryptoError::Authentication),
        "opened under another topic"
    );
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
