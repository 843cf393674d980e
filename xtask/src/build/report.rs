//! The report stage: `report.txt`, the build's version, root hash, sizes, every artifact's
//! SHA-256 and each stage's time.

use anyhow::{Context, Result};

use kiln_contract::disk::MIB;
use kiln_image::tree::Tree;

use super::{Artifacts, Build};

impl Build {
    pub(super) fn report(&mut self, a: &Artifacts, tree: &Tree) -> Result<()> {
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
        text += "artifacts (sha256):\n";
        for path in [
            Some(&a.disk),
            a.qcow2.as_ref(),
            Some(&a.usr_image),
            Some(&a.kernel),
            Some(&a.initrd),
            Some(&a.payload),
        ]
        .into_iter()
        .flatten()
        {
            text += &format!(
                "  {}  {}\n",
                kiln_contract::hex::encode(&crate::release::digest_of(path)?),
                path.strip_prefix(&self.out_dir).unwrap_or(path).display()
            );
        }
        text += "stages (seconds):\n";
        for (name, d) in &self.timings {
            text += &format!("  {:>7.1}  {name}\n", d.as_secs_f64());
        }
        let path = self.out_dir.join("report.txt");
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprint!("{text}");
        Ok(())
    }
}
