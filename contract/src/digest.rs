//! SHA-256 over files and streams: the one way Kiln hashes what it reads or writes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The SHA-256 of a whole file (read with a 1 MiB buffer), and its length.
pub fn sha256_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut reader = Hashing::new(File::open(path)?);
    io::copy(
        &mut io::BufReader::with_capacity(1 << 20, &mut reader),
        &mut io::sink(),
    )?;
    Ok(reader.finish())
}

/// A reader or writer that hashes and counts the bytes that pass through it.
pub struct Hashing<T> {
    pub inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes passed through so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The SHA-256 of the bytes so far, without ending the stream.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// The SHA-256 of everything that passed, and how many bytes that was.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.count)
    }

    fn record(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.record(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.record(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf abc | sha256sum`.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn reader_writer_and_file_agree_with_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, len) = sha256_file(&path).unwrap();
        assert_eq!((crate::hex::encode(&digest), len), (ABC.to_owned(), 3));

        let mut r = Hashing::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(crate::hex::encode(&r.digest()), ABC);

        let mut w = Hashing::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!(w.count(), 3);
        assert_eq!(crate::hex::encode(&w.finish().0), ABC);
    }
}
