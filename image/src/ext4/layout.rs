//! Where the fixed metadata goes: block groups, superblock and descriptor copies, bitmaps and
//! inode tables (packed per flex group), and the runs of blocks left for data.

pub(crate) const BLOCK: u64 = 4096;
pub(crate) const BLOCKS_PER_GROUP: u64 = 32768;
pub(crate) const INODE_SIZE: u64 = 256;
pub(crate) const INODES_PER_BLOCK: u32 = (BLOCK / INODE_SIZE) as u32;
pub(crate) const DESC_SIZE: u64 = 64;
pub(crate) const LOG_GROUPS_PER_FLEX: u32 = 4;
const GROUPS_PER_FLEX: u32 = 1 << LOG_GROUPS_PER_FLEX;
/// One inode bitmap block holds 32768 bits.
const MAX_INODES_PER_GROUP: u32 = (BLOCK * 8) as u32;
/// The inode ratio of a writable filesystem: one inode per 16 KiB, as mke2fs's default.
const BYTES_PER_INODE: u64 = 16384;

/// Bitmap and inode table locations of one group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupMeta {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
}

/// The geometry of one filesystem size.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub desc_blocks: u64,
    pub meta: Vec<GroupMeta>,
    /// Blocks holding no fixed metadata, as sorted (start, len) runs: where everything else goes.
    pub free: Vec<(u64, u64)>,
}

/// With sparse_super, groups 0, 1 and the powers of 3, 5 and 7 carry superblock copies.
pub(crate) fn has_super(group: u32) -> bool {
    let power_of = |base: u32| {
        let mut n = base;
        while n < group {
            n = match n.checked_mul(base) {
                Some(m) => m,
                None => return false,
            };
        }
        n == group
    };
    group <= 1 || power_of(3) || power_of(5) || power_of(7)
}

impl Geometry {
    /// Lays out a filesystem of `blocks` blocks holding at least `inodes` inodes (reserved ones
    /// included). `writable` adds mke2fs's one inode per 16 KiB so the running system can create
    /// files. `None` when it cannot be done at this size.
    pub fn new(mut blocks: u64, inodes: u64, writable: bool) -> Option<Geometry> {
        loop {
            if blocks < 16 {
                return None;
            }
            let groups = u32::try_from(blocks.div_ceil(BLOCKS_PER_GROUP)).ok()?;
            let ipg = inodes_per_group(blocks, groups, inodes, writable)?;
            let desc_blocks = (groups as u64 * DESC_SIZE).div_ceil(BLOCK);
            // A last group too small for its own overhead is dropped, as mke2fs does: the
            // filesystem then ends at the previous group boundary.
            let last = groups - 1;
            let last_len = blocks - last as u64 * BLOCKS_PER_GROUP;
            let mut overhead = if has_super(last) { 1 + desc_blocks } else { 0 };
            if last % GROUPS_PER_FLEX == 0 {
                overhead += 2 + (ipg / INODES_PER_BLOCK) as u64;
            }
            if groups > 1 && last_len < overhead + 64 {
                blocks = last as u64 * BLOCKS_PER_GROUP;
                continue;
            }
            return Self::place(blocks, groups, ipg, desc_blocks);
        }
    }

    fn place(blocks: u64, groups: u32, ipg: u32, desc_blocks: u64) -> Option<Geometry> {
        let mut geo = Geometry {
            blocks,
            groups,
            inodes_per_group: ipg,
            desc_blocks,
            meta: Vec::with_capacity(groups as usize),
            free: Vec::new(),
        };
        let mut used: Vec<(u64, u64)> = (0..groups).filter_map(|g| geo.super_region(g)).collect();
        let itb = geo.inode_table_blocks();
        for leader in (0..groups).step_by(GROUPS_PER_FLEX as usize) {
            let n = GROUPS_PER_FLEX.min(groups - leader) as usize;
            let start = geo.group_start(leader);
            let mut cursor = start + geo.super_region(leader).map_or(0, |r| r.1);
            let mut take = |len: u64| geo.take_meta(&mut cursor, len);
            let mut block_bitmaps = Vec::with_capacity(n);
            for _ in 0..n {
                block_bitmaps.push(take(1)?);
            }
            let mut inode_bitmaps = Vec::with_capacity(n);
            for _ in 0..n {
                inode_bitmaps.push(take(1)?);
            }
            let mut tables = Vec::with_capacity(n);
            for _ in 0..n {
                tables.push(take(itb)?);
            }
            for i in 0..n {
                used.push((block_bitmaps[i], 1));
                used.push((inode_bitmaps[i], 1));
                used.push((tables[i], itb));
                geo.meta.push(GroupMeta {
                    block_bitmap: block_bitmaps[i],
                    inode_bitmap: inode_bitmaps[i],
                    inode_table: tables[i],
                });
            }
        }
        used.sort_unstable();
        let mut next = 0;
        for (start, len) in used {
            if start > next {
                geo.free.push((next, start - next));
            }
            next = next.max(start + len);
        }
        if next < blocks {
            geo.free.push((next, blocks - next));
        }
        Some(geo)
    }

