//! Durations as the config writes them: `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`.

use std::time::Duration;

/// Why a duration string is not one: every message says how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration; write a number and a unit, e.g. \"30s\" (units: ms, s, m, h, d)")]
    Empty,
    /// A negative duration.
    #[error("{0:?} is negative; durations are zero or more, e.g. \"30s\"")]
    Negative(String),
    /// A number without a unit.
    #[error("{0:?} has no unit; write e.g. \"{0}s\" (units: ms, s, m, h, d)")]
    NoUnit(String),
    /// Something that does not start with a whole number.
    #[error("{0:?} is not a duration; write a whole number and a unit, e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"7d\"")]
    NotANumber(String),
    /// An unknown unit.
    #[error("{text:?} has an unknown unit {unit:?}; use ms, s, m, h or d, e.g. \"30s\"")]
    UnknownUnit {
        /// The whole duration as given.
        text: String,
        /// The unit as given.
        unit: String,
    },
    /// More than a `Duration` holds.
    #[error("{0:?} is too long; use a smaller number")]
    TooLarge(String),
}

/// Parses a config duration: a whole number directly followed by one of the units `ms`, `s`,
/// `m`, `h`, `d` (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`; `"0s"` is zero). Surrounding
/// whitespace is ignored; fractions, signs, several units and a missing unit are refused.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(pgevents_config::parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(pgevents_config::parse_duration("5").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(DurationError::Negative(trimmed.into()));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError::NotANumber(trimmed.into()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| DurationError::TooLarge(trimmed.into()))?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "" => return Err(DurationError::NoUnit(trimmed.into())),
        _ if unit.starts_with('.') => return Err(DurationError::NotANumber(trimmed.into())),
        _ => {
            return Err(DurationError::UnknownUnit {
                text: trimmed.into(),
                unit: unit.into(),
            })
        }
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::TooLarge(trimmed.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("0ms", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(7 * 86400)),
            (" 1s ", Duration::from_secs(1)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refusals_say_what_to_write() {
        assert_eq!(parse_duration("5"), Err(DurationError::NoUnit("5".into())));
        assert_eq!(
            parse_duration("5").map_err(|e| e.to_string()),
            Err("\"5\" has no unit; write e.g. \"5s\" (units: ms, s, m, h, d)".into())
        );
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            parse_duration("1x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        for bad in [
            "s", "1.5s", "+1s", "1 s", "1S", "1sec", "1h30m", "ms5", "1e3ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::TooLarge(_))
        ));
    }
}
