//! The proxy with plain TCP servers standing for members: bytes both ways, a member that never
//! answers passed over within the dial timeout, members changed while it runs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// A member that answers every connection with its name, then echoes what it reads.
fn member(name: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let _ = c.write_all(name.as_bytes());
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A member whose machine is gone: its dial times out (as `dial` does after [`DIAL_TIMEOUT`]
/// when no answer comes, not even a reset).
const SILENT: &str = "silent:2379";

fn dial_or_time_out(addr: &str) -> std::io::Result<TcpStream> {
    if addr == SILENT {
        std::thread::sleep(DIAL_TIMEOUT);
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    dial(addr)
}

fn proxy(members: &Arc<Members>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let m = Arc::clone(members);
    std::thread::spawn(move || serve(l, m, |_| {}));
    addr
}

/// Connects through the proxy, reads the member's name, and checks an echo.
fn ask(proxy: &str) -> String {
    let mut c = TcpStream::connect(proxy).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut name = [0u8; 2];
    c.read_exact(&mut name).unwrap();
    c.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    // A half-close is passed on: the member sees the end and closes, and so does the proxy.
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    String::from_utf8(name.to_vec()).unwrap()
}

#[test]
fn connections_go_round_robin_and_a_silent_member_is_passed_over() {
    let members = Members::with_dialer(
        &[member("m1"), SILENT.to_string(), member("m3")],
        dial_or_time_out,
    );
    let p = proxy(&members);
    let t = Instant::now();
    let names: Vec<String> = (0..6).map(|_| ask(&p)).collect();
    // The silent one cost one dial timeout, then was left alone.
    assert!(
        t.elapsed() < DIAL_TIMEOUT * 2 + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert!(names.iter().all(|n| n == "m1" || n == "m3"), "{names:?}");
    assert!(
        names.contains(&"m1".into()) && names.contains(&"m3".into()),
        "{names:?}"
    );
}

#[test]
fn members_changed_while_it_runs_take_new_connections() {
    let members = Members::new(&[member("m1")]);
    let p = proxy(&members);
    assert_eq!(ask(&p), "m1");
    members.set(&[member("m2")]);
    assert_eq!(ask(&p), "m2");
    // None at all: the client's connection is closed, not held.
    members.set(&[]);
    let mut c = TcpStream::connect(&p).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    assert_eq!(c.read_to_end(&mut buf).unwrap_or(0), 0);
}
