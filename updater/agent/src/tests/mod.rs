//! Tests of the state machine and the protocol against mock servers on 127.0.0.1, with a fake
//! installer and a fake host (clock, boot id, systemd, reboot).

mod end_to_end;
mod locks;
mod machine;
mod mock;
mod protocol;

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_contract::boot::Slot;
use kiln_updater::omaha::{Request, Response, ResponseApp};
use sha2::{Digest, Sha256};

use crate::agent::{Agent, Next, Parts};
use crate::client::OmahaClient;
use crate::host::Host;
use crate::identity::{Identity, Paths};
use crate::installer::{InstallFailure, Installed, Installer, Phase};
use crate::state::{State, Status};
use crate::strategy::Strategy;
use kiln_contract::update_conf::{RebootStrategy, Settings};
use mock::{MockServer, Reply, Seen};

pub const APP_ID: &str = "{d57468fa-057a-43ea-97b0-0ed17b82a948}";
pub const MACHINE_ID: &str = "abce671d61774703ac7be60715220bfe";
pub const BOOT_1: &str = "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}";
pub const BOOT_2: &str = "{7d52a1cc-7066-40f0-91c7-7cb6a871bfde}";
/// 2026-11-19 00:00 UTC, a Thursday.
pub const T0: u64 = 1_795_046_400;

/// An installer that records what it was given instead of writing a disk.
pub struct FakeInstaller {
    pub running: Slot,
    /// The payload bytes of each install call.
    pub payloads: Vec<Vec<u8>>,
    pub phases: Vec<Phase>,
    pub fail: Option<InstallFailure>,
    pub blessed: u32,
    /// The version the "signed manifest" names.
    pub version: String,
    /// What it says a payload can hold.
    pub room: Option<u64>,
    /// The payload bytes of each check ahead of an install.
    pub checked: Vec<Vec<u8>>,
    /// What the check ahead of an install says instead of passing.
    pub refuse: Option<InstallFailure>,
}

impl FakeInstaller {
    pub fn new(running: Slot) -> Self {
        FakeInstaller {
            running,
            payloads: Vec::new(),
            phases: Vec::new(),
            fail: None,
            blessed: 0,
            version: "0.2.0".into(),
            room: None,
            checked: Vec::new(),
            refuse: None,
        }
    }
}

/// The payload's bytes, as the fake installer reads them.
fn read_payload(payload: &Path) -> Result<Vec<u8>, InstallFailure> {
    std::fs::read(payload).map_err(|e| InstallFailure {
        code: 1,
        message: e.to_string(),
    })
}

impl Installer for FakeInstaller {
    fn running_slot(&self) -> Option<Slot> {
        Some(self.running)
    }

    fn payload_room(&self) -> Option<u64> {
        self.room
    }

    fn verify(
        &mut self,
        payload: &Path,
        _accept: &crate::installer::Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<(), InstallFailure> {
        let bytes = read_payload(payload)?;
        progress(Phase::Writing, 0, bytes.len() as u64);
        self.checked.push(bytes);
        self.refuse.clone().map_or(Ok(()), Err)
    }

    fn install(
        &mut self,
        payload: &Path,
        _accept: &crate::installer::Accept,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<Installed, InstallFailure> {
        let bytes = read_payload(payload)?;
        let n = bytes.len() as u64;
        self.payloads.push(bytes);
        for phase in [Phase::Writing, Phase::Verifying, Phase::Finalizing] {
            self.phases.push(phase);
            progress(phase, n / 2, n);
            progress(phase, n, n);
            if let Some(f) = self.fail.clone().filter(|_| phase == Phase::Verifying) {
                return Err(f);
            }
        }
        Ok(Installed {
            slot: self.running.other(),
            version: self.version.clone(),
        })
    }

    fn bless(&mut self) -> Result<bool, InstallFailure> {
        self.blessed += 1;
        Ok(true)
    }

    fn rollback(&mut self) -> Result<Slot, InstallFailure> {
        Ok(self.running.other())
    }

    fn boot_entries(&self) -> Result<Vec<String>, InstallFailure> {
        Ok(vec!["kiln-a.conf".into()])
    }
}

/// A machine whose clock moves only when the agent sleeps.
pub struct FakeHost {
    pub now: u64,
    pub slept: Vec<Duration>,
    pub boot_id: String,
    pub system_state: String,
    pub active: BTreeSet<String>,
    pub reboots: u32,
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            now: T0,
            slept: Vec::new(),
            boot_id: BOOT_1.into(),
            system_state: "running".into(),
            active: BTreeSet::new(),
            reboots: 0,
        }
    }
}

