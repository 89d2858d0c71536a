//! Snowflake cells as contract values. An NTZ value has no zone: it is read
//! in the configured one (the vendor's `timezoneValue`, default UTC), never
//! in the session's, which is where other connectors silently skip rows
//! (see [`crate::source::wall`]).

use crate::plugin::contract::Value;
pub(super) use crate::source::wall::{instant_to_wall, wall_to_instant};
use crate::source::Timestamp;
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

    #[test]
    fn dates_are_days_since_the_epoch() {
        let d = chrono::NaiveDate::from_ymd_opt(1960, 1, 1).unwrap();
        assert!(matches!(
            value(CellValue::Date(d), Tz::UTC),
            Value::Date(-3653)
        ));
    }
}
