//! The reboot window (`Thu 04:00` for `1h`, or `04:00` every day), as locksmith read it, and
//! Go-style durations. Times are UTC: the machine's clock is UTC and Kiln sets no time zone.

/// Seconds in a day and a week.
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// When reboots may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// 0 = Monday … 6 = Sunday; `None` means every day.
    pub weekday: Option<u8>,
    /// Seconds after midnight UTC.
    pub start_secs: u64,
    pub length_secs: u64,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Window {
    /// Reads `Thu 04:00` / `thursday 4:00` / `04:00` and a length like `1h30m`.
    pub fn parse(start: &str, length: &str) -> Result<Window, String> {
        let bad = || format!("{start:?} is not a window start like \"Thu 04:00\" or \"04:00\"");
        let parts: Vec<&str> = start.split_whitespace().collect();
        let (weekday, time) = match parts.as_slice() {
            [time] => (None, *time),
            [day, time] => (Some(weekday(day).ok_or_else(bad)?), *time),
            _ => return Err(bad()),
        };
        let (h, m) = time.split_once(':').ok_or_else(bad)?;
        let hour: u64 = h.parse().map_err(|_| bad())?;
        let minute: u64 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 || m.len() != 2 {
            return Err(bad());
        }
        let length_secs = duration_secs(length)
            .filter(|l| *l > 0 && *l <= WEEK)
            .ok_or_else(|| {
                format!("{length:?} is not a duration like 1h or 1h30m (at most a week)")
            })?;
        Ok(Window {
            weekday,
            start_secs: hour * 3600 + minute * 60,
            length_secs,
        })
    }

    /// Seconds from `now` (Unix time) until the window is open: 0 when it is open now.
    pub fn wait_secs(&self, now: u64) -> u64 {
        let (period, start) = match self.weekday {
            Some(day) => (WEEK, u64::from(day) * DAY + self.start_secs),
            None => (DAY, self.start_secs),
        };
        // 1970-01-01 was a Thursday: shift so that position 0 is Monday 00:00.
        let position = (now + 3 * DAY) % period;
        let since_start = (position + period - start) % period;
        if since_start < self.length_secs {
            0
        } else {
            period - since_start
        }
    }
}

fn weekday(text: &str) -> Option<u8> {
    let l = text.to_ascii_lowercase();
    DAYS.iter()
        .position(|full| l == *full || (l.len() == 3 && full.starts_with(&l)))
        .and_then(|i| u8::try_from(i).ok())
}

/// A Go-style duration (`1h`, `90m`, `1h30m`, `45s`) in seconds.
pub fn duration_secs(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = match rest[digits..].chars().next()? {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-19 was a Thursday; this is 00:00 UTC that day.
    const THU_MIDNIGHT: u64 = 1_795_046_400;

    #[test]
    fn weekly_window_opens_and_closes() {
        let w = Window::parse("Thu 04:00", "1h").unwrap();
        assert_eq!(w.wait_secs(THU_MIDNIGHT), 4 * 3600);
        assert_eq!(w.wait_secs(THU_MIDNIGHT + 4 * 3600), 0);
        assert_eq!(w.wait_secs(THU_MIDNIGHT + 4 * 3600 + 3599), 0);
        assert_eq!(w.wait_secs(THU_MIDNIGHT + 5 * 3600), WEEK - 3600);
    }

    #[test]
    fn daily_window_and_spellings() {
        let w = Window::parse("23:30", "1h").unwrap();
        assert_eq!(w.wait_secs(THU_MIDNIGHT), 0, "open across midnight");
        assert_eq!(w.wait_secs(THU_MIDNIGHT + 1800), 23 * 3600);
        assert_eq!(
            Window::parse("thursday 4:00", "90m").unwrap().length_secs,
            5400
        );
        assert!(Window::parse("Thu 4", "1h").is_err());
        assert!(Window::parse("Thu 04:00", "1x").is_err());
        assert!(Window::parse("Someday 04:00", "1h").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs("1h30m"), Some(5400));
        assert_eq!(duration_secs("45s"), Some(45));
        assert_eq!(duration_secs("h"), None);
        assert_eq!(duration_secs("10"), None);
    }
}
