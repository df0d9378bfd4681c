//! Cron schedules as CronJobs use them (five fields: minute, hour, day of month, month,
//! day of week; `*`, lists, ranges, steps, month and day names, and the `@hourly`-style
//! macros), evaluated in UTC.

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day of month and day of week both restricted: either may match (cron's rule).
    either_day: bool,
}

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("zero step in {part:?}"));
        }
        let value = |s: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                return Ok(min + i as u32);
            }
            s.parse::<u32>().map_err(|_| format!("bad value {s:?}"))
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is out of range {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!("expected 5 fields, found {}", fields.len()));
        };
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let mut weekdays = field(weekday, 0, 7, DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        Ok(Schedule {
            minutes: field(minute, 0, 59, &[])?,
            hours: field(hour, 0, 23, &[])? as u32,
            days: field(day, 1, 31, &[])? as u32,
            months: field(month, 1, 12, MONTHS)? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            either_day: restricted(day) && restricted(weekday),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first scheduled time strictly after `after`, within five years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(TimeZone::UTC).datetime();
        let mut t: DateTime = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while t <= limit {
            if self.months & (1 << t.month()) == 0 {
                let first = Date::new(t.year(), t.month(), 1)
                    .ok()?
                    .checked_add(1.month())
                    .ok()?;
                t = first.to_datetime(k8s_openapi::jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(k8s_openapi::jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            return t.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        }
        None
    }

    /// The latest scheduled time in `(after, now]`, and how many there were (counted
    /// up to 100; past that, the search jumps to the last week, so a CronJob that missed
    /// many runs starts only the most recent one).
    pub fn latest_between(&self, after: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
        let mut latest = None;
        let mut count = 0;
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            latest = Some(next);
            count += 1;
            t = next;
            if count == 100 {
                let week_ago = now.checked_sub(168.hours()).unwrap_or(now);
                if week_ago > t {
                    t = week_ago;
                }
            }
        }
        (latest, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn next_times_follow_the_fields() {
        let every5 = Schedule::parse("*/5 * * * *").expect("parse");
        assert_eq!(
            every5.next_after(at("2026-01-01T10:02:30Z")),
            Some(at("2026-01-01T10:05:00Z"))
        );
        let daily = Schedule::parse("@daily").expect("parse");
        assert_eq!(
            daily.next_after(at("2026-01-31T10:00:00Z")),
            Some(at("2026-02-01T00:00:00Z"))
        );
        let weekdays = Schedule::parse("30 9 * * mon-fri").expect("parse");
        // 2026-01-03 is a Saturday.
        assert_eq!(
            weekdays.next_after(at("2026-01-03T12:00:00Z")),
            Some(at("2026-01-05T09:30:00Z"))
        );
        let either = Schedule::parse("0 0 13 * 5").expect("parse");
        // The 13th, or any Friday: 2026-01-09 is a Friday.
        assert_eq!(
            either.next_after(at("2026-01-05T00:00:00Z")),
            Some(at("2026-01-09T00:00:00Z"))
        );
        let (latest, count) =
            every5.latest_between(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:17:00Z"));
        assert_eq!((latest, count), (Some(at("2026-01-01T10:15:00Z")), 3));
        // Many missed runs: the most recent one is found.
        let (latest, _) =
            every5.latest_between(at("2025-01-01T00:00:00Z"), at("2026-01-01T10:17:00Z"));
        assert_eq!(latest, Some(at("2026-01-01T10:15:00Z")));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * *").is_err());
    }
}
