//! Durations as configured (`"15m"`, `"1h30m"`, `"500ms"`) and view granularities (time buckets).

use std::fmt;
use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a sequence of `<integer><unit>` terms, unit one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration (write e.g. \"15m\", \"1h30m\" or \"500ms\")".to_owned());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let bad = || {
            format!(
                "cannot read {text:?} as a duration (write e.g. \"15m\", \"1h30m\" or \"500ms\")"
            )
        };
        let number: u64 = number.parse().map_err(|_| bad())?;
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit.trim())
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        total_ms = number
            .checked_mul(scale)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = &rest[digits + unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats whole milliseconds with the largest units that fit exactly ("90s" is "1m30s").
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis() as u64;
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, scale) in UNITS {
        if ms >= scale {
            out.push_str(&format!("{}{name}", ms / scale));
            ms %= scale;
        }
    }
    out
}

/// The time bucket of a stored view: whole seconds from 1s to 1d that divide a day evenly, so that
/// buckets align to minutes, hours and days and a stored view can be rolled up to any coarser one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Granularity {
    seconds: u32,
}

impl Granularity {
    pub const DAY: Granularity = Granularity { seconds: 86_400 };

    pub fn parse(text: &str) -> Result<Self, String> {
        let duration = parse_duration(text)?;
        let ms = duration.as_millis();
        if ms % 1000 != 0 || ms == 0 {
            return Err(format!(
                "granularity {text:?} must be a whole number of seconds, from 1s to 1d"
            ));
        }
        let seconds = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        if seconds > Self::DAY.seconds || !Self::DAY.seconds.is_multiple_of(seconds) {
            return Err(format!(
                "granularity {text:?} must divide a day evenly, from 1s to 1d (e.g. 1s, 10s, 1m, 5m, 15m, 1h, 6h, 1d)"
            ));
        }
        Ok(Self { seconds })
    }

    pub fn seconds(self) -> u32 {
        self.seconds
    }

    pub fn millis(self) -> i64 {
        i64::from(self.seconds) * 1000
    }

    /// Start of the bucket holding `time_ms` (floor, also for times before 1970).
    pub fn bucket_start(self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis()) * self.millis()
    }

    /// Whether buckets of `self` nest exactly inside buckets of `coarser`.
    pub fn divides(self, coarser: Granularity) -> bool {
        coarser.seconds.is_multiple_of(self.seconds)
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(Duration::from_secs(u64::from(
            self.seconds,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        for bad in ["", "15", "m", "1w", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn granularities_must_divide_a_day() {
        for good in ["1s", "30s", "1m", "5m", "15m", "1h", "6h", "1d", "24h"] {
            assert!(Granularity::parse(good).is_ok(), "{good}");
        }
        for bad in ["7m", "500ms", "2d", "0s", "1m500ms"] {
            assert!(Granularity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Granularity::parse("60m").unwrap().to_string(), "1h");
    }

    #[test]
    fn buckets_floor_also_before_the_epoch() {
        let minute = Granularity::parse("1m").unwrap();
        assert_eq!(minute.bucket_start(125_000), 120_000);
        assert_eq!(minute.bucket_start(-1), -60_000);
        assert!(minute.divides(Granularity::parse("1h").unwrap()));
        assert!(!Granularity::parse("1h").unwrap().divides(minute));
    }
}
