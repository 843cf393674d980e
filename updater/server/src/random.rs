//! Secrets the server makes up: dashboard session ids and CSRF tokens, discovery tokens. They
//! come from the kernel's random source, never from the clock, since whoever guesses one holds
//! what it opens.

use std::io::Read;

/// A secret of `bytes` random bytes from `/dev/urandom`, written as lowercase hex (twice as
/// many digits).
pub fn secret(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(kiln_contract::hex::encode(&buf))
}