    /// The next `len` contiguous blocks at or after `cursor` that avoid every superblock copy.
    fn take_meta(&self, cursor: &mut u64, len: u64) -> Option<u64> {
        'retry: loop {
            let (start, end) = (*cursor, *cursor + len);
            if end > self.blocks {
                return None;
            }
            let first_group = (start / BLOCKS_PER_GROUP) as u32;
            let last_group = ((end - 1) / BLOCKS_PER_GROUP) as u32;
            for g in first_group..=last_group {
                if let Some((s, l)) = self.super_region(g) {
                    if s < end && start < s + l {
                        *cursor = s + l;
                        continue 'retry;
                    }
                }
            }
            *cursor = end;
            return Some(start);
        }
    }

    pub fn group_start(&self, group: u32) -> u64 {
        group as u64 * BLOCKS_PER_GROUP
    }

    pub fn group_len(&self, group: u32) -> u64 {
        (self.blocks - self.group_start(group)).min(BLOCKS_PER_GROUP)
    }

    /// The superblock copy and descriptor table at the start of `group`, if it has them.
    pub fn super_region(&self, group: u32) -> Option<(u64, u64)> {
        has_super(group).then(|| (self.group_start(group), 1 + self.desc_blocks))
    }

    pub fn inode_table_blocks(&self) -> u64 {
        (self.inodes_per_group / INODES_PER_BLOCK) as u64
    }

    pub fn inodes_total(&self) -> u64 {
        self.inodes_per_group as u64 * self.groups as u64
    }
}

fn inodes_per_group(blocks: u64, groups: u32, inodes: u64, writable: bool) -> Option<u32> {
    let needed = inodes.div_ceil(groups as u64);
    if needed > MAX_INODES_PER_GROUP as u64 {
        return None;
    }
    let by_ratio = if writable {
        (blocks * BLOCK / BYTES_PER_INODE).div_ceil(groups as u64)
    } else {
        0
    };
    let ipg = needed
        .max(by_ratio)
        .max(INODES_PER_BLOCK as u64)
        .next_multiple_of(INODES_PER_BLOCK as u64);
    Some(ipg.min(MAX_INODES_PER_GROUP as u64) as u32)
}

/// Hands out the free blocks in order. Everything after the fixed metadata is allocated
/// sequentially, so what is used is always a prefix of the free runs.
pub(crate) struct Allocator<'g> {
    free: &'g [(u64, u64)],
    run: usize,
    offset: u64,
    pub allocated: u64,
}

impl<'g> Allocator<'g> {
    pub fn new(geo: &'g Geometry) -> Self {
        Allocator {
            free: &geo.free,
            run: 0,
            offset: 0,
            allocated: 0,
        }
    }

    /// The next free block, or `None` when the filesystem is full.
    pub fn next(&mut self) -> Option<u64> {
        let (start, len) = *self.free.get(self.run)?;
        let block = start + self.offset;
        self.offset += 1;
        if self.offset == len {
            self.run += 1;
            self.offset = 0;
        }
        self.allocated += 1;
        Some(block)
    }

    /// The allocated blocks as (start, len) runs.
    pub fn allocated_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = self.free[..self.run].to_vec();
        if self.offset > 0 {
            runs.push((self.free[self.run].0, self.offset));
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_are_powers_of_3_5_7() {
        let with: Vec<u32> = (0..100).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn metadata_avoids_superblock_copies_and_free_runs_cover_the_rest() {
        let geo = Geometry::new(40 * BLOCKS_PER_GROUP + 5000, 100_000, true).unwrap();
        assert_eq!(geo.groups, 41);
        let mut used: Vec<(u64, u64)> = (0..geo.groups)
            .filter_map(|g| geo.super_region(g))
            .collect();
        for m in &geo.meta {
            used.extend([
                (m.block_bitmap, 1),
                (m.inode_bitmap, 1),
                (m.inode_table, geo.inode_table_blocks()),
            ]);
        }
        used.extend(geo.free.iter().copied());
        used.sort_unstable();
        let mut next = 0;
        for (s, l) in used {
            assert_eq!(s, next, "gap or overlap at {s}");
            next = s + l;
        }
        assert_eq!(next, geo.blocks);
    }

    #[test]
    fn a_tiny_last_group_is_dropped() {
        let geo = Geometry::new(BLOCKS_PER_GROUP * 2 + 10, 100, false).unwrap();
        assert_eq!((geo.groups, geo.blocks), (2, 2 * BLOCKS_PER_GROUP));
    }
}
