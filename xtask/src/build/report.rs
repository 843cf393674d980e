//! The report stage: `report.txt`, the build's version, root hash, sizes, every artifact's
//! SHA-256 and each stage's time (and whether it was reused).

use std::path::PathBuf;

use anyhow::{Context, Result};

use kiln_contract::disk::MIB;
use kiln_image::tree::Tree;

use super::{Artifacts, Build};
use crate::release;

/// Outputs (by path) and their SHA-256.
pub(super) type Digests = Vec<(PathBuf, [u8; 32])>;

impl Build {
    /// Writes `report.txt` (its stage table ends with this stage's start). Returns the lines
    /// above the stage table, and the SHA-256 of every output but `disk.raw` (for the stamp).
    pub(super) fn report(&mut self, a: &Artifacts, tree: &Tree) -> Result<(String, Digests)> {
        let mut text = format!("Kiln {} ({})\n", self.version, self.def.image.app_id);
        text += &format!("usr root hash: {}\n", a.usr_hash);
        text += &format!(
            "rootfs: {} entries, {} MiB of file content\n",
            tree.len(),
            tree.content_bytes() / MIB
        );
        let usr_size = std::fs::metadata(&a.usr_image)?.len();
        text += &format!(
            "USR: {} MiB with verity of a {} MiB partition ({}% full)\n",
            usr_size.div_ceil(MIB),
            self.def.partitions.usr,
            usr_size * 100 / (self.def.partitions.usr * MIB)
        );
        let listed: Vec<&PathBuf> = [
            Some(&a.disk),
            a.qcow2.as_ref(),
            Some(&a.usr_image),
            Some(&a.kernel),
            Some(&a.initrd),
            Some(&a.payload),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Besides what the report lists, the stamp checks the release files and the key.
        let others: Vec<PathBuf> = [
            release::ZST_FILE,
            release::CHUNKS_FILE,
            release::SUMS_FILE,
            release::SIG_FILE,
            release::KEY_FILE,
            super::stamp::WORK_CHUNKS,
        ]
        .iter()
        .map(|f| self.out_dir.join(f))
        .filter(|p| p.exists())
        .collect();
        self.disk_digest(&a.disk)?;
        let digests = self.digests_of(listed.iter().copied().chain(&others))?;
        text += "artifacts (sha256):\n";
        for path in &listed {
            text += &format!(
                "  {}  {}\n",
                kiln_contract::hex::encode(&digests[*path]),
                path.strip_prefix(&self.out_dir).unwrap_or(path).display()
            );
        }
        self.write_report(&text)?;
        let files = digests.into_iter().filter(|(p, _)| p != &a.disk).collect();
        Ok((text, files))
    }

    /// The report of a build that reused the outputs of an earlier one: its lines, and this
    /// build's stage table.
    pub(super) fn reused_report(&mut self) -> Result<()> {
        let header = self.report_header.clone().unwrap_or_default();
        self.write_report(&header)
    }

    /// `header` and the stage table → `report.txt`, and on the terminal.
    fn write_report(&self, header: &str) -> Result<()> {
        let mut text = header.to_owned();
        text += "stages (seconds):\n";
        for s in &self.timings {
            let reused = if s.reused { "  (reused)" } else { "" };
            text += &format!("  {:>7.1}  {}{reused}\n", s.took.as_secs_f64(), s.name);
        }
        let path = self.out_dir.join("report.txt");
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprint!("{text}");
        Ok(())
    }

    /// The SHA-256 of each of `paths`: taken on the way by an earlier stage, or hashed here.
    fn digests_of<'p>(
        &self,
        paths: impl Iterator<Item = &'p PathBuf>,
    ) -> Result<std::collections::BTreeMap<PathBuf, [u8; 32]>> {
        let (known, todo): (Vec<&PathBuf>, Vec<&PathBuf>) =
            paths.partition(|p| self.digests.contains_key(*p));
        let todo: Vec<PathBuf> = todo.into_iter().cloned().collect();
        let hashed = release::digests_of(&todo)?;
        Ok(known
            .into_iter()
            .map(|p| (p.clone(), self.digests[p]))
            .chain(todo.into_iter().zip(hashed))
            .collect())
    }
}
