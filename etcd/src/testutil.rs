//! A real etcd (Debian's `etcd-server`, installed when missing) on 127.0.0.1 (or another
//! address), for tests and benches: one member or a cluster, each with its own data folder,
//! killed when dropped.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::testutil::require_tool;

/// A member we started; killed (by its pid) when dropped.
pub struct TestEtcd {
    child: Child,
    /// Its client URL, `http://127.0.0.1:<port>` (or the address it was started on).
    pub url: String,
    /// Its peer URL.
    pub peer_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestEtcd {
    /// One member, healthy.
    pub fn start() -> TestEtcd {
        TestEtcd::cluster(1).pop().expect("one member")
    }

    /// One member listening on `host` (an address of the calling thread's network namespace).
    pub fn start_on(host: &str) -> TestEtcd {
        TestEtcd::cluster_on(host, 1).pop().expect("one member")
    }

    /// `size` members on 127.0.0.1 forming one cluster, each healthy.
    pub fn cluster(size: usize) -> Vec<TestEtcd> {
        TestEtcd::cluster_on("127.0.0.1", size)
    }

    fn cluster_on(host: &str, size: usize) -> Vec<TestEtcd> {
        // A port found free can be taken by another test before etcd binds it; etcd then
        // exits at once, and the cluster is started again on other ports.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match TestEtcd::try_cluster_on(host, size) {
                Ok(members) => return members,
                Err(why) => failures.push(why),
            }
        }
        panic!("etcd did not start: {}", failures.join("; then "));
    }

    fn try_cluster_on(host: &str, size: usize) -> Result<Vec<TestEtcd>, String> {
        let etcd = require_tool("etcd", "etcd-server");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{host}:{peer}"))
            .collect();
        let mut members: Vec<TestEtcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let dir = tempfile::tempdir().expect("temp dir");
                let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log");
                let url = format!("http://{host}:{client}");
                let peer_url = format!("http://{host}:{peer}");
                let child = Command::new(&etcd)
                    .arg(format!("--name=m{i}"))
                    .arg(format!("--data-dir={}", dir.path().join("data").display()))
                    .arg(format!("--listen-client-urls={url}"))
                    .arg(format!("--advertise-client-urls={url}"))
                    .arg(format!("--listen-peer-urls={peer_url}"))
                    .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                    .arg(format!("--initial-cluster={}", initial.join(",")))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting etcd");
                TestEtcd {
                    child,
                    url,
                    peer_url,
                    _dir: dir,
                }
            })
            .collect();
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in &mut members {
            loop {
                let healthy = http
                    .get(&format!("{}/health", member.url))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .is_some_and(|b| b.contains("true"));
                if healthy {
                    break;
                }
                let exited = member.child.try_wait().ok().flatten();
                if exited.is_some() || Instant::now() >= deadline {
                    let what = match exited {
                        Some(status) => format!("exited ({status})"),
                        None => "did not become healthy within 30 s".to_owned(),
                    };
                    let log = std::fs::read_to_string(member._dir.path().join("etcd.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(3).collect();
                    return Err(format!(
                        "etcd at {} {what}: {}",
                        member.url,
                        tail.join(" | ")
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(members)
    }
}

/// A TCP port free on 127.0.0.1 now (in the calling thread's network namespace).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A tiny HTTP server on 127.0.0.1 answering GETs from `routes` (path → 200 with the body) and
/// 404 with etcd's "Key not found" otherwise, for as long as the test runs; the URL of
/// `/discovery/abc` on it.
pub fn canned_routes(routes: Vec<(&'static str, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/discovery/abc",
        listener.local_addr().expect("addr")
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .split('?')
                .next()
                .unwrap_or("/")
                .to_string();
            let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.clone()),
                None => (
                    "404 Not Found",
                    r#"{"errorCode":100,"message":"Key not found"}"#.to_string(),
                ),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}
