//! Archive-analysis values in HBR's wire form: the `I|<unix>|<ISO 8601 duration>` schedule and
//! the `from:to:KiB/s|...` speed limit.

use toml::value::{Datetime, Offset};

/// Strict ISO 8601 duration, `PnYnMnWnDTnHnMnS` with integer components in that order, at
/// least one component, `T` only when a time component follows, and not zero in total.
pub(super) fn iso8601_duration(s: &str) -> Result<(), String> {
    let bad =
        || format!("{s:?} is not an ISO 8601 duration (PnYnMnWnDTnHnMnS, e.g. \"P1D\", \"PT12H\")");
    let rest = s.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    let (date_parts, date_nonzero) = scan(date, &['Y', 'M', 'W', 'D']).ok_or_else(bad)?;
    let (time_parts, time_nonzero) = match time {
        Some(t) => match scan(t, &['H', 'M', 'S']) {
            Some((0, _)) | None => return Err(bad()),
            Some(r) => r,
        },
        None => (0, false),
    };
    let any = date_parts + time_parts > 0;
    let nonzero = date_nonzero || time_nonzero;
    if !any {
        return Err(bad());
    }
    if !nonzero {
        return Err(format!("{s:?} is a zero duration"));
    }
    Ok(())
}

/// Number of `<digits><unit>` components (units in the given order, each at most once) and
/// whether any is non-zero; `None` when `part` is not of that form.
fn scan(part: &str, units: &[char]) -> Option<(usize, bool)> {
    let mut next_unit = 0;
    let mut digits = String::new();
    let (mut count, mut nonzero) = (0, false);
    for c in part.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let pos = units[next_unit..].iter().position(|&u| u == c)?;
        let n: u64 = digits.parse().ok()?;
        count += 1;
        nonzero |= n > 0;
        digits.clear();
        next_unit += pos + 1;
    }
    digits.is_empty().then_some((count, nonzero))
}

/// Seconds since the Unix epoch of a TOML offset date-time.
pub(super) fn unix_seconds(dt: &Datetime) -> Result<i64, String> {
    let (Some(d), Some(t), Some(off)) = (dt.date, dt.time, dt.offset) else {
        return Err("start must be an offset date-time such as 2024-10-21T06:57:27Z".into());
    };
    let month = time::Month::try_from(d.month).map_err(|e| e.to_string())?;
    let date = time::Date::from_calendar_date(i32::from(d.year), month, d.day)
        .map_err(|e| e.to_string())?;
    let tm =
        time::Time::from_hms(t.hour, t.minute, t.second.unwrap_or(0)).map_err(|e| e.to_string())?;
    let minutes = match off {
        Offset::Z => 0,
        Offset::Custom { minutes } => i32::from(minutes),
    };
    let offset = time::UtcOffset::from_whole_seconds(minutes * 60).map_err(|e| e.to_string())?;
    let secs = time::PrimitiveDateTime::new(date, tm)
        .assume_offset(offset)
        .unix_timestamp();
    if secs < 0 {
        return Err("start must not be before 1970-01-01T00:00:00Z".into());
    }
    Ok(secs)
}

pub(super) fn schedule(start: i64, every: &str) -> Result<String, String> {
    iso8601_duration(every)?;
    Ok(format!("I|{start}|{every}"))
}

pub(super) fn raw_schedule(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split('|').collect();
    let [kind, start, every] = parts[..] else {
        return Err(format!(
            "{s:?} is not \"I|<unix seconds>|<ISO 8601 duration>\""
        ));
    };
    if kind != "I" {
        return Err(format!(
            "{s:?}: only interval schedules (\"I|...\") are supported"
        ));
    }
    let start: i64 = match start.parse() {
        Ok(n) if n >= 0 && start.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(format!("{s:?}: start must be unix seconds")),
    };
    schedule(start, every)
}

/// One `from:to:KiB/s` window, checked.
pub(super) fn window(from: i64, to: i64, kib: i64) -> Result<String, String> {
    if !(0..=24).contains(&from) {
        return Err(format!("from_hour {from} is out of range 0-24"));
    }
    if !(0..=24).contains(&to) {
        return Err(format!("to_hour {to} is out of range 0-24"));
    }
    if from >= to {
        return Err(format!("from_hour {from} must be less than to_hour {to}"));
    }
    if kib <= 0 {
        return Err(format!("kib_per_s {kib} must be greater than 0"));
    }
    Ok(format!("{from}:{to}:{kib}"))
}

pub(super) fn raw_speed_limit(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for w in s.split('|') {
        let nums: Vec<Option<i64>> = w
            .split(':')
            .map(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| n.parse().ok())
                    .flatten()
            })
            .collect();
        let [Some(from), Some(to), Some(kib)] = nums[..] else {
            return Err(format!(
                "{w:?} is not \"<from hour>:<to hour>:<KiB/s>\" (windows joined by |)"
            ));
        };
        out.push(window(from, to, kib)?);
    }
    Ok(out.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for ok in ["P1D", "PT12H", "P1Y2M3W4DT5H6M7S", "PT30M", "P2W", "PT0H1M"] {
            assert!(iso8601_duration(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "P",
            "PT",
            "1 day",
            "P1",
            "P1DT",
            "PD",
            "P1H",
            "PT1D",
            "P1D2Y",
            "P0D",
            "PT0S",
            "p1d",
            "P1.5D",
            "P-1D",
            "P1DD",
            "P99999999999999999999D",
        ] {
            assert!(iso8601_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_epoch() {
        let dt: Datetime = "2024-10-21T06:57:27Z".parse().unwrap();
        assert_eq!(unix_seconds(&dt), Ok(1729493847));
        let dt: Datetime = "2024-10-21T14:57:27+08:00".parse().unwrap();
        assert_eq!(unix_seconds(&dt), Ok(1729493847));
        let local: Datetime = "2024-10-21T06:57:27".parse().unwrap();
        assert!(unix_seconds(&local).is_err());
        assert_eq!(
            schedule(1729493847, "P1D").as_deref(),
            Ok("I|1729493847|P1D")
        );
        assert_eq!(
            raw_schedule("I|1729493847|P1D").as_deref(),
            Ok("I|1729493847|P1D")
        );
        for bad in ["I|x|P1D", "I|1|1 day", "C|1|P1D", "I|1", "I|-1|P1D"] {
            assert!(raw_schedule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn speed_limits() {
        assert_eq!(
            raw_speed_limit("6:21:10240|0:6:1").as_deref(),
            Ok("6:21:10240|0:6:1")
        );
        for bad in [
            "6:21", "6:25:1", "21:6:1", "6:6:1", "6:21:0", "a:b:c", "", "6:21:1|",
        ] {
            assert!(raw_speed_limit(bad).is_err(), "{bad}");
        }
    }
}
