//! How versions order: the update server picks the newest payload by it, and the update agent
//! refuses one that is not newer than what runs (a downgrade).

use std::cmp::Ordering;

/// Orders versions such as `1.2.10` > `1.2.9` > `1.2.9-rc1`: dot-separated parts compare as
/// numbers when both are numbers, a pre-release suffix sorts before the release.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split_pre(a);
    let (b_core, b_pre) = split_pre(b);
    let mut left = a_core.split('.');
    let mut right = b_core.split('.');
    loop {
        let ordering = match (left.next(), right.next()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    }
}

fn split_pre(version: &str) -> (&str, Option<&str>) {
    // Build metadata (`+…`) does not order versions.
    let version = version.split('+').next().unwrap_or(version);
    match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        use Ordering::*;
        assert_eq!(compare_versions("1.2.10", "1.2.9"), Greater);
        assert_eq!(compare_versions("1.2.9", "1.2.9"), Equal);
        assert_eq!(compare_versions("1.2", "1.2.1"), Less);
        assert_eq!(compare_versions("1.3.0-rc1", "1.3.0"), Less);
        assert_eq!(compare_versions("1.3.0-rc2", "1.3.0-rc1"), Greater);
        assert_eq!(compare_versions("1.3.0+build5", "1.3.0"), Equal);
        assert_eq!(compare_versions("3732.0.0", "2512.2.0"), Greater);
        assert_eq!(compare_versions("0.1.0.2", "0.1.0"), Greater);
        assert_eq!(compare_versions("0.0.9.1", "0.1.0"), Less);
    }
}
