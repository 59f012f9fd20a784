//! Times as the OME API writes them: `YYYY-MM-DDTHH:MM:SS.mmm+HH:MM` in the server's offset.

use chrono::{DateTime, Local, TimeZone, Utc};

/// Text for a time that was never set (OME prints the epoch).
pub const NEVER: &str = "1970-01-01T00:00:00.000+00:00";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats milliseconds since the epoch in the server's local offset; `None` is [`NEVER`].
pub fn format_ms(ms: Option<i64>) -> String {
    match ms.and_then(|ms| Local.timestamp_millis_opt(ms).single()) {
        Some(t) => format_time(&t),
        None => NEVER.to_string(),
    }
}

fn format_time(t: &DateTime<Local>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// Converts milliseconds since the epoch to a protobuf timestamp.
pub fn to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The inverse of [`to_timestamp`] (to the millisecond).
pub fn from_timestamp(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_ome() {
        assert_eq!(format_ms(None), NEVER);
        let s = format_ms(Some(1_678_889_554_371));
        // 2023-03-15T14:12:34.371Z in whatever offset this machine has.
        let parsed = DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.3f%:z").expect("parses");
        assert_eq!(parsed.timestamp_millis(), 1_678_889_554_371);
        assert_eq!(s.len(), "2023-03-15T23:02:34.371+09:00".len());
    }

    #[test]
    fn timestamp_of_negative_ms() {
        let t = to_timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }
}
