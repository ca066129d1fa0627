//! Five-field cron expressions (`BACKUP_SCHEDULE`), as Vixie cron reads
//! them: minute, hour, day of month, month, day of week; `*`, lists,
//! ranges, steps, month and day names, `@hourly`/`@daily`/`@weekly`/
//! `@monthly`/`@yearly`. When both day fields are restricted, a day
//! matching either runs. Times are UTC (the container's cron in Spilo runs
//! in UTC too).

use time::{Date, Duration, OffsetDateTime, Time};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month given (not `*`).
    dom_restricted: bool,
    /// Day of week given (not `*`).
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = match expr.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = fields[..] else {
            return Err(format!("{} fields; a cron expression has five (minute hour day month weekday)", fields.len()));
        };
        let minutes = field(mi, 0, 59, &[], "minute")?;
        let hours = field(h, 0, 23, &[], "hour")? as u32;
        let days = field(dom, 1, 31, &[], "day of month")? as u32;
        let months = field(mo, 1, 12, &MONTHS, "month")? as u16;
        // 7 is Sunday too.
        let dow_bits = field(dow, 0, 7, &DAYS, "day of week")?;
        let weekdays = ((dow_bits | (dow_bits >> 7)) & 0x7f) as u8;
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            dom_restricted: !dom.starts_with('*'),
            dow_restricted: !dow.starts_with('*'),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << u8::from(d.month())) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().number_days_from_sunday()) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` (to the minute) that matches;
    /// `None` if none within five years (`0 0 30 2 *`).
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.to_offset(time::UtcOffset::UTC);
        let mut day = after.date();
        let mut from = Some(after.time());
        for _ in 0..(5 * 366) {
            if self.day_matches(day) {
                for h in 0..24u8 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60u8 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let t = Time::from_hms(h, m, 0).expect("h < 24, m < 60");
                        if from.is_some_and(|f| t <= f) {
                            continue;
                        }
                        return Some(day.with_time(t).assume_utc());
                    }
                }
            }
            from = None;
            day = day.checked_add(Duration::days(1))?;
        }
        None
    }
}

/// One field → a bit set of the values it allows.
fn field(spec: &str, lo: u32, hi: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0.
            return Ok(i as u32 + lo);
        }
        let n: u32 = s.parse().map_err(|_| format!("{what} {s:?} is not a number"))?;
        if !(lo..=hi).contains(&n) {
            return Err(format!("{what} {n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for item in spec.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| format!("{what} step {s:?} is not a number"))?;
                if s == 0 {
                    return Err(format!("{what} step 0"));
                }
                (r, s)
            }
            None => (item, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            return Err(format!("{what} range {range:?} runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    if bits == 0 {
        return Err(format!("{what} {spec:?} is empty"));
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, after: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(expr).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn next_fire_times() {
        let t = datetime!(2026-12-03 17:05:30 UTC);
        let cases = [
            ("0 1 * * *", datetime!(2026-12-04 01:00 UTC)),
            ("* * * * *", datetime!(2026-12-03 17:06 UTC)),
            ("*/15 * * * *", datetime!(2026-12-03 17:15 UTC)),
            ("5 17 * * *", datetime!(2026-12-04 17:05 UTC)),
            ("30 2 * * sun", datetime!(2026-12-06 02:30 UTC)),
            ("0 0 1 jan *", datetime!(2027-01-01 00:00 UTC)),
            ("0 0 29 2 *", datetime!(2028-02-29 00:00 UTC)),
            // Both day fields restricted: either matches (Friday the 4th, and the 10th).
            ("0 0 10 * 5", datetime!(2026-12-04 00:00 UTC)),
            ("0 12 * * 1-5", datetime!(2026-12-04 12:00 UTC)),
            ("0 0 * * 7", datetime!(2026-12-06 00:00 UTC)),
            ("10-20/5 18 * * *", datetime!(2026-12-03 18:10 UTC)),
            ("@hourly", datetime!(2026-12-03 18:00 UTC)),
            ("@daily", datetime!(2026-12-04 00:00 UTC)),
            ("@weekly", datetime!(2026-12-06 00:00 UTC)),
        ];
        for (expr, want) in cases {
            assert_eq!(next(expr, t), want, "{expr}");
        }
        // Exactly on a fire time: the next one, never the same minute again.
        assert_eq!(next("0 1 * * *", datetime!(2026-12-04 01:00 UTC)), datetime!(2026-12-05 01:00 UTC));
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (expr, needle) in [
            ("0 1 * *", "4 fields"),
            ("60 * * * *", "minute 60"),
            ("* 24 * * *", "hour 24"),
            ("* * 0 * *", "day of month 0"),
            ("* * * 13 *", "month 13"),
            ("* * * * 8", "day of week 8"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
        ] {
            let e = Schedule::parse(expr).unwrap_err();
            assert!(e.contains(needle), "{expr}: {e}");
        }
        assert!(Schedule::parse("0 0 30 2 *").unwrap().next_after(datetime!(2026-01-01 0:00 UTC)).is_none());
    }
}