impl Host for FakeHost {
    fn now(&self) -> u64 {
        self.now
    }
    fn sleep(&mut self, d: Duration) {
        self.slept.push(d);
        self.now += d.as_secs();
    }
    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }
    fn system_state(&self) -> String {
        self.system_state.clone()
    }
    fn unit_active(&self, unit: &str) -> bool {
        self.active.contains(unit)
    }
    fn reboot(&mut self) -> Result<(), String> {
        self.reboots += 1;
        Ok(())
    }
}

/// What the mock Omaha + payload server does next.
pub struct Script {
    /// `None`: noupdate.
    pub offer: Option<String>,
    pub unknown_app: bool,
    /// Answers for the next Omaha requests before the normal one: an HTTP status, or 0 to hang.
    pub omaha_failures: VecDeque<u16>,
    pub payload: Vec<u8>,
    /// The SHA-256 the response announces (defaults to the payload's).
    pub announced_sha256: Option<[u8; 32]>,
    /// The size the response announces (defaults to the payload's).
    pub announced_size: Option<u64>,
    /// The next payload GET sends only this many bytes.
    pub truncate_next: Option<usize>,
}

/// A temp root, a config pointing at a mock Omaha server, and what that server saw.
pub struct Env {
    /// Holds the temp root alive for the test's length.
    pub _dir: tempfile::TempDir,
    pub paths: Paths,
    pub config: Settings,
    pub server: MockServer,
    pub script: Arc<Mutex<Script>>,
}

impl Env {
    pub fn new() -> Env {
        Self::with_tls(None)
    }

    /// The mock server speaks HTTPS with `tls`'s certificate when given.
    pub fn with_tls(tls: Option<Arc<rustls::ServerConfig>>) -> Env {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let script = Arc::new(Mutex::new(Script {
            offer: Some("0.2.0".into()),
            unknown_app: false,
            omaha_failures: VecDeque::new(),
            payload,
            announced_sha256: None,
            announced_size: None,
            truncate_next: None,
        }));
        let server = {
            let script = script.clone();
            MockServer::start_with(move |seen| handle(&script, seen), tls)
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::under(dir.path());
        let config = Settings {
            server: Some(format!("{}/v1/update/", server.url)),
            http_timeout: Duration::from_secs(1),
            check_interval: Duration::from_secs(3600),
            health_timeout: Duration::from_secs(60),
            ..Settings::default()
        };
        Env {
            _dir: dir,
            paths,
            config,
            server,
            script,
        }
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().expect("script lock")
    }

    pub fn identity(&self, boot_id: &str) -> Identity {
        Identity {
            app_id: APP_ID.into(),
            version: "0.1.0".into(),
            channel: "stable".into(),
            machine_id: MACHINE_ID.into(),
            boot_id: boot_id.into(),
        }
    }

    /// An agent over these fakes with the config's strategy (`immediate` unless changed).
    pub fn agent<'a>(&self, installer: &'a mut dyn Installer, host: &'a mut FakeHost) -> Agent<'a> {
        let http = crate::http::agent_for(&self.config).expect("the agent's HTTP client");
        let strategy = Strategy::from_config(&self.config, &http, MACHINE_ID).expect("strategy");
        self.agent_with(installer, host, strategy)
    }

    pub fn agent_with<'a>(
        &self,
        installer: &'a mut dyn Installer,
        host: &'a mut FakeHost,
        strategy: Strategy,
    ) -> Agent<'a> {
        let http = crate::http::agent_for(&self.config).expect("the agent's HTTP client");
        let url = self.config.server.clone().expect("server");
        let client = OmahaClient::new(http.clone(), &url, self.identity(&host.boot_id.clone()));
        Agent::new(Parts {
            config: self.config.clone(),
            paths: self.paths.clone(),
            client,
            http,
            strategy,
            installer,
            host,
        })
        .expect("agent")
    }

    /// Omaha events the server received, as `type/result[/code][/previous]`.
    pub fn events(&self) -> Vec<String> {
        self.server
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/v1/update"))
            .filter_map(|s| Request::parse(&s.body).ok())
            .flat_map(|r| r.apps.into_iter().flat_map(|a| a.events))
            .map(|e| {
                let mut s = format!("{}/{}", u32::from(e.eventtype), u32::from(e.eventresult));
                if let Some(c) = e.errorcode {
                    s.push_str(&format!(" code={c}"));
                }
                if let Some(p) = e.previousversion {
                    s.push_str(&format!(" previous={p}"));
                }
                s
            })
            .collect()
    }

    pub fn payload_gets(&self) -> Vec<Seen> {
        self.server
            .seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.starts_with("/payload/"))
            .collect()
    }

    pub fn saved(&self) -> Status {
        Status::load(&self.paths.state_file()).expect("state file")
    }
}

