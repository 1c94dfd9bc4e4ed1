//! Durations written the way Go's `time.ParseDuration` reads them (`300s`, `1h30m`, `1.5h`, `100ms`).
//!
//! Distribution's configuration stores durations as Go `time.Duration`, so a YAML string is parsed
//! with Go's syntax and a bare integer is a count of nanoseconds. [`GoDuration`] accepts both and
//! prints itself back in Go's canonical form (`5m0s`), so rendered configurations parse again.
//! Invariant: a `GoDuration` is never negative (Go allows negative durations; no registry setting
//! means anything by one, so they are rejected when parsed).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration read and written in Go's `time.Duration` syntax.
///
/// Accepted input: a string such as `300s`, `5m`, `1h30m`, `1.5h`, `100ms`, `250us`, `0`, or a
/// non-negative integer meaning nanoseconds (as Distribution's YAML decoder treats it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// A duration of `secs` whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        GoDuration(Duration::from_secs(secs))
    }

    /// The wrapped [`Duration`].
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationParseError {
    input: String,
    reason: &'static str,
}

/// Nanoseconds per unit, longest suffixes first is not needed: units are matched whole.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{00b5}s", 1_000), // micro sign
    ("\u{03bc}s", 1_000), // Greek small letter mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// Go's `time.Duration` is an `int64` of nanoseconds; larger values are rejected like Go does.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Fraction digits beyond this cannot change a nanosecond count and are skipped.
const MAX_FRACTION_DIGITS: usize = 30;

impl FromStr for GoDuration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationParseError {
            input: input.to_owned(),
            reason,
        };
        let (negative, mut rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        if rest == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if rest.is_empty() {
            return Err(fail(
                "expected a number followed by a unit (ns, us, ms, s, m, h)",
            ));
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            // Integer part.
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (int_digits, after) = rest.split_at(int_len);
            rest = after;
            // Optional fraction.
            let mut frac_digits = "";
            if let Some(after_dot) = rest.strip_prefix('.') {
                let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                frac_digits = &after_dot[..len];
                rest = &after_dot[len..];
            }
            if int_digits.is_empty() && frac_digits.is_empty() {
                return Err(fail("expected a number before each unit"));
            }
            // Unit: everything up to the next digit or dot.
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit() || *c == '.')
                .map_or(rest.len(), |(i, _)| i);
            let (unit, after) = rest.split_at(unit_len);
            rest = after;
            if unit.is_empty() {
                return Err(fail("missing unit (ns, us, ms, s, m, h)"));
            }
            let scale = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| fail("unknown unit (expected ns, us, ms, s, m or h)"))?;

            let whole: u128 = if int_digits.is_empty() {
                0
            } else {
                int_digits
                    .parse::<u128>()
                    .map_err(|_| fail("value out of range"))?
            };
            let mut nanos = whole
                .checked_mul(scale)
                .filter(|n| *n <= MAX_NANOS)
                .ok_or_else(|| fail("value out of range"))?;
            let frac = &frac_digits[..frac_digits.len().min(MAX_FRACTION_DIGITS)];
            if !frac.is_empty() {
                let numerator: u128 = frac.parse().map_err(|_| fail("value out of range"))?;
                let denominator = 10u128.pow(frac.len() as u32);
                // numerator < 10^30 and scale < 2^42, so the product fits in u128.
                nanos += numerator * scale / denominator;
            }
            total = total
                .checked_add(nanos)
                .filter(|n| *n <= MAX_NANOS)
                .ok_or_else(|| fail("value out of range"))?;
        }
        if negative && total > 0 {
            return Err(fail("negative durations are not allowed"));
        }
        let secs = (total / 1_000_000_000) as u64;
        let subsec = (total % 1_000_000_000) as u32;
        Ok(GoDuration(Duration::new(secs, subsec)))
    }
}

/// Writes `value / 10^decimals` with trailing fractional zeros removed, e.g. `(1500, 3)` → `1.5`.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, decimals: u32) -> fmt::Result {
    let scale = 10u128.pow(decimals);
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return write!(f, "{whole}");
    }
    let digits = format!("{frac:0width$}", width = decimals as usize);
    write!(f, "{whole}.{}", digits.trim_end_matches('0'))
}

/// Go's canonical `Duration.String()` form: `0s`, `1.5ms`, `5m0s`, `1h30m0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            write_decimal(f, nanos, 3)?;
            return f.write_str("\u{00b5}s");
        }
        if nanos < 1_000_000_000 {
            write_decimal(f, nanos, 6)?;
            return f.write_str("ms");
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = (nanos / 60_000_000_000) % 60;
        let sec_nanos = nanos % 60_000_000_000;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write_decimal(f, sec_nanos, 9)?;
        f.write_str("s")
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GoDurationVisitor;

        impl Visitor<'_> for GoDurationVisitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration such as 300s, 5m or 1h30m, or an integer of nanoseconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.trim().parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                Ok(GoDuration(Duration::from_nanos(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                u64::try_from(v)
                    .map(|n| GoDuration(Duration::from_nanos(n)))
                    .map_err(|_| {
                        E::custom(format!(
                            "invalid duration {v}: negative durations are not allowed"
                        ))
                    })
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoDuration, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a number without a unit counts nanoseconds and must be a whole number; write e.g. 1.5s"
                )))
            }
        }

        deserializer.deserialize_any(GoDurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Duration {
        s.parse::<GoDuration>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .0
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse("300s"), Duration::from_secs(300));
        assert_eq!(parse("5m"), Duration::from_secs(300));
        assert_eq!(parse("1h30m"), Duration::from_secs(5400));
        assert_eq!(parse("1.5h"), Duration::from_secs(5400));
        assert_eq!(parse("100ms"), Duration::from_millis(100));
        assert_eq!(parse("0"), Duration::ZERO);
        assert_eq!(parse("-0"), Duration::ZERO);
        assert_eq!(parse("+2s"), Duration::from_secs(2));
        assert_eq!(parse("250us"), Duration::from_micros(250));
        assert_eq!(parse("250\u{00b5}s"), Duration::from_micros(250));
        assert_eq!(parse("250\u{03bc}s"), Duration::from_micros(250));
        assert_eq!(parse("7ns"), Duration::from_nanos(7));
        assert_eq!(parse(".5s"), Duration::from_millis(500));
        assert_eq!(parse("1.s"), Duration::from_secs(1));
        assert_eq!(parse("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(parse("168h"), Duration::from_secs(168 * 3600));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "5",
            "5x",
            "s",
            ".",
            "-1s",
            "1h-5m",
            "1..5s",
            "9999999999999h",
            "3 s",
            "1sm",
        ] {
            assert!(
                bad.parse::<GoDuration>().is_err(),
                "{bad:?} should not parse"
            );
        }
        let err = "5x".parse::<GoDuration>().unwrap_err().to_string();
        assert!(err.starts_with("invalid duration \"5x\""), "{err}");
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5\u{00b5}s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_millis(9_900_500), "2h45m0.5s"),
        ];
        for (d, want) in cases {
            let shown = GoDuration(d).to_string();
            assert_eq!(shown, want);
            assert_eq!(parse(&shown), d, "round trip of {shown}");
        }
    }
}
