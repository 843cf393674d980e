//! `kiln-fleetd`: the engine, the agent and the API of one machine, in one loop. The loop runs
//! the agent's heartbeat every third of `agent_ttl`, an engine pass every
//! `engine_reconcile_interval`, and the agent's reconcile every 5 s or as soon as a watch sees a
//! change for this machine. Nothing here is lost when etcd is away: every step is tried again at
//! its next turn, and the journal says what failed and where.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_contract::fleet_conf::FleetConf;
use kiln_etcd::Client;

use crate::agent::Agent;
use crate::engine::Engine;
use crate::registry::{Layout, MachineObject, Registry};
use crate::systemd::Systemctl;

/// fleet's agent reconcile interval.
pub const AGENT_RECONCILE: Duration = Duration::from_secs(5);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs until SIGTERM or SIGINT, then leaves the cluster gracefully (units unloaded, presence
/// and leadership given up, so the engine moves the units at once).
pub fn run(conf: &FleetConf, machine_id: &str, socket: &Path) -> Result<(), String> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let public_ip = match &conf.public_ip {
        Some(ip) => ip.clone(),
        None => default_route_address().unwrap_or_default(),
    };
    let me = MachineObject {
        id: machine_id.to_owned(),
        public_ip,
        metadata: conf.metadata.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    eprintln!(
        "fleet: machine {} at {:?}, metadata {:?}, etcd {}",
        me.id,
        me.public_ip,
        me.metadata,
        conf.etcd_servers.join(",")
    );
    let etcd = Client::new(&conf.etcd_servers, conf.etcd_request_timeout);
    let prefix = &conf.etcd_key_prefix;

    // The API: its own thread, its own registry handle.
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let server = tiny_http::Server::http_unix(socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    // Any local user may use it, as fleet.socket on CoreOS allowed: fleet has no authentication
    // of its own (see ARCHITECTURE.md); whoever can run fleetctl here can run units as root.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666));
    }
    let api_registry = Registry::new(etcd.clone(), prefix);
    std::thread::spawn(move || crate::api::serve(&api_registry, &server));
    if let Some(address) = &conf.api_address {
        let server = tiny_http::Server::http(address.as_str())
            .map_err(|e| format!("listening on {address} (api_address): {e}"))?;
        eprintln!("fleet: the API also listens on http://{address} (unauthenticated: keep it on a private network)");
        let registry = Registry::new(etcd.clone(), prefix);
        std::thread::spawn(move || crate::api::serve(&registry, &server));
    }

    let mut engine = (!conf.disable_engine).then(|| {
        Engine::new(
            etcd.clone(),
            prefix,
            machine_id,
            conf.engine_reconcile_interval,
        )
    });
    let mut agent = Agent::new(
        etcd.clone(),
        prefix,
        me,
        conf.agent_ttl,
        conf.fence_on_lease_loss,
        Box::new(Systemctl::new(conf.units_directory.clone().into())),
    );
    let layout = Layout::new(prefix);
    let (wake_tx, wake) = mpsc::channel();
    etcd.spawn_waker(
        vec![layout.schedule(machine_id), layout.globals()],
        wake_tx,
        Duration::from_secs(2),
    );

    let beat_every = conf.agent_ttl / 3;
    let mut next_beat = Instant::now();
    let mut next_engine = Instant::now();
    let mut next_agent = Instant::now();
    let mut failing = [false; 3];
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_beat {
            let result = agent.heartbeat();
            report(
                &mut failing[0],
                "keeping this machine present",
                result.err(),
            );
            // Retried soon while failing: presence is what keeps the units here.
            next_beat = now
                + if failing[0] {
                    Duration::from_secs(1)
                } else {
                    beat_every
                };
        }
        if let Some(engine) = engine.as_mut() {
            if now >= next_engine {
                let result = engine.pass();
                report(&mut failing[1], "the engine's pass", result.err());
                next_engine = now + conf.engine_reconcile_interval;
            }
        }
        if now >= next_agent {
            let result = agent.reconcile();
            report(&mut failing[2], "the agent's reconcile", result.err());
            next_agent = now + AGENT_RECONCILE;
        }
        let until = [next_beat, next_agent]
            .into_iter()
            .chain(engine.as_ref().map(|_| next_engine))
            .min()
            .unwrap_or(now)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        if wake.recv_timeout(until).is_ok() {
            // A change for this machine: reconcile now (after any others that arrived with it).
            while wake.try_recv().is_ok() {}
            next_agent = Instant::now();
        }
    }
    eprintln!("fleet: stopping; unloading this machine's units and leaving the cluster");
    agent.leave();
    if let Some(engine) = engine.as_mut() {
        engine.resign();
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Logs a failure once when it starts and once when it ends, not on every retry.
fn report(failing: &mut bool, what: &str, error: Option<impl std::fmt::Display>) {
    match error {
        Some(e) if !*failing => {
            eprintln!("fleet: {what} failed: {e}; retrying");
            *failing = true;
        }
        None if *failing => {
            eprintln!("fleet: {what} works again");
            *failing = false;
        }
        _ => {}
    }
}

/// The address this machine sends from on its default route (fleet's default `public_ip`):
/// connecting a UDP socket sends nothing, it only picks the route and the source address.
pub fn default_route_address() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let gateway = routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"00000000"))
            .then(|| u32::from_str_radix(fields.get(2)?, 16).ok())
            .flatten()
    })?;
    let gateway = std::net::Ipv4Addr::from(gateway.swap_bytes());
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect((gateway, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}
