//! Snowflake cells as contract values, and instants as the wall-clock times
//! a `TIMESTAMP_NTZ` column holds.
//!
//! An NTZ value has no zone: it is read in the configured one (the vendor's
//! `timezoneValue`, default UTC), never in the session's, which is where
//! other connectors silently skip rows. Instants become wall times
//! unambiguously; a wall time repeated when clocks go back is read as the
//! first of the two instants, and one skipped when clocks go forward as the
//! instant it would have been before the change.

use crate::plugin::contract::Value;
use crate::source::Timestamp;
use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use snowflake_connector_rs::CellValue;

/// How the timestamp column's values map to instants.
#[derive(Debug, Clone, Copy)]
pub(super) enum Clock {
    /// `TIMESTAMP_NTZ`: wall-clock times in this zone.
    Ntz(Tz),
    /// `TIMESTAMP_LTZ`: instants.
    Ltz,
}

/// The instant an NTZ wall time in `zone` stands for.
pub(super) fn wall_to_instant(wall: NaiveDateTime, zone: Tz) -> Timestamp {
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
pub(super) fn instant_to_wall(ts: Timestamp, zone: Tz) -> NaiveDateTime {
    DateTime::from_timestamp_nanos(ts.0)
        .with_timezone(&zone)
        .naive_local()
}

/// The instant a timestamp cell stands for, if it is one.
pub(super) fn instant(cell: &CellValue, zone: Tz) -> Option<Timestamp> {
    match cell {
        CellValue::TimestampNtz(wall) => Some(wall_to_instant(*wall, zone)),
        CellValue::TimestampLtz(t) => Some(Timestamp::from_chrono(*t)),
        CellValue::TimestampTz(t) => Some(Timestamp::from_chrono(t.to_utc())),
        _ => None,
    }
}

/// One cell as a contract value; every NTZ column is read in `zone`.
pub(super) fn value(cell: CellValue, zone: Tz) -> Value {
    if let Some(ts) = instant(&cell, zone) {
        return Value::Timestamp(ts.instant());
    }
    match cell {
        CellValue::Null => Value::Null,
        CellValue::Boolean(b) => Value::Boolean(b),
        CellValue::Integer(i) => match i64::try_from(i) {
            Ok(i) => Value::Integer(i),
            // NUMBER(38,0) beyond 64 bits stays exact as text.
            Err(_) => Value::Decimal(i.to_string()),
        },
        CellValue::Float(f) => Value::Float(f),
        CellValue::Decimal(d) => Value::Decimal(d.raw().to_owned()),
        CellValue::String(s) => Value::Text(s),
        CellValue::Date(d) => {
            let days = d
                .signed_duration_since(chrono::NaiveDate::default())
                .num_days();
            Value::Date(i32::try_from(days).unwrap_or(i32::MAX))
        }
        CellValue::Time(t) => Value::Text(t.format("%H:%M:%S%.f").to_string()),
        CellValue::Json(j) => Value::Json(j.to_string()),
        CellValue::Binary(b) => Value::Binary(b.as_bytes().to_vec()),
        other => Value::Text(format!("{other:?}")),
    }
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

    #[test]
    fn dates_are_days_since_the_epoch() {
        let d = chrono::NaiveDate::from_ymd_opt(1960, 1, 1).unwrap();
        assert!(matches!(
            value(CellValue::Date(d), Tz::UTC),
            Value::Date(-3653)
        ));
    }
}
