//! What the update scenarios share: the versions `cargo xtask test` built, the update server
//! running on the host (reached by the guests through a `guestfwd`), the agent's configuration,
//! and the evidence a failed scenario leaves behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_contract::release::{DISK_FILE, KEY_FILE, PAYLOAD_FILE};
use kiln_qemu::{Accel, GuestFwd, GuestFwdTarget, Vm, VmConfig};
use kiln_server::client::AdminClient;
use kiln_server::serve::{self, Background, ServeConfig, ServeTls};
use serde_json::Value;

/// Where guests find the update server: an address of QEMU's user network that `guestfwd`
/// relays to the server on the host's 127.0.0.1.
pub const SERVER_GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const SERVER_GUEST_PORT: u16 = 8470;
/// The channel the scenarios publish to: the image's default (`KILN_CHANNEL`).
pub const CHANNEL: &str = "stable";
const TOKEN: &str = "kiln-ci-admin-token-not-secret";

/// One built version: `<dir>/update.payload`, `<dir>/disk.raw`, `<dir>/work/usr.img`.
#[derive(Clone, Debug)]
pub struct Version {
    pub version: String,
    pub dir: PathBuf,
}

impl Version {
    /// The version under test (v1): the disk the scenarios boot.
    pub fn under_test() -> Version {
        let disk = crate::disk_under_test();
        let dir = disk.parent().expect("the disk's directory").to_path_buf();
        let version = std::env::var("KILN_CI_VERSION")
            .expect("KILN_CI_VERSION is not set: the VM scenarios run through `cargo xtask test`");
        Version { version, dir }
    }

    /// A version `cargo xtask test` built for the update scenarios, named by `var`
    /// (`KILN_CI_V2`, `KILN_CI_V3_BROKEN`): its output directory, named after the version.
    pub fn from_env(var: &str) -> Version {
        let dir = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
            panic!("{var} is not set: the update scenarios run through `cargo xtask test`, which builds that version first")
        }));
        assert!(
            dir.join(PAYLOAD_FILE).is_file(),
            "{var}={} has no {PAYLOAD_FILE}",
            dir.display()
        );
        let version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a version directory")
            .to_owned();
        Version { version, dir }
    }

    pub fn payload(&self) -> PathBuf {
        self.dir.join(PAYLOAD_FILE)
    }

    /// The public half of the key the build signed with: what the update server trusts.
    pub fn public_key(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }

    /// SHA-256 (hex) of the first `len` bytes of this version's USR image: what its slot holds.
    pub fn usr_sha256(&self, len: u64) -> String {
        let img = self.dir.join("work/usr.img");
        sha256_prefix(&img, len)
    }

    /// The USR image's length in bytes (filesystem, verity superblock and tree).
    pub fn usr_len(&self) -> u64 {
        let img = self.dir.join("work/usr.img");
        std::fs::metadata(&img)
            .unwrap_or_else(|e| panic!("{}: {e}", img.display()))
            .len()
    }
}

/// SHA-256 (hex) of the first `len` bytes of `path`.
pub fn sha256_prefix(path: &Path, len: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let copied = std::io::copy(&mut file.take(len), &mut hasher)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        copied,
        len,
        "{} is shorter than {len} bytes",
        path.display()
    );
    kiln_contract::hex::encode(&hasher.finalize())
}

/// The Omaha app id every version carries (image.toml's `app_id`).
pub fn app_id() -> String {
    let def = crate::workspace().join("image/image.toml");
    kiln_image::definition::Definition::load(&def)
        .unwrap_or_else(|e| panic!("{}: {e:#}", def.display()))
        .image
        .app_id
}

/// Where a machine whose update server speaks HTTPS finds the CA it pins (written by its
/// cloud-config's `write_files`, named by `update: ca-file:`).
pub const GUEST_CA_FILE: &str = "/etc/kiln/update-ca.pem";

/// Kiln's update server on 127.0.0.1 with its database in the scenario's directory, trusting the
/// build's update key.
pub struct UpdateServer {
    server: Background,
    pub admin: AdminClient,
    pub db: PathBuf,
    pub app: String,
    /// Over HTTPS: the CA that signed its certificate (for 127.0.0.1 and the guests' address).
    ca: Option<PathBuf>,
}

