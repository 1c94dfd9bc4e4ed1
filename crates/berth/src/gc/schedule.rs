//! Recurring runs on a cron schedule, as Harbor writes them: six fields with seconds first
//! (`0 0 0 * * *` is every day at midnight), five without; times are UTC. Harbor's preset
//! schedule types (`Hourly`, `Daily`, `Weekly`) stand for fixed expressions.
//!
//! A schedule is stored, never held in memory: whichever instance looks decides from the
//! stored start of the last scheduled run whether the next one is due, under the job's lease,
//! so one run happens per occurrence however many instances look.

use std::str::FromStr;

/// A parsed cron expression.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
    text: String,
}

impl Schedule {
    /// The expression, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a schedule needs a cron expression".into());
        }
        let cron = croner::Cron::from_str(text)
            .map_err(|e| format!("{text:?} is not a cron expression: {e}"))?;
        Ok(Schedule {
            cron,
            text: text.to_string(),
        })
    }

    /// The expression as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first occurrence strictly after `ms` (Unix milliseconds), if there is one.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let t = jiff::Timestamp::from_millisecond(ms).ok()?;
        let z = t.to_zoned(jiff::tz::TimeZone::UTC);
        let next = self.cron.find_next_occurrence(&z, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The next occurrence from now (Unix milliseconds), if there is one.
    pub fn next(&self) -> Option<i64> {
        self.next_after(jiff::Timestamp::now().as_millisecond())
    }

    /// Whether a run is due at `now` when the last one started at `since` (or, never run, the
    /// schedule was set then): an occurrence came between the two. Unix milliseconds.
    pub fn due(&self, since: i64, now: i64) -> bool {
        self.next_after(since).is_some_and(|next| next <= now)
    }
}

/// The expression Harbor's schedule type `kind` stands for: `Some(None)` for `Custom` (the
/// request's own), `None` for a type that is no schedule.
pub fn preset(kind: &str) -> Option<Option<&'static str>> {
    match kind {
        "Hourly" => Some(Some("0 0 * * * *")),
        "Daily" => Some(Some("0 0 0 * * *")),
        "Weekly" => Some(Some("0 0 0 * * 0")),
        "Custom" | "Schedule" => Some(None),
        _ => None,
    }
}

/// Harbor's type for a stored expression: the preset it is, or `Custom`.
pub fn kind_of(cron: &str) -> &'static str {
    ["Hourly", "Daily", "Weekly"]
        .into_iter()
        .find(|k| preset(k) == Some(Some(cron)))
        .unwrap_or("Custom")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn harbor_expressions_have_seconds_first_and_run_in_utc() {
        let daily = Schedule::parse("0 0 0 * * *").unwrap();
        assert_eq!(
            daily.next_after(ms("2026-12-03T15:04:05Z")),
            Some(ms("2026-12-04T00:00:00Z"))
        );
        let weekly = Schedule::parse(preset("Weekly").unwrap().unwrap()).unwrap();
        // 2026-12-03 is a Thursday; the next Sunday is the 6th.
        assert_eq!(
            weekly.next_after(ms("2026-12-03T15:04:05Z")),
            Some(ms("2026-12-06T00:00:00Z"))
        );
        let five = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            five.next_after(ms("2026-12-03T15:04:05Z")),
            Some(ms("2026-12-04T02:30:00Z"))
        );
        // Strictly after: a run that started on an occurrence waits for the next one.
        let hourly = Schedule::parse("0 0 * * * *").unwrap();
        assert_eq!(
            hourly.next_after(ms("2026-12-03T15:00:00Z")),
            Some(ms("2026-12-03T16:00:00Z"))
        );
        for bad in ["", "   ", "not cron", "0 0 0 * * * * *", "61 * * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(kind_of("0 0 0 * * *"), "Daily");
        assert_eq!(kind_of("0 15 3 * * *"), "Custom");
        assert_eq!(preset("None"), None);
    }

    #[test]
    fn a_run_is_due_once_an_occurrence_passed_since_the_last() {
        let hourly = Schedule::parse("0 0 * * * *").unwrap();
        let last = ms("2026-12-03T15:00:00Z");
        assert!(!hourly.due(last, ms("2026-12-03T15:59:59Z")));
        assert!(hourly.due(last, ms("2026-12-03T16:00:00Z")));
        assert!(
            hourly.due(last, ms("2026-12-03T19:30:00Z")),
            "missed ones run once"
        );
    }
}
