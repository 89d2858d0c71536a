//! Instants as the wall-clock times a timestamp column without a zone
//! holds (Snowflake `TIMESTAMP_NTZ`, PostgreSQL `timestamp`), read in a
//! configured zone. Instants become wall times unambiguously; a wall time
//! repeated when clocks go back is read as the first of the two instants,
//! and one skipped when clocks go forward as the instant it would have been
//! before the change.

use crate::source::Timestamp;
use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// The instant an NTZ wall time in `zone` stands for.
pub fn wall_to_instant(wall: NaiveDateTime, zone: Tz) -> Timestamp {
    let t = match zone.from_local_datetime(&wall).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => {
            // In a gap: use the offset in force before it (a day earlier;
            // no zone changes its offset twice within a day).
            let offset = zone
                .offset_from_utc_datetime(&(wall - chrono::Duration::days(1)))
                .fix();
            DateTime::<Utc>::from_naive_utc_and_offset(
                wall - chrono::Duration::seconds(i64::from(offset.local_minus_utc())),
                Utc,
            )
        }
    };
    Timestamp::from_chrono(t)
}

/// The wall time in `zone` at an instant.
pub fn instant_to_wall(ts: Timestamp, zone: Tz) -> NaiveDateTime {
    DateTime::from_timestamp_nanos(ts.0)
        .with_timezone(&zone)
        .naive_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn wall_times_round_trip_outside_transitions() {
        let zone: Tz = "America/New_York".parse().unwrap();
        let ts = wall_to_instant(wall("2024-07-01 12:00:00"), zone);
        assert_eq!(ts.rfc3339(), "2024-07-01T16:00:00Z");
        assert_eq!(instant_to_wall(ts, zone), wall("2024-07-01 12:00:00"));
    }

    #[test]
    fn repeated_wall_time_is_the_first_instant_and_gap_the_offset_before() {
        let zone: Tz = "Europe/Paris".parse().unwrap();
        // 2024-10-27 02:30 happens twice (CEST then CET): the first is 00:30Z.
        assert_eq!(
            wall_to_instant(wall("2024-10-27 02:30:00"), zone).rfc3339(),
            "2024-10-27T00:30:00Z"
        );
        // 2024-03-31 02:30 never happens; with CET (+1) it would be 01:30Z.
        assert_eq!(
            wall_to_instant(wall("2024-03-31 02:30:00"), zone).rfc3339(),
            "2024-03-31T01:30:00Z"
        );
    }
}
