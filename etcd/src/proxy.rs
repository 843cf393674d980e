//! A worker's etcd endpoint: a layer-4 proxy, each client connection passed whole to one member
//! (gRPC, the JSON gateway and its streaming watches alike), as etcd's own `etcd gateway` does,
//! with two differences that a cluster losing a machine needs:
//!
//! - a member is dialled with a short timeout, and one that does not answer is passed over (and
//!   left alone for a few seconds) for the next: etcd's gateway dials without a timeout, so a
//!   member whose machine is gone (no reset, only silence) held every connection sent to it for
//!   the kernel's connect timeout, minutes, longer than any client waits;
//! - the members can change while it runs ([`Members::set`]): connections already passed on
//!   keep going, new ones go to the new members; nothing is restarted.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a member may take to accept a connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member that did not accept one is passed over.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// After a client closed its side, how long the member's answer may still take.
const DRAIN: Duration = Duration::from_secs(300);

/// The members' client addresses (`host:port`), and which were found down.
pub struct Members {
    list: Mutex<Vec<(String, Option<Instant>)>>,
    next: AtomicUsize,
    dialer: fn(&str) -> io::Result<TcpStream>,
}

impl Members {
    pub fn new(addrs: &[String]) -> Arc<Members> {
        Members::with_dialer(addrs, dial)
    }

    /// With another way to dial a member (tests: a member that never answers).
    fn with_dialer(addrs: &[String], dialer: fn(&str) -> io::Result<TcpStream>) -> Arc<Members> {
        let members = Arc::new(Members {
            list: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            dialer,
        });
        members.set(addrs);
        members
    }

    /// Replaces the members; one already known keeps what was found of it.
    pub fn set(&self, addrs: &[String]) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *list);
        *list = addrs
            .iter()
            .map(|a| {
                let down = old.iter().find(|(o, _)| o == a).and_then(|(_, d)| *d);
                (a.clone(), down)
            })
            .collect();
    }

    /// The members to try for one connection: round robin, those found down last.
    fn order(&self) -> Vec<String> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        let now = Instant::now();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for i in 0..list.len() {
            let (addr, until) = &list[(start + i) % list.len()];
            match until {
                Some(t) if *t > now => down.push(addr.clone()),
                _ => up.push(addr.clone()),
            }
        }
        up.extend(down);
        up
    }

    fn mark(&self, addr: &str, down: bool) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, until)) = list.iter_mut().find(|(a, _)| a == addr) {
            *until = down.then(|| Instant::now() + DOWN_FOR);
        }
    }

    /// A connection to the first member that accepts one, and its address; why each failed.
    pub fn dial(&self) -> Result<(TcpStream, String), String> {
        let mut reasons = Vec::new();
        for addr in self.order() {
            match (self.dialer)(&addr) {
                Ok(stream) => {
                    self.mark(&addr, false);
                    return Ok((stream, addr));
                }
                Err(e) => {
                    self.mark(&addr, true);
                    reasons.push(format!("{addr}: {e}"));
                }
            }
        }
        Err(if reasons.is_empty() {
            "no member is known".into()
        } else {
            reasons.join("; ")
        })
    }
}

fn dial(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    for a in addrs {
        match TcpStream::connect_timeout(&a, DIAL_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Accepts connections on `listener` for ever, each passed to a member on a thread of its own.
/// `say` is told of a connection no member took.
pub fn serve(listener: TcpListener, members: Arc<Members>, say: fn(&str)) -> io::Result<()> {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            // A client that went away before it was accepted, or no file descriptor left for
            // a moment: the next one is taken.
            Err(e) => {
                say(&format!("accepting a connection: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let members = Arc::clone(&members);
        std::thread::spawn(move || match members.dial() {
            Ok((member, _)) => pass(client, member),
            Err(e) => {
                say(&format!("no member took a connection: {e}"));
                let _ = client.shutdown(Shutdown::Both);
            }
        });
    }
    Ok(())
}

/// Copies both ways until the member's side ends; a client's end of writing is passed on.
fn pass(client: TcpStream, member: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = member.set_nodelay(true);
    let (Ok(mut client_r), Ok(mut member_w)) = (client.try_clone(), member.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = copy(&mut client_r, &mut member_w);
        let _ = member_w.shutdown(Shutdown::Write);
        // The client sends no more; the member's answer is bounded from here.
        let _ = member_w.set_read_timeout(Some(DRAIN));
    });
    let (mut member_r, mut client_w) = (member, client);
    let _ = copy(&mut member_r, &mut client_w);
    // The member's side is done: so is the client's.
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = member_r.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

/// `io::copy` with each read passed on at once (a watch's events must not wait in a buffer).
fn copy(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests;
