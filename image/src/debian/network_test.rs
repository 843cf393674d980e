//! The one test against the host's real Debian mirror (from its apt sources): resolve Kiln's
//! package list for bookworm, download and verify every package, unpack them into one tree,
//! and print the figures. Ignored by default because it downloads about 190 MB on a cold
//! cache; run it with `cargo test -p kiln-image debian::network -- --ignored --nocapture`.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::tree::{Kind, Meta, Tree};

/// Kiln's package list (image.toml's), in bookworm's names.
const WANTED: &str =
    "linux-image-amd64 systemd systemd-sysv udev systemd-resolved systemd-timesyncd dbus \
    openssh-server iproute2 ca-certificates etcd-server etcd-client containerd runc docker.io \
    systemd-boot-efi busybox kmod e2fsprogs iptables";

#[test]
#[ignore = "network: downloads the image's packages (~190 MB cold) from the host's Debian mirror"]
fn network_bookworm_image_packages_resolve_fetch_and_extract() {
    let sources = Sources::from_host().unwrap();
    let mirrors = sources.mirrors(BOOKWORM_SUITES).unwrap();
    let cache = Cache::from_env().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let t = Instant::now();
    let archive = Archive::open(&mirrors, &cache, now).unwrap();
    let t_index = t.elapsed();
    for w in &archive.warnings {
        eprintln!("warning: {w}");
    }
    let wanted: Vec<String> = WANTED.split_whitespace().map(str::to_string).collect();
    // Kiln merges /usr itself; without the exclusion `usrmerge | usr-is-merged` would bring
    // usrmerge and perl.
    let resolution = resolve(&archive, &wanted, &["usrmerge".to_string()]).unwrap();
    let lock = Lock::from_resolution(&resolution);
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    for want in &wanted {
        assert!(
            names.contains(&want.as_str()),
            "{want} is in the resolution"
        );
    }
    assert!(lock
        .packages
        .iter()
        .any(|p| p.name.starts_with("linux-image-6.")));
    assert!(!names.contains(&"usrmerge"));

    let t = Instant::now();
    let fetched = fetch(&lock, &cache, &mirrors, DEFAULT_JOBS).unwrap();
    let t_fetch = t.elapsed();
    let deb_bytes: u64 = fetched.iter().map(|d| d.size).sum();
    let downloaded = fetched.iter().filter(|d| d.downloaded).count();

    let t = Instant::now();
    let paths: Vec<PathBuf> = fetched.iter().map(|d| d.path.clone()).collect();
    let out = extract_all(&paths, Tree::new(Meta::root(0o755, 0)), 2).unwrap();
    let t_extract = t.elapsed();
    out.tree.validate().unwrap();

    for p in [
        "usr/lib/systemd/systemd",
        "usr/sbin/sshd",
        "usr/sbin/dockerd",
        "usr/bin/etcd",
        "usr/bin/busybox",
    ] {
        assert!(
            matches!(out.tree.get(p).map(|e| &e.kind), Some(Kind::File(_))),
            "{p} is a file"
        );
    }
    assert!(
        out.tree.get("bin").is_none(),
        "no top-level /bin: the caller adds the link"
    );
    assert!(out
        .tree
        .iter()
        .any(|(p, _)| p.as_bytes().starts_with(b"boot/vmlinuz-")));
    assert!(out
        .infos
        .iter()
        .any(|i| i.package == "systemd" && i.scripts.contains_key("postinst")));

    eprintln!(
        "network test: {} packages, {:.1} MB of .debs ({downloaded} downloaded), {:.1} MB extracted, {} entries, \
         {} warnings; indices {:.1} s, fetch {:.1} s, extraction {:.1} s",
        lock.packages.len(),
        deb_bytes as f64 / 1e6,
        out.tree.content_bytes() as f64 / 1e6,
        out.tree.len(),
        out.warnings.len(),
        t_index.as_secs_f64(),
        t_fetch.as_secs_f64(),
        t_extract.as_secs_f64()
    );
    for w in out.warnings.iter().take(20) {
        eprintln!("  {w}");
    }
    eprintln!("{}", lock.to_text());
}
