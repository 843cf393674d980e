//! A small HTTP/1.1 server on 127.0.0.1 (port 0) for tests, plain or over TLS: every request is
//! recorded and answered by a closure, one connection at a time, each closed after its answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether it came over TLS.
    pub tls: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Announce `announced` bytes but send only `body`, then close: a broken-off download.
    Truncated {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        announced: usize,
    },
    /// Say nothing for this long, then close: a server that hangs.
    Hang(Duration),
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn xml(body: String) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: body.into_bytes(),
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct MockServer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MockServer {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> MockServer {
        Self::start_with(handler, None)
    }

    /// Over TLS with `tls`'s certificate when given (the URL is then `https://`).
    pub fn start_with(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().expect("local addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || serve(listener, &*handler, &seen, &stop, tls.as_ref()))
        };
        MockServer {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("mock server lock").clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept call so the thread sees the flag.
        let addr = self.url.split("://").nth(1).unwrap_or_default();
        let _ = TcpStream::connect(addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    tls: Option<&Arc<rustls::ServerConfig>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        match tls {
            None => exchange(stream, false, handler, seen),
            Some(config) => {
                let Ok(connection) = rustls::ServerConnection::new(Arc::clone(config)) else {
                    continue;
                };
                let mut stream = rustls::StreamOwned::new(connection, stream);
                exchange(&mut stream, true, handler, seen);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        }
    }
}

/// Reads one request from `stream`, records it, and answers it.
fn exchange(mut stream: impl Read + Write, tls: bool, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    let Some(mut request) = read_request(&mut stream) else {
        return;
    };
    request.tls = tls;
    seen.lock().expect("mock server lock").push(request.clone());
    answer(stream, handler(&request));
}

fn read_request(stream: &mut impl Read) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        tls: false,
    })
}

fn answer(mut stream: impl Write, reply: Reply) {
    let (status, headers, body, announced) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let n = body.len();
            (status, headers, body, n)
        }
        Reply::Truncated {
            status,
            headers,
            body,
            announced,
        } => (status, headers, body, announced),
        Reply::Hang(d) => {
            std::thread::sleep(d);
            return;
        }
    };
    let mut head =
        format!("HTTP/1.1 {status} Mock\r\nContent-Length: {announced}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// Answers a GET for `bytes`, honouring `Range: bytes=N-` with a 206.
pub fn serve_bytes(request: &Seen, bytes: &[u8]) -> Reply {
    let from = request
        .header("Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match from {
        Some(from) if from < bytes.len() => Reply::Full {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
            body: bytes[from..].to_vec(),
        },
        _ => Reply::Full {
            status: 200,
            headers: Vec::new(),
            body: bytes.to_vec(),
        },
    }
}