fn handle(script: &Mutex<Script>, seen: &Seen) -> Reply {
    let mut s = script.lock().expect("script lock");
    if seen.path.starts_with("/payload/") {
        if let Some(n) = s.truncate_next.take() {
            let full = mock::serve_bytes(seen, &s.payload);
            if let Reply::Full {
                status,
                headers,
                body,
            } = full
            {
                let announced = body.len();
                return Reply::Truncated {
                    status,
                    headers,
                    body: body[..n.min(announced)].to_vec(),
                    announced,
                };
            }
        }
        return mock::serve_bytes(seen, &s.payload);
    }
    if let Some(code) = s.omaha_failures.pop_front() {
        return match code {
            0 => Reply::Hang(Duration::from_millis(1500)),
            c => Reply::status(c, "server trouble"),
        };
    }
    let request = match Request::parse(&seen.body) {
        Ok(r) => r,
        Err(e) => return Reply::status(400, &e.to_string()),
    };
    let Some(app) = request.apps.first() else {
        return Reply::status(400, "no app");
    };
    let answer = if s.unknown_app {
        ResponseApp::error_unknown_application(&app.appid)
    } else if app.updatecheck.is_none() {
        ResponseApp::ack_only(app)
    } else if let Some(version) = &s.offer {
        let sha: [u8; 32] = s
            .announced_sha256
            .unwrap_or_else(|| Sha256::digest(&s.payload).into());
        let host = seen.header("Host").unwrap_or("127.0.0.1");
        ResponseApp::update_ok(
            &app.appid,
            version,
            &format!(
                "{}://{host}/payload/",
                if seen.tls { "https" } else { "http" }
            ),
            "kiln_update.payload",
            s.announced_size.unwrap_or(s.payload.len() as u64),
            &sha,
        )
        .acknowledge(app)
    } else {
        ResponseApp::noupdate(&app.appid).acknowledge(app)
    };
    Reply::xml(Response::new(vec![answer]).to_xml())
}

/// Steps until the state is named `name` (at most `max` steps); returns the last `Next`.
pub fn step_until(agent: &mut Agent, name: &str, max: usize) -> Next {
    for _ in 0..max {
        let next = agent.step().expect("step");
        if agent.status().state.name() == name {
            return next;
        }
    }
    panic!(
        "state {} not reached; stuck in {} ({:?})",
        name,
        agent.status().state.name(),
        agent.status().last_error
    );
}

pub fn state_name(status: &Status) -> &'static str {
    status.state.name()
}

pub fn is_idle(state: &State) -> bool {
    matches!(state, State::Idle)
}
