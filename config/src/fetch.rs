//! Fetching the document named by `kiln.config.url=`: a plain HTTP/1.0 GET (no chunked
//! encoding to decode, the server closes after the body), bounded in time and size. Only
//! `http://`: the document travels on the provisioning network the way iPXE scripts and
//! CoreOS's `cloud-config-url` did; a document with secrets belongs on the OEM partition.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Larger documents are refused rather than read into memory without bound.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: only http:// URLs can be fetched at boot; serve the document over http or put it on the OEM partition as cloud-config.yml")]
    Scheme { url: String },
    #[error("{url}: not a URL of the form http://host[:port]/path")]
    Malformed { url: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: the server answered `{status}`")]
    Status { url: String, status: String },
    #[error("{url}: the answer is not HTTP: {problem}")]
    Protocol { url: String, problem: String },
    #[error("{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
}

/// GETs `url` and returns the body of a 200 answer.
pub fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.contains("://") {
            FetchError::Scheme { url: url.into() }
        } else {
            FetchError::Malformed { url: url.into() }
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(FetchError::Malformed { url: url.into() });
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let io = |source| FetchError::Io {
        url: url.into(),
        source,
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| FetchError::Malformed { url: url.into() })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: kiln-config\r\nAccept: */*\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take((MAX_DOCUMENT_BYTES + 64 * 1024) as u64)
        .read_to_end(&mut answer)
        .map_err(io)?;
    body_of(url, &answer)
}

/// Splits an HTTP answer into status and body; only `200` is a document.
fn body_of(url: &str, answer: &[u8]) -> Result<Vec<u8>, FetchError> {
    let protocol = |problem: &str| FetchError::Protocol {
        url: url.into(),
        problem: problem.into(),
    };
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| protocol("no end of headers"))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(protocol(&format!("status line `{status_line}`")));
    }
    if code != "200" {
        return Err(FetchError::Status {
            url: url.into(),
            status: status_line.to_string(),
        });
    }
    let body = &answer[end + 4..];
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(FetchError::TooLarge { url: url.into() });
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server on 127.0.0.1 that answers `reply` and returns its URL.
    fn serve(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(reply).unwrap();
        });
        format!("http://127.0.0.1:{port}/node1.yml")
    }

    #[test]
    fn a_200_answer_gives_its_body() {
        let url = serve(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/yaml\r\n\r\n#cloud-config\nhostname: a\n",
        );
        let body = fetch(&url, Duration::from_secs(10)).unwrap();
        assert_eq!(body, b"#cloud-config\nhostname: a\n");
    }

    #[test]
    fn other_answers_and_urls_are_refused_with_the_url() {
        let url = serve(b"HTTP/1.1 404 Not Found\r\n\r\nno");
        let e = fetch(&url, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("404 Not Found") && e.contains(&url), "{e}");
        let e = fetch("https://h/x", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, FetchError::Scheme { .. }), "{e}");
        let e = fetch("h/x", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, FetchError::Malformed { .. }), "{e}");
        let e = body_of("u", b"SSH-2.0-x\r\n\r\n").unwrap_err();
        assert!(matches!(e, FetchError::Protocol { .. }), "{e}");
    }
}
