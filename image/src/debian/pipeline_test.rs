//! The whole chain offline, on a `file://` mirror built in the test with the reference tools:
//! signed Release → index → resolution → lock → fetch → extraction, and the failures a broken
//! or changed mirror must produce.

use std::path::PathBuf;

use super::testrepo::{build_deb, put, TestKey, TestRepo};
use super::*;
use crate::tree::{Kind, Meta, Tree};

struct Fixture {
    repo: TestRepo,
    mirrors: Vec<Mirror>,
    cache: Cache,
    _cache_dir: tempfile::TempDir,
}

/// `app` needs `libfoo (>= 1.0) | libbar` and the virtual `tool-api`; the security suite has
/// a newer libfoo.
fn fixture() -> Fixture {
    let debs = tempfile::tempdir().unwrap();
    let d = debs.path();
    let app = build_deb(
        d,
        "app",
        "1.0",
        "Depends: libfoo (>= 1.0) | libbar, tool-api\n",
        "xz",
        |r| put(r, "usr/bin/app", b"app\n"),
    );
    let libfoo = build_deb(d, "libfoo", "1.0-1", "", "xz", |r| {
        put(r, "lib/x86_64-linux-gnu/libfoo.so.1", b"old\n")
    });
    let tool = build_deb(d, "tool", "2", "Provides: tool-api\n", "zstd", |r| {
        put(r, "sbin/tool", b"tool\n")
    });
    let libfoo_new = build_deb(d, "libfoo", "1.0-1+deb12u1", "", "gzip", |r| {
        put(r, "lib/x86_64-linux-gnu/libfoo.so.1", b"fixed\n")
    });
    let repo = TestRepo::new();
    let mirrors = vec![
        repo.publish("bookworm", &[app, libfoo, tool]),
        repo.publish("bookworm-security", &[libfoo_new]),
    ];
    let cache_dir = tempfile::tempdir().unwrap();
    Fixture {
        repo,
        mirrors,
        cache: Cache::at(cache_dir.path()),
        _cache_dir: cache_dir,
    }
}

fn lock_of(f: &Fixture) -> Lock {
    let archive = Archive::open(&f.mirrors, &f.cache, 0).unwrap();
    Lock::from_resolution(&resolve(&archive, &["app".to_string()], &[]).unwrap())
}

#[test]
fn offline_mirror_resolves_locks_fetches_and_extracts() {
    let f = fixture();
    // The indices by name are broken: they must be fetched by hash.
    for suite in ["bookworm", "bookworm-security"] {
        let plain = format!("dists/{suite}/main/binary-amd64/Packages.xz");
        std::fs::write(f.repo.dir.path().join(plain), b"garbage").unwrap();
    }
    let archive = Archive::open(&f.mirrors, &f.cache, 0).unwrap();
    assert!(archive.warnings.is_empty(), "{:?}", archive.warnings);
    let resolution = resolve(&archive, &["app".to_string()], &[]).unwrap();
    let lock = Lock::from_resolution(&resolution);
    let got: Vec<String> = lock
        .packages
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.version, p.suite))
        .collect();
    assert_eq!(
        got,
        [
            "app 1.0 bookworm",
            "libfoo 1.0-1+deb12u1 bookworm-security",
            "tool 2 bookworm"
        ]
    );
    let path = f.cache.root().join("packages.lock");
    lock.write(&path).unwrap();
    let lock = Lock::read(&path).unwrap();

    let fetched = fetch(&lock, &f.cache, &f.mirrors, 2).unwrap();
    assert!(fetched.iter().all(|d| d.downloaded && d.path.is_file()));
    let again = fetch(&lock, &f.cache, &f.mirrors, 2).unwrap();
    assert!(
        again.iter().all(|d| !d.downloaded),
        "the second fetch comes from the cache"
    );

    let paths: Vec<PathBuf> = fetched.iter().map(|d| d.path.clone()).collect();
    let out = extract_all(&paths, Tree::new(Meta::root(0o755, 0)), 2).unwrap();
    let file = |p: &str| match &out.tree.get(p).unwrap().kind {
        Kind::File(c) => c.read_all().unwrap(),
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(file("usr/lib/x86_64-linux-gnu/libfoo.so.1"), b"fixed\n");
    assert_eq!(file("usr/sbin/tool"), b"tool\n");
    assert_eq!(out.infos.len(), 3);
}

#[test]
fn index_that_does_not_match_release_is_refused() {
    let f = fixture();
    // Without a copy by hash, the index by name is fetched (and found wrong).
    let dir = f.repo.dir.path().join("dists/bookworm/main/binary-amd64");
    std::fs::remove_dir_all(dir.join("by-hash")).unwrap();
    let index = dir.join("Packages.xz");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes.push(0);
    std::fs::write(&index, bytes).unwrap();
    let err = Archive::open(&f.mirrors, &f.cache, 0)
        .unwrap_err()
        .to_string();
    let url = format!(
        "{}/dists/bookworm/main/binary-amd64/Packages.xz",
        f.repo.uri()
    );
    assert!(
        err.starts_with(&format!("index main/binary-amd64/Packages.xz of suite bookworm from {url} does not match the signed index: expected ")),
        "{err}"
    );
    assert!(err.contains("the download was deleted"), "{err}");
    let left: Vec<_> = std::fs::read_dir(f.cache.indices_dir()).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing unverified stays in the cache: {left:?}"
    );
}

#[test]
fn release_signed_by_another_key_is_refused() {
    let mut f = fixture();
    let stranger = TestKey::new();
    f.mirrors[1].keyring = stranger.keyring.clone();
    let err = Archive::open(&f.mirrors, &f.cache, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "InRelease of suite bookworm-security from {} is not validly signed by a key in {}",
            f.repo.uri(),
            stranger.keyring.display()
        )),
        "{err}"
    );
}

#[test]
fn changed_deb_on_the_mirror_is_refused_and_deleted() {
    let f = fixture();
    let lock = lock_of(&f);
    let app = &lock.packages[0];
    let on_mirror = f.repo.dir.path().join(&app.filename);
    let mut bytes = std::fs::read(&on_mirror).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&on_mirror, bytes).unwrap();
    let err = fetch(&lock, &f.cache, &f.mirrors, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "package app 1.0 from {}/{} does not match the signed index: expected {} bytes with SHA-256 {}",
            f.repo.uri(),
            app.filename,
            app.size,
            app.sha256
        )),
        "{err}"
    );
    assert!(!f.cache.deb_path(&app.sha256).exists());
    let debs_dir = f
        .cache
        .deb_path(&app.sha256)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(std::fs::read_dir(debs_dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".part")));
}

#[test]
fn deb_gone_from_the_mirror_says_to_lock_again() {
    let f = fixture();
    let lock = lock_of(&f);
    std::fs::remove_file(f.repo.dir.path().join(&lock.packages[1].filename)).unwrap();
    let err = fetch(&lock, &f.cache, &f.mirrors, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(
            "is not on the mirror (HTTP 404): the mirror no longer has libfoo 1.0-1+deb12u1: run `cargo xtask lock` to pin the versions it has now"
        ),
        "{err}"
    );
}
