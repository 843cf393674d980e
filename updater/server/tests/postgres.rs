//! The PostgreSQL store against a real server: Debian's PostgreSQL, started by the test on
//! 127.0.0.1 in a temporary directory as the unprivileged `postgres` user (installed with
//! apt-get when missing and root). The same update flow as on SQLite, then a restart; etcd
//! discovery tokens across a restart; then two servers sharing the database, one leading, the
//! other taking over (discovery through the follower, and its tokens after the takeover), their
//! connections encrypted. The server offers TLS with a certificate for 127.0.0.1 from a test CA.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kiln_server::clock::ManualClock;
use kiln_server::model::{Policy, Status};
use kiln_server::store::{PostgresStore, PostgresTarget, Protection, Store, MIGRATIONS};
use kiln_server::{Engine, EngineConfig};
use kiln_updater::omaha::{App, Event, Response, ResponseApp};

/// A PostgreSQL server for one test, stopped and deleted on drop.
struct Postgres {
    child: Child,
    port: u16,
    /// The CA that signed the server's certificate (for 127.0.0.1).
    ca: PathBuf,
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

/// Makes `path` the `postgres` user's, for the server run as that user (as root); not root, the
/// test's files are already the server's, and the `chown` failing is expected.
fn give_to_postgres(path: &Path) {
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status();
}

fn start_postgres() -> Postgres {
    let bin = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    give_to_postgres(dir.path());
    let data = dir.path().join("data");
    // TLS: PostgreSQL wants its key readable by its own user only.
    let ca = kiln_updater::tls::testutil::make_ca(dir.path(), "postgres");
    give_to_postgres(&ca.key);
    std::fs::set_permissions(&ca.key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
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
        .args(["-c", "ssl=on", "-c"])
        .arg(format!("ssl_cert_file={}", ca.cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", ca.key.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting postgres");
    let server = Postgres {
        child,
        port,
        ca: ca.ca,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while PostgresStore::connect(&target(&server.params("postgres"))).is_err() {
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

/// `params` as the connection string says, with no CA pinned.
fn target(params: &str) -> PostgresTarget {
    PostgresTarget::new(params, None).unwrap()
}

fn engine_on(params: &str, clock: &ManualClock) -> Engine {
    Engine::open(
        Box::new(PostgresStore::connect(&target(params)).unwrap()),
        Arc::new(clock.clone()),
        EngineConfig::new("http://updates.invalid/"),
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
        meet(&engine, &clock, &["m1", "m2", "m3"]);
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

    let mut store = PostgresStore::connect(&target(&params)).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(store.load().unwrap().instances.is_empty());
}

#[test]
fn discovery_tokens_registrations_and_indexes_survive_a_restart_on_postgresql() {
    let pg = start_postgres();
    let params = pg.params("postgres");
    let clock = ManualClock::new(1_000_000);
    let token = {
        let engine = engine_on(&params, &clock);
        let made = engine.discovery.create(3).unwrap();
        let discovery = &engine.discovery;
        discovery
            .register(&made.token, "a1", "m1=http://10.0.0.1:2380")
            .unwrap();
        discovery
            .register(&made.token, "b2", "m2=http://10.0.0.2:2380")
            .unwrap();
        discovery.unregister(&made.token, "a1").unwrap();
        // A second token, deleted with its registration.
        let gone = discovery.create(1).unwrap();
        discovery
            .register(&gone.token, "c3", "m=http://10.0.0.3:2380")
            .unwrap();
        discovery.delete_token(&gone.token).unwrap();
        engine.shutdown();
        made.token
    };
    let engine = engine_on(&params, &clock);
    let tokens = engine.discovery.tokens();
    assert_eq!(tokens.len(), 1, "the deleted token stays deleted");
    let view = &tokens[0];
    assert_eq!(
        (view.token.as_str(), view.size, view.index),
        (token.as_str(), 3, 4)
    );
    assert_eq!(
        view.url,
        format!("http://updates.invalid/discovery/{token}")
    );
    let kept: Vec<(&str, &str, u64)> = view
        .registrations
        .iter()
        .map(|r| (r.id.as_str(), r.value.as_str(), r.index))
        .collect();
    assert_eq!(kept, [("b2", "m2=http://10.0.0.2:2380", 3)]);
    let next = engine
        .discovery
        .register(&token, "a1", "m1=http://10.0.0.1:2380")
        .unwrap();
    assert_eq!(next.index, 5, "the index goes on from where it was");
    engine.shutdown();
}

/// A server of several sharing `params`, on a port of its own, its connection to the database
/// encrypted and checked against `ca`.
fn shared_server(params: &str, ca: &Path, dir: &Path) -> kiln_server::serve::Background {
    kiln_server::serve::spawn(&kiln_server::serve::ServeConfig {
        db: dir.join("unused.db"),
        postgres: Some(format!("{params} sslmode=verify-full")),
        postgres_ca: Some(ca.to_owned()),
        peer_url: None,
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.to_owned()),
        public_key: None,
        public_url: Some("http://updates.invalid/".into()),
        stale_after_days: 0,
        limits: Default::default(),
        tls: Default::default(),
    })
    .unwrap()
}

const TOKEN: &str = "a-token-of-sixteen-or-more";

/// One app's check sent to a server over HTTP, and its answer.
fn check_at(server: &kiln_server::serve::Background, app: App) -> ResponseApp {
    let xml = ureq::post(&format!("http://{}/v1/update/", server.addr))
        .send_string(&request(vec![app]).to_xml())
        .unwrap_or_else(|e| panic!("update check at {}: {e}", server.addr))
        .into_string()
        .unwrap();
    let response = Response::parse(&xml).expect("the answer parses");
    response.apps.into_iter().next().expect("one app answered")
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Machines the database has known since before servers recorded when they met one: they take
/// part in a limited rollout at once (the servers run on the real clock, which a test cannot
/// move an hour on).
fn fleet_known_for_long(params: &str, machines: &[&str]) {
    use kiln_server::model::{AppRecord, Instance};
    use kiln_server::store::Write;
    let mut store = PostgresStore::connect(&target(params)).unwrap();
    let mut writes = vec![Write::App(AppRecord {
        id: APP.into(),
        name: APP.into(),
    })];
    writes.extend(machines.iter().map(|m| {
        Write::Instance(Instance {
            machine_id: (*m).into(),
            app_id: APP.into(),
            version: "1.0.0".into(),
            channel: "stable".into(),
            status: Status::Idle,
            target_version: None,
            granted_at: None,
            last_check: 0,
            last_error: None,
            boot_id: None,
            first_seen: 0,
        })
    }));
    store.apply(&writes).unwrap();
}

#[test]
fn connections_use_tls_checked_against_the_pinned_ca() {
    let pg = start_postgres();
    let params = pg.params("postgres");
    let encrypted = |t: &PostgresTarget| PostgresStore::connect(t).unwrap().encrypted().unwrap();
    let refused = |t: &PostgresTarget| match PostgresStore::connect(t) {
        Ok(_) => panic!("{} connected", t.name()),
        Err(e) => e.to_string(),
    };
    // The CA pinned: TLS required, and PostgreSQL says the connection is encrypted; libpq's
    // verify-full says the same.
    let pinned = PostgresTarget::new(&params, Some(&pg.ca)).unwrap();
    assert_eq!(pinned.protection(), Protection::Required);
    assert!(encrypted(&pinned));
    let full = format!("{params} sslmode=verify-full");
    assert!(encrypted(
        &PostgresTarget::new(&full, Some(&pg.ca)).unwrap()
    ));
    // TLS asked for without the CA: checked against the public roots, and refused.
    let unpinned = PostgresTarget::new(&format!("{params} sslmode=require"), None).unwrap();
    let err = refused(&unpinned);
    assert!(
        err.contains("UnknownIssuer") && err.contains("--postgres-ca"),
        "{err}"
    );
    // The certificate names 127.0.0.1: reached by another name, refused although the CA is right.
    let by_name = params.replace("host=127.0.0.1", "host=localhost");
    let err = refused(&PostgresTarget::new(&by_name, Some(&pg.ca)).unwrap());
    assert!(
        err.contains("not valid for name") && err.contains("host="),
        "{err}"
    );
    // Another CA pinned: refused.
    let dir = tempfile::tempdir().unwrap();
    let other = kiln_updater::tls::testutil::make_ca(dir.path(), "other");
    let err = refused(&PostgresTarget::new(&params, Some(&other.ca)).unwrap());
    assert!(err.contains("certificate"), "{err}");
    // Nothing said: in the clear, as before (the server warns when it starts).
    let plain = target(&params);
    assert_eq!(plain.protection(), Protection::Plain);
    assert!(!encrypted(&plain));
    // Contradictions and bad files are refused before connecting, naming what to change.
    let err = PostgresTarget::new(&format!("{params} sslmode=disable"), Some(&pg.ca))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sslmode=disable") && err.contains("--postgres-ca"),
        "{err}"
    );
    let err = PostgresTarget::new(&params, Some(&other.key))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other-server.key"), "{err}");
}

#[test]
fn servers_sharing_a_database_follow_one_leader_and_take_over_when_it_stops() {
    let pg = start_postgres();
    let params = pg.params("postgres");
    let dir = tempfile::tempdir().unwrap();
    fleet_known_for_long(&params, &["m1", "m2", "m3", "m4"]);
    let a = shared_server(&params, &pg.ca, &dir.path().join("a"));
    wait_until("the first server leads", || a.leads());
    let b = shared_server(&params, &pg.ca, &dir.path().join("b"));
    // B has had time to ask for the lock, and must not have got it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.leads() && !b.leads(), "one leader");
    // Both servers' connections are encrypted, as PostgreSQL sees them; none is in the clear.
    let mut look = postgres::Client::connect(&params, postgres::NoTls).unwrap();
    let count = |look: &mut postgres::Client, ssl: bool| -> i64 {
        look.query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND s.ssl = $1",
            &[&ssl],
        )
        .unwrap()
        .get(0)
    };
    assert!(
        count(&mut look, true) >= 2,
        "each server holds a TLS connection"
    );
    assert_eq!(
        count(&mut look, false),
        0,
        "no server connection in the clear"
    );

    // Set up through the leader's engine, the policy through the follower's admin API: one
    // update per hour across the fleet, whichever server a machine reaches.
    let leader = a.engine().unwrap();
    leader.publish(package("1.1.0"), Some("stable")).unwrap();
    let admin_b = kiln_server::client::AdminClient::new(&format!("http://{}/", b.addr), TOKEN);
    admin_b
        .set_policy(
            APP,
            "stable",
            &Policy {
                max_updates_per_period: 1,
                period_secs: 3600,
                ..Policy::default()
            },
        )
        .unwrap();
    assert_eq!(
        leader.app(APP).unwrap().channels[0]
            .record
            .policy
            .max_updates_per_period,
        1,
        "the follower forwarded the policy to the leader"
    );
    assert!(offered(&check_at(&b, app("m1", "1.0.0", "stable"))));
    assert!(!offered(&check_at(&a, app("m2", "1.0.0", "stable"))));
    assert!(
        !offered(&check_at(&b, app("m3", "1.0.0", "stable"))),
        "the limit holds on the follower too"
    );
    for event in [Event::download_started(), Event::download_finished()] {
        check_at(&b, with_events(app("m1", "1.0.0", "stable"), vec![event]));
    }
    // A forwarded request reaching a server that does not lead is not forwarded again.
    let looped = ureq::post(&format!("http://{}/v1/update/", b.addr))
        .set(kiln_server::shared::FORWARDED, "1")
        .send_string(&request(vec![app("m4", "1.0.0", "stable")]).to_xml());
    assert!(
        matches!(looped, Err(ureq::Error::Status(503, _))),
        "{looped:?}"
    );

    // Discovery through the follower: the token from its admin API, a registration on its
    // public route, both forwarded to the leader.
    let made = admin_b.discovery_new(3).unwrap();
    let token = made["token"].as_str().unwrap().to_owned();
    let registered = ureq::put(&format!(
        "http://{}/discovery/{token}/a1?prevExist=false",
        b.addr
    ))
    .send_form(&[("value", "m1=http://10.0.0.1:2380")])
    .unwrap();
    assert_eq!(registered.status(), 201);
    assert_eq!(
        leader.discovery.token(&token).unwrap().registrations.len(),
        1
    );

    // The leader stops (committing what it has, and releasing the lock): B takes over with
    // the state from the database, the grant and its hour included.
    drop(leader);
    drop(a);
    wait_until("the follower takes over", || b.leads());
    assert!(
        !offered(&check_at(&b, app("m4", "1.0.0", "stable"))),
        "the new leader still counts the old leader's grant"
    );
    check_at(
        &b,
        with_events(app("m1", "1.0.0", "stable"), vec![Event::installed()]),
    );
    let mut after = app("m1", "1.1.0", "stable");
    after.events = vec![Event::updated_after_reboot("1.0.0")];
    check_at(&b, after);
    let engine = b.engine().unwrap();
    let view = engine.discovery.token(&token).unwrap();
    assert_eq!(
        (view.index, view.registrations[0].value.as_str()),
        (2, "m1=http://10.0.0.1:2380"),
        "the new leader has the token"
    );
    let (m1, events) = engine.instance(APP, "m1", 10).unwrap();
    assert_eq!(m1.status, Status::Complete);
    let descriptions: Vec<&str> = events
        .iter()
        .rev()
        .map(|e| e.description.as_str())
        .collect();
    assert_eq!(
        descriptions,
        [
            "DownloadStarted",
            "DownloadFinished",
            "Installed",
            "UpdatedAfterReboot"
        ],
        "the events both leaders stored, in order"
    );
}
