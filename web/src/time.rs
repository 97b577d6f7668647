//! RFC 3339 timestamps for API responses.

pub(crate) use fleetmq_broker::fleet::rfc3339_ms;

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_294_400_123), "2024-03-01T12:00:00.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_234_567_890_000), "2009-02-13T23:31:30.000Z");
    }
}
