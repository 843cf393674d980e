//! Streaming the payload's USR image onto the partition, with reading, decompressing and
//! writing overlapped and the zstd frames decompressed on several threads.
//!
//! ```text
//!                  ┌─► decompressor 0 ─┐
//! frame reader ────┤                   ├─► writer (the calling thread), in order
//!  (frame k to     └─► decompressor 1 ─┘          │
//!   k mod 2)              ▲  each owns a few aligned buffers, given back after writing
//! ```
//!
//! One frame on one core was the slowest step of writing a slot (about 600 MiB/s, less than
//! the disk takes), so the payload's USR part is a row of independent frames that each record
//! their content size ([`crate::payload`]). Frame k goes to decompressor k mod N and the
//! writer takes chunk k from decompressor k mod N, so the chunks come out in order without
//! sorting. Each decompressor owns [`BUFFERS`] buffers, which the writer hands back after
//! writing: memory stays at a few tens of MiB whatever the image's size.
//!
//! The writer takes an xxh3-128 of each 4 MiB of the image as it writes it ([`Pieces`]),
//! which the caller compares with what the partition gives back. Not a SHA-256: a second
//! SHA-256 here cost 0.39 CPU-seconds of the 1.05 that writing 590 MiB takes; on a loaded
//! 2-core machine that was the difference between 0.5x and 0.8x of `dd`'s speed. That the
//! bytes are the signed image is checked before and on the way: the compressed part's SHA-256
//! before install writes anything, and every frame carries zstd's checksum of its content.
//!
//! A USR part whose first frame records no content size (payloads made before frames: one
//! frame for the whole image) is decompressed by one streaming decompressor instead.
//!
//! Writes use `O_DIRECT` where the disk allows it: 600 MB of image would otherwise push the
//! running system's files out of the page cache, and the read-back would read the cache.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use kiln_image::disk::read_full;
use zstd::zstd_safe;

use super::pieces::Pieces;

/// `O_DIRECT` wants memory, offsets and lengths aligned to the logical block size; a page
/// covers every device's.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// Bytes per buffer from the streaming decompressor, and what a buffer first holds.
const CHUNK: usize = 4 << 20;
/// The largest frame content accepted: ours are 4 MiB; a larger one would make the buffers
/// as large.
const MAX_FRAME: u64 = 32 << 20;
/// Decompressing threads: the machines have 2 cores or more; the frame reader and the
/// writer mostly wait.
const DECOMPRESSORS: usize = 2;
/// Buffers each decompressor owns.
const BUFFERS: usize = 3;
/// The largest zstd frame header (`ZSTD_FRAMEHEADERSIZE_MAX`): enough to read a content size.
const FRAME_HEADER_MAX: usize = 18;
/// How much the frame reader reads at a time.
const READ_STEP: usize = 1 << 20;

/// Where the image goes: `len` bytes of the disk from byte `start`, through `direct` (opened
/// with `O_DIRECT`) where offsets and lengths allow, else through `buffered`.
pub(super) struct Sink<'a> {
    pub direct: Option<&'a File>,
    pub buffered: &'a File,
    pub start: u64,
    pub len: u64,
}

/// What [`stream`] wrote: its length, and the digests of its pieces in order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Written {
    pub len: u64,
    pub digests: Vec<u128>,
}

#[derive(Debug)]
pub(super) enum StreamError {
    /// The compressed part could not be read or decompressed.
    Decompress(io::Error),
    /// The disk refused a write.
    Write(io::Error),
    /// The image decompresses to more than `total` bytes (at least this many).
    TooLong(u64),
}