impl UpdateServer {
    /// The server over plain HTTP.
    pub fn start(dir: &Path, public_key: &Path) -> UpdateServer {
        Self::start_with(dir, public_key, false)
    }

    /// The server over HTTPS, with a certificate from a CA of the scenario's own that the
    /// machines pin through their cloud-config (see [`UpdateServer::agent_sections`]).
    pub fn start_https(dir: &Path, public_key: &Path) -> UpdateServer {
        Self::start_with(dir, public_key, true)
    }

    fn start_with(dir: &Path, public_key: &Path, https: bool) -> UpdateServer {
        let db = dir.join("server.db");
        let ca = https.then(|| {
            kiln_updater::tls::testutil::make_ca_for(
                dir,
                "update-server",
                &[Ipv4Addr::LOCALHOST, SERVER_GUEST_ADDR],
            )
        });
        let scheme = scheme(https);
        let cfg = ServeConfig {
            db: db.clone(),
            postgres: None,
            postgres_ca: None,
            peer_url: None,
            data_dir: dir.join("server-data"),
            listen: "127.0.0.1:0".parse().expect("an address"),
            token: Some(TOKEN.to_owned()),
            public_key: Some(public_key.to_owned()),
            public_url: Some(format!(
                "{scheme}://{SERVER_GUEST_ADDR}:{SERVER_GUEST_PORT}/"
            )),
            stale_after_days: 0,
            limits: Default::default(),
            tls: ServeTls {
                tls_cert: ca.as_ref().map(|c| c.cert.clone()),
                tls_key: ca.as_ref().map(|c| c.key.clone()),
            },
        };
        let server = serve::spawn(&cfg).expect("starting the update server");
        let ca = ca.map(|c| c.ca);
        let admin = AdminClient::with_ca_file(
            &format!("{scheme}://{}/", server.addr),
            TOKEN,
            ca.as_deref(),
        )
        .expect("the admin client trusts the scenario's CA");
        let app = app_id();
        eprintln!(
            "update server on {scheme}://{} (database {})",
            server.addr,
            db.display()
        );
        UpdateServer {
            server,
            admin,
            db,
            app,
            ca,
        }
    }

    /// The `update:` and `locksmith:` sections (inside `coreos:`) that point the agent at this
    /// server (pinning its CA over HTTPS) with reboot `strategy`, checking every 15 s.
    /// `update` and `locksmith` hold more settings, a line each at the sections' indentation
    /// (four spaces); the machine's `kiln-config` turns them into `/etc/kiln/update.conf`, as a
    /// user's document would.
    pub fn agent_sections(&self, strategy: &str, update: &str, locksmith: &str) -> String {
        let pin = match self.ca {
            Some(_) => format!("    ca-file: {GUEST_CA_FILE}\n{update}"),
            None => update.to_owned(),
        };
        agent_sections(self.ca.is_some(), strategy, &pin, locksmith)
    }

    /// A top-level `write_files:` section that puts the CA the machines pin at
    /// [`GUEST_CA_FILE`]; empty over plain HTTP.
    pub fn ca_files(&self) -> String {
        let Some(ca) = &self.ca else {
            return String::new();
        };
        let pem = std::fs::read_to_string(ca).expect("the scenario's CA");
        let content: String = pem.lines().map(|l| format!("      {l}\n")).collect();
        format!(
            "write_files:\n  - path: {GUEST_CA_FILE}\n    permissions: \"0644\"\n    content: |\n{content}"
        )
    }

    /// Uploads `v`'s payload (the server checks its signature) and points the channel at it.
    pub fn publish(&self, v: &Version) {
        self.admin
            .publish(&self.app, Some(CHANNEL), &v.payload(), None, false)
            .unwrap_or_else(|e| panic!("publishing {}: {e}", v.version));
        eprintln!("published {} to {CHANNEL}", v.version);
    }

