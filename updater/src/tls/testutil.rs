//! A certificate authority and a server certificate for 127.0.0.1 (or other addresses), made by
//! OpenSSL (the reference) for the tests that speak HTTPS and the VM scenarios' update server
//! (feature `testutil`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::testutil::require_tool;

/// The files of a test CA and of a server certificate it signed.
pub struct TestCa {
    /// The CA's certificate (PEM): what a client pins.
    pub ca: PathBuf,
    /// The server's certificate (PEM) and its private key (PKCS#8 PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `127.0.0.1` under `dir` (named `<name>-…`).
pub fn make_ca(dir: &Path, name: &str) -> TestCa {
    make_ca_for(dir, name, &[Ipv4Addr::LOCALHOST])
}

/// [`make_ca`] with a server certificate for each of `addresses` (the first is its name).
pub fn make_ca_for(dir: &Path, name: &str, addresses: &[Ipv4Addr]) -> TestCa {
    let openssl = require_tool("openssl", "openssl");
    let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
    let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
    let (cert, key, csr, ext) = (
        file("server.pem"),
        file("server.key"),
        file("server.csr"),
        file("server.ext"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args(["req", "-x509", "-days", "2", "-subj"])
        .arg(format!("/CN=kiln test CA {name}"))
        .args(ec)
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new(&openssl)
        .args(["req", "-subj"])
        .arg(format!("/CN={}", addresses[0]))
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            addresses
                .iter()
                .map(|a| format!("IP:{a}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .expect("writing the extensions file");
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    TestCa { ca, cert, key }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_ca_makes_a_client_and_a_server_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path(), "t");
        crate::tls::client_config(Some(&ca.ca)).unwrap();
        crate::tls::server_config(&ca.cert, &ca.key).unwrap();
        // A file without a certificate is refused by name.
        let err = crate::tls::client_config(Some(&ca.key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.key"), "{err}");
    }
}
