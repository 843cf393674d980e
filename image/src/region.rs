//! A window onto part of a seekable stream: a partition inside a disk image or a block device,
//! read and written as if it were a file of its own.
//!
//! Reads stop at the end of the window the way a file ends (a read that starts at the end
//! returns 0 bytes, so `read_exact` past the end fails with `UnexpectedEof`); a write that does
//! not fit entirely is refused before anything is written, so a writer that overruns its
//! partition gets an error instead of corrupting the next one.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `len` bytes of `inner` starting at byte `start`, with its own position.
#[derive(Debug)]
pub struct Region<T> {
    inner: T,
    start: u64,
    len: u64,
    pos: u64,
}

impl<T> Region<T> {
    /// A window of `len` bytes at offset `start` of `inner`, positioned at its beginning.
    /// Nothing is read or checked until the first access: `inner` may be shorter than
    /// `start + len` (a sparse image file that is still growing).
    pub fn new(inner: T, start: u64, len: u64) -> io::Result<Self> {
        if start.checked_add(len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("region at {start} of {len} bytes ends past 2^64"),
            ));
        }
        Ok(Region {
            inner,
            start,
            len,
            pos: 0,
        })
    }

    /// Where the window starts in the underlying stream, in bytes.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The size of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The position inside the window.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Bytes left between the position and the end (0 when positioned past the end).
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl<T: Seek> Region<T> {
    /// Moves the underlying stream to our position. Done before every access because the
    /// stream may be shared (`&File`) or moved by someone else between our calls.
    fn sync_inner(&mut self) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
}

impl<T: Read + Seek> Read for Region<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining()) as usize;
        if want == 0 {
            return Ok(0);
        }
        self.sync_inner()?;
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<T: Write + Seek> Write for Region<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "writing {} bytes at offset {} of a {}-byte region (at {} of the device) \
                     would pass its end: the content is larger than its partition",
                    buf.len(),
                    self.pos,
                    self.len,
                    self.start
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.sync_inner()?;
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Seek> Seek for Region<T> {
    /// Seeking past the end is allowed, as for files; reads there return nothing and writes fail.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p.checked_add(self.start).is_some() => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "seek {to:?} from {} in a {}-byte region goes before its start or past 2^64",
                    self.pos, self.len
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn disk() -> Cursor<Vec<u8>> {
        Cursor::new((0..100u8).collect())
    }

    #[test]
    fn reads_only_its_window() {
        let mut r = Region::new(disk(), 10, 20).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, (10..30u8).collect::<Vec<_>>());
        // At the end: EOF, and read_exact reports it.
        assert_eq!(r.read(&mut [0; 4]).unwrap(), 0);
        r.seek(SeekFrom::End(-2)).unwrap();
        let err = r.read_exact(&mut [0; 3]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn writes_inside_and_refuses_past_the_end() {
        let mut r = Region::new(disk(), 10, 20).unwrap();
        r.seek(SeekFrom::Start(18)).unwrap();
        r.write_all(&[0xEE, 0xEE]).unwrap();
        // Nothing of a write that does not fit is written.
        let err = r.write(&[1, 2, 3]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert!(err.to_string().contains("pass its end"), "{err}");
        r.seek(SeekFrom::Start(19)).unwrap();
        assert!(r.write_all(&[7, 7]).is_err());
        let inner = r.into_inner().into_inner();
        assert_eq!(&inner[27..31], &[27, 0xEE, 0xEE, 30]);
    }

    #[test]
    fn seeks_are_relative_to_the_window() {
        let mut r = Region::new(disk(), 50, 10).unwrap();
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 9);
        let mut b = [0u8];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 59);
        assert_eq!(r.seek(SeekFrom::Current(-5)).unwrap(), 5);
        r.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 55);
        assert!(r.seek(SeekFrom::Current(-7)).is_err());
        // Past the end is a valid position, where reads find nothing and writes fail.
        assert_eq!(r.seek(SeekFrom::Start(15)).unwrap(), 15);
        assert_eq!(r.read(&mut b).unwrap(), 0);
        assert!(r.write(&[1]).is_err());
    }

    #[test]
    fn works_on_a_shared_file() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[0u8; 64]).unwrap();
        // Two regions over the same &File: each keeps its own position.
        let mut a = Region::new(&f, 0, 32).unwrap();
        let mut b = Region::new(&f, 32, 32).unwrap();
        a.write_all(b"aaaa").unwrap();
        b.write_all(b"bbbb").unwrap();
        a.write_all(b"AA").unwrap();
        let mut back = [0u8; 6];
        a.seek(SeekFrom::Start(0)).unwrap();
        a.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"aaaaAA");
        assert!(b.seek(SeekFrom::Start(30)).is_ok());
        assert!(b.write_all(b"xyz").is_err());
    }
}