    /// The `guestfwd` that lets a guest reach this server at [`SERVER_GUEST_ADDR`].
    pub fn guest_forward(&self) -> GuestFwd {
        GuestFwd {
            guest_addr: SERVER_GUEST_ADDR,
            guest_port: SERVER_GUEST_PORT,
            target: GuestFwdTarget::Relay(self.server.addr.port()),
        }
    }

    /// What the server knows of one machine: `{"instance": …, "events": […]}`.
    pub fn instance(&self, machine_id: &str) -> Value {
        self.admin
            .instance(&self.app, machine_id)
            .unwrap_or_else(|e| panic!("asking the server about {machine_id}: {e}"))
    }

    /// Polls the machine's record until `done` accepts it; panics after `timeout` with the last.
    pub fn wait_instance(
        &self,
        machine_id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(v) = self.admin.instance(&self.app, machine_id) {
                if done(&v) {
                    return v;
                }
                last = v;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!(
            "the server did not see {what} for {machine_id} within {timeout:?}; last record:\n{last:#}\ndatabase: {}",
            self.db.display()
        )
    }
}

/// The events of an instance record as `type/result` strings in the order they came
/// (`13/1`, `14/1`, `3/1`, `3/2`, `3/0`), for asserting on their order.
pub fn event_codes(record: &Value) -> Vec<String> {
    let mut events: Vec<&Value> = record["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // The server lists the newest first; the scenario reads them as they happened.
    events.sort_by_key(|e| e["at"].as_i64().unwrap_or(0));
    events
        .iter()
        .map(|e| format!("{}/{}", e["event_type"], e["event_result"]))
        .collect()
}

/// The URL scheme of a server that speaks HTTPS (`https`) or plain HTTP.
fn scheme(https: bool) -> &'static str {
    if https {
        "https"
    } else {
        "http"
    }
}

/// [`UpdateServer::agent_sections`], for a server speaking HTTPS (`https`) or plain HTTP.
fn agent_sections(https: bool, strategy: &str, update: &str, locksmith: &str) -> String {
    let scheme = scheme(https);
    let mut text = format!(
        "  update:\n    server: {scheme}://{SERVER_GUEST_ADDR}:{SERVER_GUEST_PORT}/v1/update/\n    \
         reboot-strategy: {strategy}\n    check-interval: 15s\n    http-timeout: 60s\n    \
         health-timeout: 10m\n{update}"
    );
    if !locksmith.is_empty() {
        text.push_str(&format!("  locksmith:\n{locksmith}"));
    }
    text
}

/// The agent's lines on its last install before this boot (each step's wall time), as a guest
/// command.
pub const INSTALL_STEPS: &str =
    "sudo journalctl -b -1 -u kiln-update-agent --no-pager -o cat | grep -E '^install' || true";

/// `<VERSION_ID> <slot>` of the running system, as a guest command.
pub const RUNNING: &str = ". /usr/lib/os-release; echo \"$VERSION_ID $(grep -o 'kiln\\.slot=[ab]' /proc/cmdline | cut -d= -f2)\"";

/// Starts a machine on `v`'s disk (through a copy-on-write overlay in `work`) whose cloud-config
/// lets `public_key` in as `core` and points its agent at `server` with reboot `strategy`.
pub fn start_machine(
    name: &str,
    work: &Path,
    v: &Version,
    public_key: &str,
    strategy: &str,
    server: &UpdateServer,
) -> Vm {
    let doc = format!(
        "#cloud-config\nhostname: {name}\nssh_authorized_keys:\n  - {public_key}\n{}coreos:\n{}",
        server.ca_files(),
        server.agent_sections(strategy, "", "")
    );
    kiln_config::parse(&doc).expect("the scenario's cloud-config is valid");
    let config = work.join("cloud-config.yml");
    std::fs::write(&config, &doc).unwrap();
    let mut cfg = VmConfig::new(name, work);
    cfg.disk = Some(crate::overlay(&v.disk(), &work.join("guest.qcow2"), "8G").unwrap());
    cfg.persist = true;
    cfg.accel = Accel::Auto;
    cfg.memory_mib = 1536;
    cfg.ssh_forward = true;
    cfg.config_file = Some(config);
    cfg.guest_forwards = vec![server.guest_forward()];
    Vm::start(&cfg).unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// How much of each log a failed scenario prints.
const EVIDENCE_TAIL_LINES: usize = 40;

/// Leaves a failed scenario's evidence where the test output names it: each machine's agent
/// state and journals (fetched over ssh while it still answers), its serial log, and the update
/// server's database. Does nothing when the scenario passes. It keeps no borrow of the VMs, so
/// a scenario can power-cycle them while it lives.
pub struct Evidence {
    dir: PathBuf,
    db: PathBuf,
    machines: Vec<Machine>,
}

struct Machine {
    name: String,
    ssh_port: Option<u16>,
    serial_log: PathBuf,
    key: PathBuf,
}

impl Evidence {
    pub fn new(dir: &Path, server: &UpdateServer, vms: &[&Vm], key: &Path) -> Evidence {
        Evidence {
            dir: dir.to_owned(),
            db: server.db.clone(),
            machines: vms
                .iter()
                .map(|vm| Machine {
                    name: vm.name().to_owned(),
                    ssh_port: vm.ssh_port(),
                    serial_log: vm.serial_log().to_owned(),
                    key: key.to_owned(),
                })
                .collect(),
        }
    }
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("scenario failed; evidence in {}:", self.dir.display());
        eprintln!("  update server database: {}", self.db.display());
        let cmd = "sudo kiln-update status; sudo cat /var/lib/kiln/update/state.json; \
                   sudo journalctl -b -1 -u kiln-update-agent --no-pager; \
                   sudo journalctl -b -u kiln-update-agent --no-pager";
        for m in &self.machines {
            // CI keeps only the test's output: the last of each log goes there too.
            eprintln!(
                "  {} serial log: {}; its end:\n{}",
                m.name,
                m.serial_log.display(),
                indent(&kiln_qemu::log_tail(&m.serial_log, EVIDENCE_TAIL_LINES))
            );
            let Some(port) = m.ssh_port else { continue };
            let out = self.dir.join(format!("{}-agent.txt", m.name));
            let fetched =
                kiln_qemu::ssh_command(&m.key, "core", port, cmd, Duration::from_secs(30), None)
                    .ok()
                    .and_then(|mut c| c.output().ok());
            match fetched {
                Some(o) => {
                    let mut text = o.stdout;
                    text.extend_from_slice(&o.stderr);
                    let _ = std::fs::write(&out, &text);
                    eprintln!(
                        "  {} agent state and journal: {}; its end:\n{}",
                        m.name,
                        out.display(),
                        indent(&kiln_qemu::log_tail(&out, EVIDENCE_TAIL_LINES))
                    );
                }
                None => eprintln!("  {}: the agent's journal could not be fetched", m.name),
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_contract::update_conf::{RebootStrategy, Settings};
    use std::time::Duration;

    /// What the cluster scenario relies on reaches the agent's settings through the cloud-config.
    #[test]
    fn the_scenarios_agent_sections_set_what_they_rely_on() {
        let doc = format!(
            "#cloud-config\ncoreos:\n  etcd2:\n    name: n\n{}",
            agent_sections(
                false,
                "etcd-lock",
                "    health-units: [etcd.service]\n",
                "    lock-retry: 5s\n    lock-install: true\n",
            )
        );
        let parsed = kiln_config::parse(&doc).unwrap();
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let given = parsed.config.kiln.update_agent.unwrap();
        let mut settings = Settings::default();
        let text = given.render();
        settings
            .apply(std::path::Path::new("update.conf"), &text)
            .unwrap();
        assert_eq!(
            settings.server.as_deref(),
            Some(format!("http://{SERVER_GUEST_ADDR}:{SERVER_GUEST_PORT}/v1/update/").as_str())
        );
        assert_eq!(settings.reboot_strategy, RebootStrategy::EtcdLock);
        assert_eq!(settings.check_interval, Duration::from_secs(15));
        assert_eq!(settings.health_units, ["etcd.service"]);
        assert_eq!(settings.lock_retry, Duration::from_secs(5));
        assert!(settings.lock_install);
    }
}
