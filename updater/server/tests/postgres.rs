//! The PostgreSQL store against a real server: Debian's PostgreSQL, started by the test on
//! 127.0.0.1 in a temporary directory as the unprivileged `postgres` user (installed with
//! apt-get when missing and root). The same update flow as on SQLite, then a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kiln_server::clock::ManualClock;
use kiln_server::model::{Policy, Status};
use kiln_server::store::{PostgresStore, Store, MIGRATIONS};
use kiln_server::{Engine, EngineConfig};
use kiln_updater::omaha::Event;

/// A PostgreSQL server for one test, stopped and deleted on drop.
struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    let find = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    if let Some(dir) = find() {
        return dir;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    assert!(
        root.unwrap_or(false),
        "PostgreSQL is not installed: run `apt-get install postgresql` (as root)"
    );
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "postgresql"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("running apt-get");
    assert!(status.success(), "apt-get install postgresql failed");
    find().expect("postgresql installed its binaries under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (it refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if is_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn start_postgres() -> Postgres {
    let bin = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let chown = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir.path())
        .status();
    // Not root: the directory is already ours.
    let _ = chown;
    let data = dir.path().join("data");
    let status = as_postgres(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "kiln", "-E", "UTF8", "--no-sync", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .expect("running initdb");
    assert!(status.success(), "initdb failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = as_postgres(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir.path())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-F"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting postgres");
    let server = Postgres {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while PostgresStore::connect(&server.params("postgres")).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not accept connections within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

impl Postgres {
    fn params(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=kiln dbname={db}", self.port)
    }
}

fn engine_on(params: &str, clock: &ManualClock) -> Engine {
    Engine::open(
        Box::new(PostgresStore::connect(params).unwrap()),
        Arc::new(clock.clone()),
        EngineConfig {
            public_url: "http://updates.invalid/".into(),
        },
    )
    .unwrap()
}

#[test]
fn update_flow_rollout_and_restart_on_postgresql() {
    let pg = start_postgres();
    let params = pg.params("postgres");
    let clock = ManualClock::new(1_000_000);
    {
        let engine = engine_on(&params, &clock);
        engine.publish(package("1.1.0"), Some("stable")).unwrap();
        let policy = Policy {
            safe_mode: true,
            halt_error_rate: Some(0.4),
            ..Policy::default()
        };
        engine.set_policy(APP, "stable", policy).unwrap();
        // Publish → check → granted → events → complete.
        assert!(offered(&check(&engine, app("m1", "1.0.0", "stable"))));
        assert!(
            !offered(&check(&engine, app("m2", "1.0.0", "stable"))),
            "safe mode"
        );
        for event in [
            Event::download_started(),
            Event::download_finished(),
            Event::installed(),
        ] {
            check(
                &engine,
                with_events(app("m1", "1.0.0", "stable"), vec![event]),
            );
        }
        let mut after = app("m1", "1.1.0", "stable");
        after.events = vec![Event::updated_after_reboot("1.0.0")];
        check(&engine, after);
        let (m1, events) = engine.instance(APP, "m1", 10).unwrap();
        assert_eq!(m1.status, Status::Complete);
        assert_eq!(events.len(), 4);
        // Two errors of three finished: past 40 %, the channel halts.
        assert!(offered(&check(&engine, app("m2", "1.0.0", "stable"))));
        assert!(offered(&check(&engine, app("m3", "1.0.0", "stable"))));
        check(
            &engine,
            with_events(app("m2", "1.0.0", "stable"), vec![Event::error(10)]),
        );
        check(
            &engine,
            with_events(app("m3", "1.0.0", "stable"), vec![Event::error(14)]),
        );
        assert!(engine.app(APP).unwrap().channels[0].record.halted.is_some());
        assert_eq!(engine.recent_errors(APP, 10).unwrap().len(), 2);
        engine.shutdown();
    }
    // A second server on the same database sees the same state.
    let engine = engine_on(&params, &clock);
    let view = engine.app(APP).unwrap();
    assert!(view.channels[0].record.halted.is_some());
    assert!(view.channels[0].record.policy.safe_mode);
    assert_eq!(
        (view.channels[0].completes, view.channels[0].errors),
        (1, 2)
    );
    let (m2, _) = engine.instance(APP, "m2", 1).unwrap();
    assert_eq!(m2.last_error.as_deref(), Some("PayloadHashMismatchError"));
    clock.advance(100 * 86_400);
    assert_eq!(engine.expire(86_400).unwrap(), 3);
    engine.shutdown();

    let mut store = PostgresStore::connect(&params).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(store.load().unwrap().instances.is_empty());
}