/// Decompresses `part` (the USR part of a payload) into `sink` and calls `progress` with the
/// bytes written after each buffer; returns the bytes written and their digests, a piece at a
/// time. Stops at the first error, and before writing past `total` bytes. Does not sync.
pub(super) fn stream(
    part: impl Read + Send,
    sink: &Sink,
    total: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, StreamError> {
    let mut frames = FrameReader::new(part);
    let framed = frames
        .first_frame_is_sized()
        .map_err(StreamError::Decompress)?;
    std::thread::scope(|s| {
        let decompressors = if framed { DECOMPRESSORS } else { 1 };
        let (mut pools, mut outputs, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        for owner in 0..decompressors {
            let (free_tx, free_rx) = mpsc::channel();
            for _ in 0..BUFFERS {
                // Cannot fail: the receiver is right here.
                let _ = free_tx.send(Buf::new(owner));
            }
            let (out_tx, out_rx) = mpsc::sync_channel(BUFFERS);
            pools.push(free_tx);
            outputs.push(out_rx);
            ends.push((free_rx, out_tx));
        }
        if framed {
            let mut jobs = Vec::new();
            for (free_rx, out_tx) in ends {
                let (job_tx, job_rx) = mpsc::sync_channel(BUFFERS);
                s.spawn(move || decompress_frames(job_rx, free_rx, out_tx));
                jobs.push(job_tx);
            }
            s.spawn(move || deal_frames(frames, jobs));
        } else {
            let reader = frames.into_stream();
            if let Some((free_rx, out_tx)) = ends.pop() {
                s.spawn(move || decompress_stream(reader, free_rx, out_tx));
            }
        }
        // Returning early drops the receivers and the pools, which stops every thread.
        write_all(outputs, &pools, sink, total, progress)
    })
}

/// The writer's loop: chunk k from `from[k % n]` to the disk, then back to its decompressor.
/// Ends when the decompressor in turn has finished.
fn write_all(
    from: Vec<Receiver<io::Result<Buf>>>,
    pools: &[Sender<Buf>],
    sink: &Sink,
    total: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, StreamError> {
    let mut written = 0u64;
    let mut pieces = Pieces::new();
    let mut direct = sink.direct;
    for k in 0.. {
        let Ok(chunk) = from[k % from.len()].recv() else {
            break;
        };
        let chunk = chunk.map_err(StreamError::Decompress)?;
        let data = chunk.data();
        let end = written + data.len() as u64;
        if end > total || end > sink.len {
            return Err(StreamError::TooLong(end));
        }
        let at = sink.start + written;
        // Once a write is not aligned (a frame of odd size), the rest goes through the page
        // cache: the offsets after it are not aligned either.
        let aligned =
            at.is_multiple_of(DIRECT_ALIGN as u64) && data.len().is_multiple_of(DIRECT_ALIGN);
        let file = match direct {
            Some(f) if aligned => f,
            _ => {
                direct = None;
                sink.buffered
            }
        };
        file.write_all_at(data, at).map_err(StreamError::Write)?;
        pieces.add(data);
        written = end;
        progress(written);
        // A decompressor that has stopped needs no buffers.
        let _ = pools[chunk.owner].send(chunk);
    }
    Ok(Written {
        len: written,
        digests: pieces.finish(),
    })
}

/// A piece of the image in memory aligned for `O_DIRECT`, owned by one decompressor.
struct Buf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    owner: usize,
}

impl Buf {
    fn new(owner: usize) -> Buf {
        let mut buf = Buf {
            raw: Vec::new(),
            start: 0,
            len: 0,
            owner,
        };
        buf.reserve(CHUNK);
        buf
    }

    /// Makes room for `n` bytes (a larger frame than usual reallocates once).
    fn reserve(&mut self, n: usize) {
        if self.raw.len() < self.start + n {
            self.raw = vec![0u8; n + DIRECT_ALIGN];
            self.start = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        }
    }

    /// `n` bytes to fill; the buffer then holds them.
    fn space(&mut self, n: usize) -> &mut [u8] {
        self.reserve(n);
        self.len = n;
        &mut self.raw[self.start..self.start + n]
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Cuts a USR part into its zstd frames, reading ahead as little as a frame needs.
struct FrameReader<R> {
    inner: R,
    pending: Vec<u8>,
    /// Where the unread bytes of `pending` begin.
    at: usize,
    /// The part's bytes consumed before `pending[at]`, for messages.
    offset: u64,
    eof: bool,
}

impl<R: Read> FrameReader<R> {
    fn new(inner: R) -> Self {
        FrameReader {
            inner,
            pending: Vec::new(),
            at: 0,
            offset: 0,
            eof: false,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.pending[self.at..]
    }

    /// Reads until at least `n` bytes are unread or the part ends.
    fn fill_to(&mut self, n: usize) -> io::Result<()> {
        if self.at > 0 && self.unread().len() < n {
            self.pending.drain(..self.at);
            self.at = 0;
        }
        while !self.eof && self.pending.len() < n {
            let have = self.pending.len();
            self.pending.resize(have + READ_STEP.max(n - have), 0);
            let got = read_full(&mut self.inner, &mut self.pending[have..])?;
            self.pending.truncate(have + got);
            self.eof = self.pending.len() < have + READ_STEP.max(n - have);
        }
        Ok(())
    }

    /// Whether the first frame records a content size the buffers can hold: a payload made
    /// in frames. The part's first bytes stay unread.
    fn first_frame_is_sized(&mut self) -> io::Result<bool> {
        self.fill_to(FRAME_HEADER_MAX)?;
        Ok(matches!(
            zstd_safe::get_frame_content_size(self.unread()),
            Ok(Some(n)) if n <= MAX_FRAME
        ))
    }

    /// The next whole frame, or `None` at the end of the part.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.fill_to(FRAME_HEADER_MAX)?;
        if self.unread().is_empty() {
            return Ok(None);
        }
        let content = match zstd_safe::get_frame_content_size(self.unread()) {
            Ok(Some(n)) if n <= MAX_FRAME => n as usize,
            _ => {
                return Err(self.damaged(format!(
                    "no zstd frame of at most {} MiB with its content size starts here",
                    MAX_FRAME >> 20
                )))
            }
        };
        // A frame is at most its content's compression bound (header and checksum included).
        // Read on until the frame is whole, not a bound ahead: what is read past the frame is
        // moved to the front of the buffer before the next read.
        let bound = zstd_safe::compress_bound(content) + FRAME_HEADER_MAX + 4;
        loop {
            let unread = self.unread().len();
            match zstd_safe::find_frame_compressed_size(self.unread()) {
                Ok(len) => {
                    let frame = self.unread()[..len].to_vec();
                    self.at += len;
                    self.offset += len as u64;
                    return Ok(Some(frame));
                }
                Err(code) if self.eof || unread >= bound => {
                    return Err(self.damaged(zstd_safe::get_error_name(code).to_owned()))
                }
                Err(_) => self.fill_to(unread + READ_STEP)?,
            }
        }
    }

    fn damaged(&self, what: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("at byte {} of the USR part: {what}", self.offset),
        )
    }

    /// The part from the first unread byte on, as one stream (for a part that is not in
    /// sized frames).
    fn into_stream(mut self) -> io::Chain<io::Cursor<Vec<u8>>, R> {
        let pending = self.pending.split_off(self.at);
        io::Cursor::new(pending).chain(self.inner)
    }
}

/// Sends frame k to `jobs[k % n]`; an error goes where the next frame would have, so that
/// the writer meets it in order.
fn deal_frames<R: Read>(mut frames: FrameReader<R>, jobs: Vec<SyncSender<io::Result<Vec<u8>>>>) {
    for k in 0.. {
        let job = match frames.next_frame() {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let stop = job.is_err();
        // A send fails when the pipeline has stopped, which reports its own error.
        if jobs[k % jobs.len()].send(job).is_err() || stop {
            return;
        }
    }
}

/// Decompresses each frame it is sent into one of its buffers.
fn decompress_frames(
    jobs: Receiver<io::Result<Vec<u8>>>,
    free: Receiver<Buf>,
    out: SyncSender<io::Result<Buf>>,
) {
    let mut dctx = match zstd::bulk::Decompressor::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = out.send(Err(e));
            return;
        }
    };
    for job in jobs {
        let Ok(mut buf) = free.recv() else {
            return;
        };
        let result = job.and_then(|frame| decompress_frame(&mut dctx, &frame, &mut buf));
        let stop = result.is_err();
        if out.send(result.map(|()| buf)).is_err() || stop {
            return;
        }
    }
}

fn decompress_frame(
    dctx: &mut zstd::bulk::Decompressor,
    frame: &[u8],
    buf: &mut Buf,
) -> io::Result<()> {
    let content = match zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_FRAME => n as usize,
        _ => return Err(io::Error::other("a zstd frame lost its content size")),
    };
    let n = dctx.decompress_to_buffer(frame, buf.space(content))?;
    if n != content {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a zstd frame gave {n} bytes where its header says {content}"),
        ));
    }
    Ok(())
}

