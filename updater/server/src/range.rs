//! The `Range: bytes=…` header of a payload download, so that a machine resumes an interrupted
//! download instead of starting over (RFC 9110, section 14). One range is served; a request for
//! several gets the whole file, which the RFC allows.

/// What to send for a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The whole file, 200.
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// No byte of the range is in the file, 416.
    Unsatisfiable,
}

/// Reads a `Range` header value against a file of `size` bytes. Anything unreadable means "the
/// whole file", as the RFC asks of a server that does not understand a range.
pub fn parse(header: Option<&str>, size: u64) -> Span {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Span::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse_u64 = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse_u64(last) {
            Some(0) => Span::Unsatisfiable,
            Some(n) if size > 0 => Span::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Some(_) => Span::Unsatisfiable,
            None => Span::Whole,
        },
        // `bytes=N-` or `bytes=N-M`.
        (false, _) => {
            let Some(start) = parse_u64(first) else {
                return Span::Whole;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse_u64(last)
            };
            match end {
                None => Span::Whole,
                Some(end) if end < start => Span::Whole,
                Some(_) if start >= size => Span::Unsatisfiable,
                Some(end) => Span::Part {
                    start,
                    end: end.min(size - 1),
                },
            }
        }
        (true, true) => Span::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Span};

    #[test]
    fn reads_the_three_forms_of_a_single_range() {
        assert_eq!(
            parse(Some("bytes=10-19"), 100),
            Span::Part { start: 10, end: 19 }
        );
        assert_eq!(
            parse(Some("bytes=90-"), 100),
            Span::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=-5"), 100),
            Span::Part { start: 95, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=-500"), 100),
            Span::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=50-5000"), 100),
            Span::Part { start: 50, end: 99 }
        );
    }

    #[test]
    fn serves_the_whole_file_or_refuses_as_the_rfc_says() {
        assert_eq!(parse(None, 100), Span::Whole);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 100), Span::Whole);
        assert_eq!(parse(Some("items=0-1"), 100), Span::Whole);
        assert_eq!(parse(Some("bytes=9-3"), 100), Span::Whole);
        assert_eq!(parse(Some("bytes=x-"), 100), Span::Whole);
        assert_eq!(parse(Some("bytes=100-"), 100), Span::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), Span::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Span::Unsatisfiable);
    }
}
