//! Downloads the locked .debs into the cache (`<cache>/debs/<sha256>.deb`), a few at a time,
//! each verified against the lock's size and SHA-256 before it takes its name. A file is only
//! ever named by its verified hash, so a cached file is trusted after a size check.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::http::{self, Expected};
use super::lock::{Lock, LockedPackage};
use super::sources::Mirror;
use super::Cache;

/// How many downloads run at once: enough to hide a mirror's latency, few enough to be polite.
pub const DEFAULT_JOBS: usize = 4;

/// A locked package, present and verified in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedDeb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// False when it was already in the cache.
    pub downloaded: bool,
}

/// Makes every package of `lock` present in the cache, downloading the missing ones from the
/// mirror of their suite with `jobs` parallel downloads. Returns them in lock order.
pub fn fetch(
    lock: &Lock,
    cache: &Cache,
    mirrors: &[Mirror],
    jobs: usize,
) -> Result<Vec<FetchedDeb>> {
    let urls: Vec<String> = lock
        .packages
        .iter()
        .map(|p| {
            let mirror =
                mirrors
                    .iter()
                    .find(|m| m.suite == p.suite)
                    .ok_or_else(|| Error::NoMirror {
                        suite: p.suite.clone(),
                        searched: "the mirrors given to fetch".to_string(),
                    })?;
            Ok(mirror.url(&p.filename))
        })
        .collect::<Result<_>>()?;
    let missing: usize = lock
        .packages
        .iter()
        .filter(|p| !is_cached(cache, p))
        .count();
    let bytes = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<FetchedDeb>>>> =
        Mutex::new(lock.packages.iter().map(|_| None).collect());
    let terminal = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= lock.packages.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let r = fetch_one(&lock.packages[i], &urls[i], cache, &bytes);
                match &r {
                    Err(_) => failed.store(true, Ordering::Relaxed),
                    Ok(f) if f.downloaded && !terminal => {
                        eprintln!(
                            "fetched {} {} ({:.1} MB)",
                            f.name,
                            f.version,
                            f.size as f64 / 1e6
                        )
                    }
                    Ok(_) => {}
                }
                done.fetch_add(1, Ordering::Relaxed);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
        if terminal && missing > 0 {
            s.spawn(|| progress_line(&bytes, &done, lock.packages.len(), &failed));
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        // Slots left empty belong to packages skipped after another one failed; the failure is
        // among the filled ones, in lock order.
        .flatten()
        .collect()
}

fn is_cached(cache: &Cache, p: &LockedPackage) -> bool {
    std::fs::metadata(cache.deb_path(&p.sha256)).is_ok_and(|m| m.len() == p.size)
}

fn fetch_one(p: &LockedPackage, url: &str, cache: &Cache, bytes: &AtomicU64) -> Result<FetchedDeb> {
    let path = cache.deb_path(&p.sha256);
    let downloaded = !is_cached(cache, p);
    if downloaded {
        http::download_verified(
            url,
            &path,
            &Expected {
                size: p.size,
                sha256: p.sha256.clone(),
            },
            &format!("package {} {}", p.name, p.version),
            &format!(
                "the mirror no longer has {} {}: run `cargo xtask lock` to pin the versions it has now",
                p.name, p.version
            ),
            bytes,
        )?;
    }
    Ok(FetchedDeb {
        name: p.name.clone(),
        version: p.version.clone(),
        path,
        size: p.size,
        sha256: p.sha256.clone(),
        downloaded,
    })
}

/// Rewrites one stderr line with the bytes so far and the rate, until all are done.
fn progress_line(bytes: &AtomicU64, done: &AtomicUsize, total: usize, failed: &AtomicBool) {
    let start = Instant::now();
    loop {
        let finished = done.load(Ordering::Relaxed) >= total || failed.load(Ordering::Relaxed);
        let b = bytes.load(Ordering::Relaxed) as f64;
        let secs = start.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\rfetching packages: {}/{total}, {:.1} MB, {:.1} MB/s   ",
            done.load(Ordering::Relaxed),
            b / 1e6,
            b / 1e6 / secs
        );
        let _ = std::io::stderr().flush();
        if finished {
            eprintln!();
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
