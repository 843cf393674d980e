//! Hashed (dir_index) directories: the half-MD4 name hash and the single-level index block,
//! so the kernel finds a name in a directory of thousands of entries without a linear scan.

use super::crc::crc32c;
use super::format::{self, put16, put32, DirEnt};
use super::layout::BLOCK;

/// Index entries in the root block: (4096 - "." - ".." - 8-byte info - 8-byte tail) / 8.
const ROOT_LIMIT: usize = 507;
/// A leaf takes entries starting within this many bytes of its share, so that with the
/// largest entry (264 bytes) it still fits 4084 bytes whatever the hash order.
const LEAF_SHARE: usize = 4084 - 264;

/// How many leaf blocks an indexed directory of these entries (without `.` and `..`) gets;
/// `None` when it needs no index (fits one block) or more than one index level.
/// Depends only on the entry sizes, not on the hash seed, so sizing needs no seed.
pub(crate) fn leaf_count(entries: &[DirEnt]) -> Option<usize> {
    if format::pack_dir(entries).len() <= 1 {
        return None;
    }
    let total: usize = entries[2..]
        .iter()
        .map(|e| format::rec_len(e.name.len()))
        .sum();
    let leaves = total.div_ceil(LEAF_SHARE).max(2);
    (leaves <= ROOT_LIMIT).then_some(leaves)
}

/// The blocks of an indexed directory: the root, then `leaves` leaf blocks.
/// `entries` starts with `.` and `..`; `seed` is the inode's checksum seed.
pub(crate) fn blocks(
    entries: &[DirEnt],
    leaves: usize,
    hash_seed: &[u8; 16],
    seed: u32,
) -> Vec<Vec<u8>> {
    let mut hashed: Vec<(u32, &DirEnt)> = entries[2..]
        .iter()
        .map(|e| (name_hash(&e.name, hash_seed), e))
        .collect();
    hashed.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    let total: usize = hashed
        .iter()
        .map(|(_, e)| format::rec_len(e.name.len()))
        .sum();
    // Entry j goes to leaf floor(offset_j * leaves / total): every leaf gets a share of at
    // most LEAF_SHARE bytes of starting offsets, hence is non-empty and fits.
    let mut groups: Vec<Vec<(u32, DirEnt)>> = vec![Vec::new(); leaves];
    let mut offset = 0;
    for (hash, e) in hashed {
        groups[offset * leaves / total].push((hash, e.clone()));
        offset += format::rec_len(e.name.len());
    }
    let mut out = Vec::with_capacity(leaves + 1);
    let mut index: Vec<u32> = Vec::with_capacity(leaves);
    let mut prev_last: Option<u32> = None;
    for g in &groups {
        let first = g.first().expect("every leaf gets entries").0;
        // A hash that continues from the previous leaf is marked with the low bit.
        index.push(if prev_last == Some(first) {
            first | 1
        } else {
            first
        });
        prev_last = g.last().map(|(h, _)| *h);
        let ents: Vec<DirEnt> = g.iter().map(|(_, e)| e.clone()).collect();
        out.push(format::dir_block(&ents, seed));
    }
    out.insert(0, root_block(&entries[0], &entries[1], &index, seed));
    out
}

fn root_block(dot: &DirEnt, dotdot: &DirEnt, index: &[u32], seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    put32(&mut b, 0, dot.ino);
    put16(&mut b, 4, 12);
    b[6] = 1;
    b[7] = format::ftype::DIR;
    b[8] = b'.';
    put32(&mut b, 12, dotdot.ino);
    put16(&mut b, 16, BLOCK as u16 - 12);
    b[18] = 2;
    b[19] = format::ftype::DIR;
    b[20..22].copy_from_slice(b"..");
    b[28] = 1; // hash version: half_md4 (unsigned per the superblock flag)
    b[29] = 8; // info length
    put16(&mut b, 32, ROOT_LIMIT as u16);
    put16(&mut b, 34, index.len() as u16);
    put32(&mut b, 36, 1); // the first leaf covers hashes from 0
    for (i, &hash) in index.iter().enumerate().skip(1) {
        put32(&mut b, 32 + 8 * i, hash);
        put32(&mut b, 36 + 8 * i, 1 + i as u32);
    }
    let tail = 32 + 8 * ROOT_LIMIT;
    // The tail is summed with its checksum field still zero.
    let crc = crc32c(crc32c(seed, &b[..32 + 8 * index.len()]), &b[tail..tail + 8]);
    put32(&mut b, tail + 4, crc);
    b
}

/// ext4's half-MD4 directory hash with unsigned characters, low bit cleared.
pub(crate) fn name_hash(name: &[u8], hash_seed: &[u8; 16]) -> u32 {
    let mut buf = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if hash_seed.iter().any(|&b| b != 0) {
        for (i, w) in buf.iter_mut().enumerate() {
            *w = u32::from_le_bytes(hash_seed[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        }
    }
    let mut rest = name;
    loop {
        half_md4(&mut buf, &str_to_words(rest));
        if rest.len() <= 32 {
            break;
        }
        rest = &rest[32..];
    }
    let hash = buf[1] & !1;
    // 0xFFFFFFFE marks the end of the directory in readdir cookies.
    if hash == 0xFFFF_FFFE {
        0xFFFF_FFFC
    } else {
        hash
    }
}

/// Eight words from (up to) the next 32 bytes, padded with the remaining length.
fn str_to_words(msg: &[u8]) -> [u32; 8] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let mut val = pad;
    let mut n = 0;
    for (i, &c) in msg.iter().take(32).enumerate() {
        val = (c as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[n] = val;
            n += 1;
            val = pad;
        }
    }
    if n < 8 {
        out[n] = val;
    }
    out
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    let step =
        |fun: &dyn Fn(u32, u32, u32) -> u32, a: u32, b: u32, c: u32, d: u32, x: u32, s: u32| {
            a.wrapping_add(fun(b, c, d)).wrapping_add(x).rotate_left(s)
        };
    const K2: u32 = 0x5A82_7999;
    const K3: u32 = 0x6ED9_EBA1;
    for (i, s) in [(0, 3), (4, 3)] {
        a = step(&f, a, b, c, d, x[i], s);
        d = step(&f, d, a, b, c, x[i + 1], 7);
        c = step(&f, c, d, a, b, x[i + 2], 11);
        b = step(&f, b, c, d, a, x[i + 3], 19);
    }
    for (i, j) in [(1, 3), (0, 2)] {
        a = step(&g, a, b, c, d, x[i].wrapping_add(K2), 3);
        d = step(&g, d, a, b, c, x[j].wrapping_add(K2), 5);
        c = step(&g, c, d, a, b, x[i + 4].wrapping_add(K2), 9);
        b = step(&g, b, c, d, a, x[j + 4].wrapping_add(K2), 13);
    }
    for (i, j) in [(3, 2), (1, 0)] {
        a = step(&h, a, b, c, d, x[i].wrapping_add(K3), 3);
        d = step(&h, d, a, b, c, x[i + 4].wrapping_add(K3), 9);
        c = step(&h, c, d, a, b, x[j].wrapping_add(K3), 11);
        b = step(&h, b, c, d, a, x[j + 4].wrapping_add(K3), 15);
    }
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}