/// Decompresses a stream of any zstd frames into [`CHUNK`]-sized buffers.
fn decompress_stream(reader: impl Read, free: Receiver<Buf>, out: SyncSender<io::Result<Buf>>) {
    let mut decoder = match zstd::stream::read::Decoder::new(reader) {
        Ok(d) => d,
        Err(e) => {
            let _ = out.send(Err(e));
            return;
        }
    };
    while let Ok(mut buf) = free.recv() {
        let result = match read_full(&mut decoder, buf.space(CHUNK)) {
            Ok(0) => return,
            Ok(n) => {
                buf.len = n;
                Ok(buf)
            }
            Err(e) => Err(e),
        };
        let stop = result.is_err();
        if out.send(result).is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::testutil::pattern;

    /// `data` compressed as frames of `frame` bytes, as the payload writer does.
    fn framed(data: &[u8], frame: usize) -> Vec<u8> {
        let mut c = crate::payload::frame_compressor().unwrap();
        data.chunks(frame)
            .flat_map(|piece| c.compress(piece).unwrap())
            .collect()
    }

    /// Streams `part` into a fresh file through both handles (the second without `O_DIRECT`,
    /// as on tmpfs); returns what happened and the file's first `len` bytes.
    fn run(part: &[u8], total: u64) -> (Result<Written, StreamError>, Vec<u8>, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let direct = super::super::device::open_direct(&path);
        let sink = Sink {
            direct: direct.as_ref(),
            buffered: &file,
            start: 8192,
            len: 64 << 20,
        };
        let mut seen = Vec::new();
        let result = stream(part, &sink, total, &mut |n| seen.push(n));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.drain(..8192.min(bytes.len()));
        (result, bytes, seen)
    }

    #[test]
    fn frames_of_any_size_stream_in_order() {
        // 4 KiB frames (many rounds of both decompressors), 1 MiB frames, and frames of an
        // odd size, after which the writes go through the page cache. The digests are the
        // image's, a piece at a time, however the frames cut it.
        let data = pattern((9 << 20) + 12_345, 4);
        let digests: Vec<u128> = data
            .chunks(super::super::pieces::PIECE as usize)
            .map(xxhash_rust::xxh3::xxh3_128)
            .collect();
        for frame in [4096, 1 << 20, 1_000_001] {
            let part = framed(&data, frame);
            let (result, bytes, seen) = run(&part, data.len() as u64);
            assert_eq!(
                result.unwrap(),
                Written {
                    len: data.len() as u64,
                    digests: digests.clone()
                },
                "frames of {frame}"
            );
            assert!(bytes == data, "frames of {frame}: the file differs");
            assert_eq!(seen.len(), data.len().div_ceil(frame));
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn one_frame_without_a_content_size_streams_too() {
        // As payloads were written before frames: zstd's streaming encoder, no pledged size.
        let data = pattern((9 << 20) + 777, 6);
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        io::Write::write_all(&mut enc, &data).unwrap();
        let part = enc.finish().unwrap();
        assert!(matches!(zstd_safe::get_frame_content_size(&part), Ok(None)));
        let (result, bytes, seen) = run(&part, data.len() as u64);
        assert_eq!(result.unwrap().len, data.len() as u64);
        assert!(bytes == data);
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn damaged_cut_or_overlong_parts_are_refused() {
        let data = pattern(2 << 20, 7);
        let part = framed(&data, 256 << 10);
        // A flipped byte in a later frame: its checksum (or its structure) fails.
        let mut bad = part.clone();
        let at = part.len() * 3 / 4;
        bad[at] ^= 0x40;
        let (result, ..) = run(&bad, data.len() as u64);
        assert!(
            matches!(result, Err(StreamError::Decompress(_))),
            "{result:?}"
        );
        // Cut inside the last frame.
        let (result, ..) = run(&part[..part.len() - 10], data.len() as u64);
        let Err(StreamError::Decompress(e)) = result else {
            panic!("a cut part was accepted: {result:?}");
        };
        assert!(e.to_string().contains("of the USR part"), "{e}");
        // More bytes than the manifest says: stopped before writing past it.
        let (result, bytes, _) = run(&part, (1 << 20) + 5);
        assert!(matches!(result, Err(StreamError::TooLong(_))), "{result:?}");
        assert!(bytes.len() <= (1 << 20) + 5);
    }
}
