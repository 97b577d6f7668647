//! Cheap randomness for simulated values, failures and jitter.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::unix_ms;

/// A small xorshift64* generator for simulated values and failures (not for secrets).
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from the system random source (the clock if that fails).
    pub(crate) fn seeded() -> Rng {
        let mut bytes = [0u8; 8];
        let seed = match SystemRandom::new().fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => unix_ms() ^ 0x9e37_79b9_7f4a_7c15,
        };
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, max)`.
    pub(crate) fn duration(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}
