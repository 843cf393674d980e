//! The 32-byte short directory entry with the 8.3 name it stores, the attribute bits (the
//! long-name mark among them), and FAT's local-time timestamps (which we treat as UTC).

use super::geometry::{get16, get32, put16, put32};
use crate::civil::{civil_from_days, days_from_civil};

pub(super) const ATTR_VOLUME_ID: u8 = 0x08;
pub(super) const ATTR_DIRECTORY: u8 = 0x10;
pub(super) const ATTR_ARCHIVE: u8 = 0x20;
/// Read-only + hidden + system + volume id: the mark of a long-name entry.
pub(super) const ATTR_LFN: u8 = 0x0F;
/// First name byte of a deleted entry.
pub(super) const DELETED: u8 = 0xE5;

/// An 8.3 name as stored: 8 bytes of base and 3 of extension, space padded.
pub(super) type RawShort = [u8; 11];

/// A short (8.3) directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShortEntry {
    pub name: RawShort,
    pub attr: u8,
    pub ntres: u8,
    pub crt_tenth: u8,
    pub crt_time: u16,
    pub crt_date: u16,
    pub acc_date: u16,
    pub cluster: u32,
    pub wrt_time: u16,
    pub wrt_date: u16,
    pub size: u32,
}

impl ShortEntry {
    /// An entry whose creation, write and access times are all `mtime`.
    pub fn new(name: RawShort, attr: u8, cluster: u32, size: u32, mtime: i64) -> Self {
        let t = FatTime::from_unix(mtime);
        ShortEntry {
            name,
            attr,
            ntres: 0,
            crt_tenth: t.tenths,
            crt_time: t.time,
            crt_date: t.date,
            acc_date: t.date,
            cluster,
            wrt_time: t.time,
            wrt_date: t.date,
            size,
        }
    }

    /// Sets the write and access times (an update keeps the creation time).
    pub fn touch(&mut self, mtime: i64) {
        let t = FatTime::from_unix(mtime);
        self.wrt_time = t.time;
        self.wrt_date = t.date;
        self.acc_date = t.date;
    }

    pub fn encode(&self) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&self.name);
        e[11] = self.attr;
        e[12] = self.ntres;
        e[13] = self.crt_tenth;
        put16(&mut e, 14, self.crt_time);
        put16(&mut e, 16, self.crt_date);
        put16(&mut e, 18, self.acc_date);
        put16(&mut e, 20, (self.cluster >> 16) as u16);
        put16(&mut e, 22, self.wrt_time);
        put16(&mut e, 24, self.wrt_date);
        put16(&mut e, 26, self.cluster as u16);
        put32(&mut e, 28, self.size);
        e
    }

    pub fn decode(e: &[u8]) -> Self {
        let mut name = [0u8; 11];
        name.copy_from_slice(&e[..11]);
        ShortEntry {
            name,
            attr: e[11],
            ntres: e[12],
            crt_tenth: e[13],
            crt_time: get16(e, 14),
            crt_date: get16(e, 16),
            acc_date: get16(e, 18),
            cluster: u32::from(get16(e, 20)) << 16 | u32::from(get16(e, 26)),
            wrt_time: get16(e, 22),
            wrt_date: get16(e, 24),
            size: get32(e, 28),
        }
    }

    pub fn mtime(&self) -> i64 {
        FatTime {
            date: self.wrt_date,
            time: self.wrt_time,
            tenths: 0,
        }
        .to_unix()
    }
}

/// A FAT date and time: 2-second resolution (the creation time adds 10 ms units), years
/// 1980 to 2107, no time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FatTime {
    pub date: u16,
    pub time: u16,
    pub tenths: u8,
}

/// 1980-01-01 00:00:00 UTC, FAT's first second.
const FAT_EPOCH: i64 = 315_532_800;

impl FatTime {
    /// Converts seconds since 1970 (UTC) to FAT's fields. Times before 1980-01-01 become that
    /// date, times after 2107-12-31 23:59:58 become that time; odd seconds are kept in the
    /// creation time's 10 ms field (write times round down to even seconds).
    pub fn from_unix(unix: i64) -> Self {
        let last = days_from_civil(2108, 1, 1) * 86_400 - 2;
        let t = unix.clamp(FAT_EPOCH, last);
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let date = ((y - 1980) as u16) << 9 | (m as u16) << 5 | d as u16;
        let time =
            ((secs / 3600) as u16) << 11 | ((secs / 60 % 60) as u16) << 5 | (secs % 60 / 2) as u16;
        FatTime {
            date,
            time,
            tenths: if secs % 2 == 1 { 100 } else { 0 },
        }
    }

    /// Back to seconds since 1970, for a date that tools wrote (out-of-range fields are
    /// clamped rather than refused: a bad timestamp should not hide a file).
    pub fn to_unix(self) -> i64 {
        let y = 1980 + i64::from(self.date >> 9);
        let m = i64::from((self.date >> 5) & 0xF).clamp(1, 12);
        let d = i64::from(self.date & 0x1F).max(1);
        let secs = i64::from(self.time >> 11) * 3600
            + i64::from((self.time >> 5) & 0x3F) * 60
            + i64::from(self.time & 0x1F) * 2
            + i64::from(self.tenths / 100);
        days_from_civil(y, m, d) * 86_400 + secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_clamp_to_fats_range() {
        // 2023-11-14 22:13:20 UTC.
        let t = FatTime::from_unix(1_700_000_000);
        assert_eq!(t.date, (43 << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(t.to_unix(), 1_700_000_000);
        assert_eq!(FatTime::from_unix(1_700_000_001).to_unix(), 1_700_000_001);
        assert_eq!(FatTime::from_unix(0).to_unix(), FAT_EPOCH);
        assert_eq!(FatTime::from_unix(-5).date, (1 << 5) | 1);
        let last = FatTime::from_unix(i64::MAX);
        assert_eq!(last.date, (127 << 9) | (12 << 5) | 31);
        assert_eq!(last.time, (23 << 11) | (59 << 5) | 29);
        // Leap day.
        let leap = days_from_civil(2024, 2, 29);
        assert_eq!(civil_from_days(leap), (2024, 2, 29));
        assert_eq!(civil_from_days(leap + 1), (2024, 3, 1));
    }

    #[test]
    fn entries_round_trip_with_high_cluster_bits() {
        let e = ShortEntry::new(
            *b"KERNEL  EFI",
            ATTR_ARCHIVE,
            0x0012_3456,
            99,
            1_700_000_000,
        );
        assert_eq!(ShortEntry::decode(&e.encode()), e);
    }
}
