//! Test fixtures made with the reference tools: an OpenPGP key (gpg), .debs (`dpkg-deb
//! --build`), and a local `file://` mirror with a signed InRelease and an xz Packages index.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::sources::Mirror;
use crate::testutil::require_tool;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A throw-away signing key in its own gpg home, and a keyring file holding its public part.
pub struct TestKey {
    home: tempfile::TempDir,
    pub keyring: PathBuf,
}

impl TestKey {
    pub fn new() -> TestKey {
        let gpg = require_tool("gpg", "gnupg");
        require_tool("gpgv", "gpgv");
        let home = tempfile::tempdir().unwrap();
        let gpg_cmd = || {
            let mut c = Command::new(&gpg);
            c.arg("--batch").arg("--homedir").arg(home.path());
            c
        };
        run(gpg_cmd().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "Kiln Test <test@kiln.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        let keyring = home.path().join("keyring.gpg");
        run(gpg_cmd().arg("--output").arg(&keyring).arg("--export"));
        TestKey { home, keyring }
    }

    /// A cleartext-signed copy of `data`, as an InRelease file is.
    pub fn clearsign(&self, data: &[u8]) -> Vec<u8> {
        let input = self.home.path().join("to-sign");
        let output = self.home.path().join("signed");
        std::fs::write(&input, data).unwrap();
        let _ = std::fs::remove_file(&output);
        run(Command::new("gpg")
            .arg("--batch")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--digest-algo", "SHA256", "--clearsign", "--output"])
            .arg(&output)
            .arg(&input));
        std::fs::read(&output).unwrap()
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        // The agent gpg started for this home would otherwise outlive the test.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// Builds `<out>/<name>_<version>_amd64.deb` with `dpkg-deb --build` from a staged root whose
/// files `stage` writes (paths relative to the package root); `extra_control` is added to the
/// control file (a `Depends:` line, ...).
pub fn build_deb(
    out: &Path,
    name: &str,
    version: &str,
    extra_control: &str,
    compression: &str,
    stage: impl FnOnce(&Path),
) -> PathBuf {
    let dpkg_deb = require_tool("dpkg-deb", "dpkg");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("DEBIAN")).unwrap();
    std::fs::write(
        root.path().join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Kiln <test@kiln.invalid>\n\
             {extra_control}Description: a Kiln test package\n"
        ),
    )
    .unwrap();
    stage(root.path());
    let deb = out.join(format!("{name}_{version}_amd64.deb"));
    run(Command::new(dpkg_deb)
        .arg(format!("-Z{compression}"))
        .arg("--build")
        .arg(root.path())
        .arg(&deb));
    deb
}

/// Writes a file, creating its parents.
pub fn put(root: &Path, path: &str, content: &[u8]) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Size and hex SHA-256 of a file, as a Packages index lists them.
fn size_and_sha256(path: &Path) -> (u64, String) {
    let (digest, size) = kiln_contract::digest::sha256_file(path).unwrap();
    (size, kiln_contract::hex::encode(&digest))
}

/// A local mirror below a temp dir, reached with `file://` URLs, signed by its own key.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub key: TestKey,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        TestRepo {
            dir: tempfile::tempdir().unwrap(),
            key: TestKey::new(),
        }
    }

    pub fn uri(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Publishes `debs` as suite `suite`: copies them into the pool, writes the Packages index
    /// (fields from `dpkg-deb -f`, as dpkg-scanpackages does), compresses it with xz (kept by
    /// name and by hash), and signs an InRelease listing it. Returns the suite's mirror.
    pub fn publish(&self, suite: &str, debs: &[PathBuf]) -> Mirror {
        let xz = require_tool("xz", "xz-utils");
        let mut packages = String::new();
        for deb in debs {
            let name = deb.file_name().unwrap().to_str().unwrap();
            let filename = format!("pool/main/{suite}/{name}");
            let dest = self.dir.path().join(&filename);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(deb, &dest).unwrap();
            let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
            let (size, sha) = size_and_sha256(deb);
            packages.push_str(&String::from_utf8(control).unwrap());
            packages.push_str(&format!(
                "Filename: {filename}\nSize: {size}\nSHA256: {sha}\n\n"
            ));
        }
        let dists = self.dir.path().join("dists").join(suite);
        let index = dists.join("main/binary-amd64/Packages");
        std::fs::create_dir_all(index.parent().unwrap()).unwrap();
        std::fs::write(&index, packages).unwrap();
        run(Command::new(xz).arg("-k").arg("-f").arg(&index));
        let (size, sha) = size_and_sha256(&index.with_extension("xz"));
        // A copy by hash too, as Debian's mirrors keep them.
        let by_hash = index.parent().unwrap().join("by-hash/SHA256");
        std::fs::create_dir_all(&by_hash).unwrap();
        std::fs::copy(index.with_extension("xz"), by_hash.join(&sha)).unwrap();
        let release = format!(
            "Origin: Kiln test\nSuite: {suite}\nCodename: {suite}\nDate: Sat, 20 May 2025 08:12:13 UTC\n\
             Acquire-By-Hash: yes\nArchitectures: amd64\nComponents: main\n\
             SHA256:\n {sha} {size} main/binary-amd64/Packages.xz\n"
        );
        std::fs::write(
            dists.join("InRelease"),
            self.key.clearsign(release.as_bytes()),
        )
        .unwrap();
        let mut mirror = Mirror::new(&self.uri(), suite);
        mirror.keyring = self.key.keyring.clone();
        mirror
    }
}
