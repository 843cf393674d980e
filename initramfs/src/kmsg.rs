//! Reading the kernel's log (`/dev/kmsg`) to show the kernel's own words when a step fails:
//! a dm-verity mismatch, for one, is only explained there.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// The messages of the kernel log that contain `needle`, oldest first, at most `max`
/// (the last ones). Reads what is buffered now and never waits.
pub fn lines_containing(needle: &str, max: usize) -> Vec<String> {
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Each read returns one record; EAGAIN ends the buffered log. EPIPE (records overwritten
    // while reading) just moves on. The bound keeps a flooding kernel from holding us here.
    for _ in 0..100_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(msg) = message_of(&buf[..n]) {
                    if msg.contains(needle) {
                        out.push(msg);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let skip = out.len().saturating_sub(max);
    out.split_off(skip)
}

/// The text of one `/dev/kmsg` record: `prio,seq,time,flags;message\n continuation...`.
fn message_of(record: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(record);
    let (_, msg) = text.split_once(';')?;
    Some(msg.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_split_at_the_semicolon() {
        let rec = b"3,1234,5678901,-;device-mapper: verity: 254:0: data block 0 is corrupted\n SUBSYSTEM=block\n";
        assert_eq!(
            message_of(rec).unwrap(),
            "device-mapper: verity: 254:0: data block 0 is corrupted"
        );
        assert_eq!(message_of(b"garbage"), None);
    }
}
