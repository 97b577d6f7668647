//! Times as the API and events show them.

/// Formats unix milliseconds as RFC 3339 in UTC with millisecond precision, e.g.
/// `2024-03-01T12:00:00.000Z`: the one formatter for every time the API and events show.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(fleetmq_device_plugins::rfc3339::format_utc_ms)
        .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_owned())
}
