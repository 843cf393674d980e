//! The reboot window (`Thu 04:00` for `1h`, or `04:00` every day) and Go-style durations
//! (`1h`, `90m`, `1h30m`, `45s`), as locksmith read them. Times are UTC: the machine's clock is UTC
//! and Kiln sets no time zone.

use std::fmt;

/// Seconds in a day and a week.
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

const DAYS: [(Weekday, &str); 7] = [
    (Weekday::Mon, "monday"),
    (Weekday::Tue, "tuesday"),
    (Weekday::Wed, "wednesday"),
    (Weekday::Thu, "thursday"),
    (Weekday::Fri, "friday"),
    (Weekday::Sat, "saturday"),
    (Weekday::Sun, "sunday"),
];

impl Weekday {
    /// `Thu`, `thu`, `Thursday`, `THURSDAY`.
    pub fn parse(text: &str) -> Option<Weekday> {
        let l = text.to_ascii_lowercase();
        DAYS.iter()
            .find(|(_, full)| l == *full || (l.len() == 3 && full.starts_with(&l)))
            .map(|(day, _)| *day)
    }

    /// Days after Monday.
    pub fn index(self) -> u64 {
        self as u64
    }

    pub fn as_str(self) -> &'static str {
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][self as usize]
    }
}

/// When reboots may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `None` means every day.
    pub weekday: Option<Weekday>,
    /// Seconds after midnight UTC.
    pub start_secs: u64,
    pub length_secs: u64,
}

impl Window {
    /// Reads `Thu 04:00` / `thursday 4:00` / `04:00` and a length like `1h30m` (at most a week).
    /// The error says which of the two is wrong and what to write.
    pub fn parse(start: &str, length: &str) -> Result<Window, WindowError> {
        let bad = || WindowError::Start(start.to_owned());
        let parts: Vec<&str> = start.split_whitespace().collect();
        let (weekday, time) = match parts.as_slice() {
            [time] => (None, *time),
            [day, time] => (Some(Weekday::parse(day).ok_or_else(bad)?), *time),
            _ => return Err(bad()),
        };
        let (h, m) = time.split_once(':').ok_or_else(bad)?;
        let hour: u64 = h.parse().map_err(|_| bad())?;
        let minute: u64 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 || m.len() != 2 || h.starts_with('+') {
            return Err(bad());
        }
        let length_secs = duration_secs(length)
            .filter(|l| *l > 0 && *l <= WEEK)
            .ok_or_else(|| WindowError::Length(length.to_owned()))?;
        Ok(Window {
            weekday,
            start_secs: hour * 3600 + minute * 60,
            length_secs,
        })
    }

    /// The start in the form `Thu 04:00` (or `04:00` for every day).
    pub fn start_text(&self) -> String {
        let (hour, minute) = (self.start_secs / 3600, self.start_secs % 3600 / 60);
        match self.weekday {
            Some(d) => format!("{} {hour:02}:{minute:02}", d.as_str()),
            None => format!("{hour:02}:{minute:02}"),
        }
    }

    /// The length in the form `1h30m`.
    pub fn length_text(&self) -> String {
        duration_text(self.length_secs)
    }

    /// Seconds from `now` (Unix time) until the window is open: 0 when it is open now.
    pub fn wait_secs(&self, now: u64) -> u64 {
        let (period, start) = match self.weekday {
            Some(day) => (WEEK, day.index() * DAY + self.start_secs),
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

/// Which half of a reboot window is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{0:?} is not a window start like \"Thu 04:00\" or \"04:00\"")]
    Start(String),
    #[error(
        "{0:?} is not a window length like 1h, 30m or 1h30m, longer than 0 and at most a week"
    )]
    Length(String),
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

/// Seconds as a Go-style duration: `1h30m`, `45s`, `0s`.
pub fn duration_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} for {}", self.start_text(), self.length_text())
    }
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
        let w = Window::parse("thursday 4:00", "90m").unwrap();
        assert_eq!(
            (w.start_text(), w.length_text()),
            ("Thu 04:00".into(), "1h30m".into())
        );
        assert_eq!(
            Window::parse("Thu 4", "1h"),
            Err(WindowError::Start("Thu 4".into()))
        );
        assert_eq!(
            Window::parse("Thu 04:00", "1x"),
            Err(WindowError::Length("1x".into()))
        );
        assert!(Window::parse("Thu 04:00", "8d").is_err());
        assert!(Window::parse("Thu 04:00", "169h").is_err());
        assert!(Window::parse("Someday 04:00", "1h").is_err());
        assert!(Window::parse("+4:00", "1h").is_err());
    }

    #[test]
    fn weekdays() {
        assert_eq!(Weekday::parse("thu"), Some(Weekday::Thu));
        assert_eq!(Weekday::parse("SUNDAY"), Some(Weekday::Sun));
        assert_eq!(Weekday::parse("th"), None);
        assert_eq!(Weekday::Sun.index(), 6);
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs("1h30m"), Some(5400));
        assert_eq!(duration_secs("45s"), Some(45));
        assert_eq!(duration_secs("h"), None);
        assert_eq!(duration_secs("10"), None);
        for secs in [1, 45, 60, 3600, 5400, 3661, 7 * 86_400] {
            assert_eq!(duration_secs(&duration_text(secs)), Some(secs));
        }
    }
}
