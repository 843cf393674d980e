//! The update state machine: idle → checking → downloading → writing → verifying → finalizing →
//! reboot-needed → rebooting → confirming → idle, with backoff on transient failures.
//!
//! One method per state; each does one transition, saves the state, and says how long to wait
//! before the next step. A restart loads the saved state and resumes (see [`Agent::new`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_updater::omaha::Event;
use sha2::{Digest, Sha256};

use crate::client::{ClientError, OmahaClient};
use crate::download::{self, DownloadError};
use crate::host::{self, Host};
use crate::identity::Paths;
use crate::installer::{Accept, Installer, Phase, Refusal};
use crate::state::{Offer, Pending, Progress, State, StateError, Status};
use crate::strategy::Strategy;
use kiln_contract::errorcode;
use kiln_contract::update_conf::{RebootStrategy, Settings};

/// First retry after a transient failure; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// No backoff wait is longer than this.
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// How long to wait for a reboot that was asked for before asking again.
const REBOOT_WAIT: Duration = Duration::from_secs(300);
/// Health polling interval after a reboot.
const HEALTH_POLL: Duration = Duration::from_secs(5);
/// Save download progress at most this often (bytes).
const PROGRESS_SAVE_STEP: u64 = 32 << 20;
/// Failed attempts in a row at one payload's download (each resuming the last) before its
/// partial file is deleted and the update fails; the backoff between them reaches an hour.
const MAX_DOWNLOAD_ATTEMPTS: u32 = 8;
/// At most this many events wait for the server; the oldest go first when more come.
const MAX_UNSENT_EVENTS: usize = 16;
/// How soon an idle agent tries unsent events again (checks may be an hour apart).
const EVENT_RETRY: Duration = Duration::from_secs(60);
/// For this long after the agent starts (at boot, its network may still be coming up: the agent
/// does not hold the boot for `network-online.target`), a server it cannot connect to at all is
/// tried again after [`STARTUP_RETRY`], not after a backoff or [`EVENT_RETRY`].
const STARTUP_WINDOW: Duration = Duration::from_secs(120);
const STARTUP_RETRY: Duration = Duration::from_secs(5);

/// What the caller should do before the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Step again at once.
    Now,
    /// Sleep (at most) this long, waking early for `kiln-update check`.
    Wait(Duration),
}

/// Everything the agent is built from.
pub struct Parts<'a> {
    pub config: Settings,
    pub paths: Paths,
    pub client: OmahaClient,
    pub http: ureq::Agent,
    pub strategy: Strategy,
    pub installer: &'a mut dyn Installer,
    pub host: &'a mut dyn Host,
}

/// The update agent.
pub struct Agent<'a> {
    config: Settings,
    paths: Paths,
    client: OmahaClient,
    http: ureq::Agent,
    strategy: Strategy,
    installer: &'a mut dyn Installer,
    host: &'a mut dyn Host,
    status: Status,
    /// The current check was asked for by an operator (`installsource="ondemandupdate"`).
    on_demand: bool,
    /// Unix time before which an idle agent does not try unsent events again.
    events_retry_at: u64,
    /// Unix time the agent started, for [`STARTUP_WINDOW`].
    started: u64,
}

impl<'a> Agent<'a> {
    /// Loads the saved state and moves it to where a restarted agent resumes:
    /// an interrupted check is redone, an interrupted install starts over from its verified
    /// payload, and a reboot that happened moves on to confirming.
    pub fn new(parts: Parts<'a>) -> Result<Agent<'a>, StateError> {
        let status = Status::load(&parts.paths.state_file())?;
        let mut agent = Agent {
            config: parts.config,
            paths: parts.paths,
            client: parts.client,
            http: parts.http,
            strategy: parts.strategy,
            installer: parts.installer,
            host: parts.host,
            status,
            on_demand: false,
            events_retry_at: 0,
            started: 0,
        };
        agent.started = agent.host.now();
        let resumed = match agent.status.state.clone() {
            State::Checking => State::Idle,
            State::Writing { offer } | State::Verifying { offer } | State::Finalizing { offer } => {
                State::Writing { offer }
            }
            // Rebooted, by the agent or (with `off`) by an operator: see which slot came up.
            State::Rebooting { pending } | State::RebootNeeded { pending }
                if !pending.boot_id.is_empty() && pending.boot_id != agent.host.boot_id() =>
            {
                State::Confirming { pending }
            }
            other => other,
        };
        agent.set(resumed)?;
        Ok(agent)
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Runs forever: step, wait, step.
    pub fn run(&mut self) -> Result<(), StateError> {
        loop {
            match self.step()? {
                Next::Now => {}
                Next::Wait(d) => self.wait(d),
            }
        }
    }

    /// One transition.
    pub fn step(&mut self) -> Result<Next, StateError> {
        match self.status.state.clone() {
            State::Idle => self.idle(),
            State::Checking => self.check(),
            State::Downloading { offer } => self.download(offer),
            State::Writing { offer } | State::Verifying { offer } | State::Finalizing { offer } => {
                self.install(offer)
            }
            State::RebootNeeded { pending } => self.reboot_needed(pending),
            State::Rebooting { pending } => self.rebooting(pending),
            State::Confirming { pending } => self.confirm(pending),
            State::Backoff {
                retry_at, offer, ..
            } => self.backoff(retry_at, offer),
        }
    }

    /// idle → checking when the check is due or asked for.
    fn idle(&mut self) -> Result<Next, StateError> {
        if self.status.lock_held {
            self.release_lock();
        }
        if self.config.server.is_none() {
            self.status.last_error = Some(format!(
                "no update server configured: set `server` in {}",
                kiln_contract::paths::UPDATE_CONF
            ));
            self.save()?;
            return Ok(Next::Wait(self.config.check_interval));
        }
        let now = self.host.now();
        let unsent = self.status.unsent_events.len();
        if unsent > 0 && now >= self.events_retry_at {
            self.send_events();
            if self.status.unsent_events.len() != unsent {
                self.save()?;
            }
        }
        if self.take_trigger() || now >= self.status.next_check {
            self.set(State::Checking)?;
            return Ok(Next::Now);
        }
        let mut wait = self.status.next_check - now;
        if !self.status.unsent_events.is_empty() {
            wait = wait.min(self.events_retry_at.saturating_sub(now).max(1));
        }
        Ok(Next::Wait(Duration::from_secs(wait)))
    }

    /// checking → idle (no update, or a refusal) | downloading | backoff.
    fn check(&mut self) -> Result<Next, StateError> {
        self.status.last_check = Some(self.host.now());
        self.status.checks += 1;
        // The server hears what happened before it is asked what is next.
        self.send_events();
        let on_demand = std::mem::take(&mut self.on_demand);
        match self.client.check(on_demand) {
            Ok(None) => self.idle_after(None),
            Ok(Some(offered)) => {
                let offer = Offer::from(&offered);
                if offer.version == self.client.identity().version {
                    return self.idle_after(None);
                }
                // The installer checks the signed manifest against the same rule; an offer
                // that is refused by its own label is not even downloaded.
                let bad = self.bad_versions();
                let refusal = accept(self.client.identity(), self.config.allow_downgrade, &bad)
                    .refusal(&offer.version, None);
                if let Some(refusal) = refusal {
                    let why = match refusal {
                        Refusal::FailedHere => format!(
                            "version {} failed to boot on this machine before; not installing it again",
                            offer.version
                        ),
                        other => format!(
                            "the server offers {}, a downgrade, refused before downloading: {other}",
                            offer.version
                        ),
                    };
                    return self.idle_after(Some(why));
                }
                if let Some(room) = self.installer.payload_room() {
                    if offer.size > room {
                        let why = format!(
                            "the server announces a payload of {} bytes for {}, more than this machine's slot and ESP hold ({room}); refused before downloading",
                            offer.size, offer.version
                        );
                        return self.fail(errorcode::PAYLOAD_SIZE_MISMATCH, why);
                    }
                }
                self.status.failures = 0;
                self.report(Event::download_started());
                self.set(State::Downloading { offer })?;
                Ok(Next::Now)
            }
            Err(e) => self.check_failed(&e),
        }
    }

    fn check_failed(&mut self, e: &ClientError) -> Result<Next, StateError> {
        if e.is_unreachable() && self.starting() {
            // Not a failure of the server's: the network is not up yet. No backoff step.
            return self.wait_in_backoff(self.status.failures, STARTUP_RETRY, e.to_string(), None);
        }
        if e.is_transient() {
            self.enter_backoff(e.to_string(), None)
        } else {
            self.idle_after(Some(e.to_string()))
        }
    }

    /// downloading → writing (payload complete and its SHA-256 right) | backoff | idle (3/0).
    fn download(&mut self, offer: Offer) -> Result<Next, StateError> {
        let dir = self.paths.download_dir();
        let state_file = self.paths.state_file();
        let status = &mut self.status;
        let mut saved_at = 0u64;
        let result = download::download(&self.http, &offer, &dir, &mut |done, total| {
            status.progress = Some(Progress {
                phase: "downloading".to_owned(),
                done,
                total,
            });
            // Progress is advisory: a failed save here is retried at the next transition.
            if done == total || done.saturating_sub(saved_at) >= PROGRESS_SAVE_STEP {
                saved_at = done;
                let _ = status.save(&state_file);
            }
        });
        match result {
            Ok(_) => {
                self.status.failures = 0;
                self.report(Event::download_finished());
                self.set(State::Writing { offer })?;
                Ok(Next::Now)
            }
            Err(e) if e.is_transient() && self.status.failures + 1 < MAX_DOWNLOAD_ATTEMPTS => {
                self.enter_backoff(e.to_string(), Some(offer))
            }
            Err(e) if e.is_transient() => {
                // What was kept for resuming is unverified bytes on /var: not kept for ever.
                let _ = std::fs::remove_file(download::payload_path(&dir, &offer));
                let why = format!(
                    "{e}; {MAX_DOWNLOAD_ATTEMPTS} attempts in a row failed: the partial payload was deleted, the next check starts afresh"
                );
                self.fail(errorcode::DOWNLOAD_TRANSFER, why)
            }
            Err(e) => {
                let code = match e {
                    DownloadError::NoRoom { .. } => errorcode::DOWNLOAD_WRITE,
                    DownloadError::HashMismatch { .. } => errorcode::PAYLOAD_HASH_MISMATCH,
                    DownloadError::TooLarge { .. } => errorcode::PAYLOAD_SIZE_MISMATCH,
                    _ => errorcode::DOWNLOAD_TRANSFER,
                };
                self.fail(code, e.to_string())
            }
        }
    }

    /// writing → verifying → finalizing → reboot-needed (3/1) | idle (3/0).
    fn install(&mut self, offer: Offer) -> Result<Next, StateError> {
        let payload = download::payload_path(&self.paths.download_dir(), &offer);
        if !payload.is_file() {
            // Removed behind our back (or a restart before the download finished): fetch again.
            self.set(State::Downloading { offer })?;
            return Ok(Next::Now);
        }
        self.set(State::Writing {
            offer: offer.clone(),
        })?;
        let state_file = self.paths.state_file();
        // What the signed manifest must say, whatever the offer said.
        let bad = self.bad_versions();
        // The payload is checked before any wait for the lock (once: the installer keeps what it
        // found while the file is unchanged), so that the turn is spent writing; a payload that
        // fails its checks never takes the lock.
        let checked = self.installer.verify(
            &payload,
            &accept(self.client.identity(), self.config.allow_downgrade, &bad),
            &mut install_progress(&mut self.status, &state_file, &offer),
        );
        self.status.progress = None;
        // With `lock_install`, one machine of the cluster at a time is busy with an update,
        // writing or rebooting: the others keep their full speed for the quorum.
        if checked.is_ok() && self.config.lock_install {
            if let Some(wait) = self.take_lock("the lock before installing")? {
                return Ok(wait);
            }
        }
        let accept = accept(self.client.identity(), self.config.allow_downgrade, &bad);
        let result = checked.and_then(|()| {
            self.installer.install(
                &payload,
                &accept,
                &mut install_progress(&mut self.status, &state_file, &offer),
            )
        });
        match result {
            Ok(installed) => {
                // The payload is on the slot now; hundreds of MiB on /var are not needed.
                let _ = std::fs::remove_file(&payload);
                if installed.version != offer.version {
                    eprintln!(
                        "warning: the server offered {} but the signed payload is {}",
                        offer.version, installed.version
                    );
                }
                self.report(Event::installed());
                let pending = Pending {
                    version: installed.version,
                    previous_version: self.client.identity().version.clone(),
                    slot: installed.slot,
                    boot_id: self.host.boot_id(),
                };
                self.status.last_error = None;
                self.status.progress = None;
                self.set(State::RebootNeeded { pending })?;
                Ok(Next::Now)
            }
            Err(f) => {
                let _ = std::fs::remove_file(&payload);
                self.fail(
                    f.code,
                    format!("installing {}: {}", offer.version, f.message),
                )
            }
        }
    }

    /// reboot-needed → rebooting once the strategy, window and lock allow it.
    fn reboot_needed(&mut self, mut pending: Pending) -> Result<Next, StateError> {
        if self.strategy.kind == RebootStrategy::Off {
            return Ok(Next::Wait(self.config.check_interval));
        }
        // Held since the install (`lock_install`): renewed while the window is awaited.
        self.renew_lock();
        if let Some(window) = &self.strategy.window {
            let wait = window.wait_secs(self.host.now());
            if wait > 0 {
                let wait = Duration::from_secs(wait).min(BACKOFF_MAX);
                return Ok(Next::Wait(self.lock_renewal_due(wait)));
            }
        }
        if let Some(wait) = self.take_lock("the reboot lock")? {
            return Ok(wait);
        }
        pending.boot_id = self.host.boot_id();
        self.set(State::Rebooting { pending })?;
        Ok(Next::Now)
    }

    /// rebooting → (the machine goes down) → confirming on the next boot.
    fn rebooting(&mut self, pending: Pending) -> Result<Next, StateError> {
        if pending.boot_id != self.host.boot_id() {
            self.set(State::Confirming { pending })?;
            return Ok(Next::Now);
        }
        if let Err(e) = self.host.reboot() {
            self.status.last_error = Some(e);
            self.save()?;
        }
        Ok(Next::Wait(REBOOT_WAIT))
    }

    /// confirming → idle: healthy on the new slot (bless, 3/2), or back on the old one (3/0, bad).
    fn confirm(&mut self, pending: Pending) -> Result<Next, StateError> {
        if self.installer.running_slot() != Some(pending.slot) {
            self.status.bad_versions.insert(pending.version.clone());
            self.report(Event::error(errorcode::BOOT_FALLBACK));
            let why = format!(
                "version {} did not boot (the boot loader fell back to slot {}); marked bad",
                pending.version,
                pending.slot.other()
            );
            return self.idle_after(Some(why));
        }
        // The lease ran on while the machine rebooted: renewed before the health wait.
        self.renew_lock();
        let units = self.config.health_units.clone();
        let timeout = self.config.health_timeout;
        if let Err(why) = host::wait_healthy(&mut *self.host, &units, timeout, HEALTH_POLL) {
            return self.unhealthy(pending, why);
        }
        if let Err(e) = self.installer.bless() {
            self.status.last_error = Some(format!("blessing slot {}: {e}", pending.slot));
            self.save()?;
            return Ok(Next::Wait(REBOOT_WAIT));
        }
        self.report(Event::updated_after_reboot(&pending.previous_version));
        self.release_lock();
        self.idle_after(None)
    }

    /// Not healthy in time: not blessed. With a reboot strategy the machine reboots so the
    /// boot counter runs down and the old slot comes back; with `off` it waits for an operator.
    fn unhealthy(&mut self, mut pending: Pending, why: String) -> Result<Next, StateError> {
        self.status.last_error = Some(format!(
            "version {} on slot {} not blessed: {why}",
            pending.version, pending.slot
        ));
        if self.strategy.kind == RebootStrategy::Off {
            self.save()?;
            return Ok(Next::Wait(self.config.check_interval));
        }
        pending.boot_id = self.host.boot_id();
        self.set(State::Rebooting { pending })?;
        Ok(Next::Now)
    }

    /// backoff → downloading (resume) | checking, once the wait is over.
    fn backoff(&mut self, retry_at: u64, offer: Option<Offer>) -> Result<Next, StateError> {
        let now = self.host.now();
        if now < retry_at && !(offer.is_none() && self.take_trigger()) {
            return Ok(Next::Wait(Duration::from_secs(retry_at - now)));
        }
        match offer {
            Some(offer) => self.set(State::Downloading { offer })?,
            None => self.set(State::Checking)?,
        }
        Ok(Next::Now)
    }

    fn enter_backoff(&mut self, reason: String, offer: Option<Offer>) -> Result<Next, StateError> {
        let attempt = self.status.failures;
        self.status.failures = attempt.saturating_add(1);
        let delay = self.backoff_delay(attempt);
        self.wait_in_backoff(attempt, delay, reason, offer)
    }

    /// The backoff state: `reason` recorded, the next try `delay` from now.
    fn wait_in_backoff(
        &mut self,
        attempt: u32,
        delay: Duration,
        reason: String,
        offer: Option<Offer>,
    ) -> Result<Next, StateError> {
        self.status.last_error = Some(reason.clone());
        let retry_at = self.host.now() + delay.as_secs();
        self.set(State::Backoff {
            attempt,
            retry_at,
            reason,
            offer,
        })?;
        Ok(Next::Wait(delay))
    }

    /// A failed update: report 3/0 with the code, and wait for the next regular check.
    fn fail(&mut self, code: i64, why: String) -> Result<Next, StateError> {
        self.report(Event::error(code));
        self.idle_after(Some(why))
    }

    /// Back to idle with the next check scheduled one (jittered) interval from now.
    fn idle_after(&mut self, error: Option<String>) -> Result<Next, StateError> {
        self.status.failures = 0;
        self.status.last_error = error;
        self.status.progress = None;
        self.status.next_check =
            self.host.now() + self.jittered(self.config.check_interval).as_secs();
        self.set(State::Idle)?;
        Ok(Next::Now)
    }

    /// Whether the agent started within [`STARTUP_WINDOW`].
    fn starting(&self) -> bool {
        self.host.now() < self.started + STARTUP_WINDOW.as_secs()
    }

    /// `BACKOFF_BASE · 2^attempt`, at most `BACKOFF_MAX`, plus up to a quarter of jitter.
    pub fn backoff_delay(&self, attempt: u32) -> Duration {
        let base = BACKOFF_BASE
            .as_secs()
            .saturating_mul(1u64 << attempt.min(20));
        let capped = base.min(BACKOFF_MAX.as_secs());
        let jitter = capped / 4 * self.jitter_permille() / 1000;
        Duration::from_secs(capped + jitter)
    }

    /// `d` ± 10 %, so a fleet started together does not check together.
    fn jittered(&self, d: Duration) -> Duration {
        let secs = d.as_secs();
        let spread = secs / 10;
        Duration::from_secs(secs - spread + 2 * spread * self.jitter_permille() / 1000)
    }

    /// A number in 0..1000 that differs between machines and between checks, without randomness:
    /// from the machine id and the check counter.
    fn jitter_permille(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(self.client.identity().machine_id.as_bytes());
        h.update(self.status.checks.to_le_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first) % 1000
    }

    /// Takes the strategy's lock, if it has one: `None` when held now, else how long to wait
    /// before asking again (another machine holds it, or the lock could not be reached).
    fn take_lock(&mut self, what: &str) -> Result<Option<Next>, StateError> {
        let Some(lock) = &self.strategy.lock else {
            return Ok(None);
        };
        match lock.acquire() {
            Ok(true) => {
                self.status.lock_held = true;
                Ok(None)
            }
            Ok(false) => {
                self.status.lock_held = false;
                Ok(Some(Next::Wait(self.jittered(self.config.lock_retry))))
            }
            Err(e) => {
                self.status.last_error = Some(format!("taking {what}: {e}"));
                self.save()?;
                Ok(Some(Next::Wait(self.jittered(self.config.lock_retry))))
            }
        }
    }

    /// The versions that failed to boot here, for [`accept`].
    fn bad_versions(&self) -> Vec<String> {
        self.status.bad_versions.iter().cloned().collect()
    }

    /// Renews the reboot lock this machine holds (an etcd lease would otherwise free it a TTL
    /// after it was taken); says so if it was lost meanwhile.
    fn renew_lock(&mut self) {
        let (Some(lock), true) = (&self.strategy.lock, self.status.lock_held) else {
            return;
        };
        match lock.renew() {
            Ok(true) => {}
            Ok(false) => {
                self.status.lock_held = false;
                self.status.last_error = Some(
                    "the reboot lock this machine held expired and another machine holds it now"
                        .into(),
                );
            }
            Err(e) => self.status.last_error = Some(format!("renewing the reboot lock: {e}")),
        }
    }

    /// `wait`, or less: while an expiring lock is held, the agent wakes to renew it every
    /// third of its TTL.
    fn lock_renewal_due(&self, wait: Duration) -> Duration {
        if self.status.lock_held && self.strategy.kind == RebootStrategy::EtcdLock {
            wait.min(self.config.etcd_lock_ttl / 3)
        } else {
            wait
        }
    }

    fn release_lock(&mut self) {
        let Some(lock) = &self.strategy.lock else {
            self.status.lock_held = false;
            return;
        };
        match lock.release() {
            Ok(()) => self.status.lock_held = false,
            // Kept as held: the next idle step tries again.
            Err(e) => self.status.last_error = Some(format!("releasing the reboot lock: {e}")),
        }
    }

    /// Queues an event and sends the queue. What the server cannot take now stays queued (saved
    /// with the state at the caller's next transition) and goes out later (see
    /// [`Agent::send_events`]); the update itself goes on either way.
    fn report(&mut self, event: Event) {
        if self.status.unsent_events.len() >= MAX_UNSENT_EVENTS {
            let dropped = self.status.unsent_events.remove(0);
            eprintln!(
                "dropping the oldest unsent event {}: {MAX_UNSENT_EVENTS} are waiting for the server",
                event_label(&dropped)
            );
        }
        self.status.unsent_events.push(event);
        self.send_events();
    }

    /// Sends the queued events, oldest first, until the server cannot be reached (then an idle
    /// agent tries again in [`EVENT_RETRY`], and any check sends them first). An event the
    /// server refuses (not a transient failure) would be refused again: it is dropped.
    fn send_events(&mut self) {
        while let Some(event) = self.status.unsent_events.first() {
            let label = event_label(event);
            match self.client.report(event.clone()) {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    let retry = if e.is_unreachable() && self.starting() {
                        STARTUP_RETRY
                    } else {
                        EVENT_RETRY
                    };
                    eprintln!(
                        "reporting event {label}: {e}; sent again within {} s",
                        retry.as_secs()
                    );
                    self.events_retry_at = self.host.now() + retry.as_secs();
                    return;
                }
                Err(e) => eprintln!("reporting event {label}: {e}; the server refused it, dropped"),
            }
            self.status.unsent_events.remove(0);
        }
    }

    fn set(&mut self, state: State) -> Result<(), StateError> {
        if state != self.status.state {
            eprintln!(
                "update state: {} → {}",
                self.status.state.name(),
                state.name()
            );
        }
        self.status.state = state;
        self.save()
    }

    fn save(&self) -> Result<(), StateError> {
        self.status.save(&self.paths.state_file())
    }

    fn trigger(&self) -> PathBuf {
        self.paths.check_trigger()
    }

    /// Consumes a `kiln-update check` request, if there is one.
    fn take_trigger(&mut self) -> bool {
        let asked = std::fs::remove_file(self.trigger()).is_ok();
        if asked {
            self.on_demand = true;
        }
        asked
    }

    /// Sleeps `d` in one-second slices, returning early when a check is asked for while idle.
    pub fn wait(&mut self, d: Duration) {
        let deadline = self.host.now() + d.as_secs().max(1);
        let waits_for_check = matches!(self.status.state, State::Idle | State::Backoff { .. });
        while self.host.now() < deadline {
            if waits_for_check && self.trigger().exists() {
                return;
            }
            self.host.sleep(Duration::from_secs(1));
        }
    }
}

/// `type/result` of an event, as logs and the server's tables show it.
fn event_label(event: &Event) -> String {
    format!(
        "{}/{}",
        u32::from(event.eventtype),
        u32::from(event.eventresult)
    )
}

/// What this machine accepts of a payload: its app and running version, whether its operator
/// allows a downgrade, and the versions that failed to boot here (`bad_versions`).
fn accept<'a>(
    identity: &'a crate::identity::Identity,
    allow_downgrade: bool,
    bad_versions: &'a [String],
) -> Accept<'a> {
    Accept {
        app_id: &identity.app_id,
        running_version: &identity.version,
        allow_downgrade,
        bad_versions,
    }
}

/// The installer's progress callback: the agent's state follows the install's phase (saved at
/// each change: it says where to resume), and its progress the bytes done.
fn install_progress<'s>(
    status: &'s mut Status,
    state_file: &'s Path,
    offer: &'s Offer,
) -> impl FnMut(Phase, u64, u64) + 's {
    let mut last_phase = Phase::Writing;
    move |phase, done, total| {
        if phase != last_phase {
            last_phase = phase;
            status.state = match phase {
                Phase::Writing => State::Writing {
                    offer: offer.clone(),
                },
                Phase::Verifying => State::Verifying {
                    offer: offer.clone(),
                },
                Phase::Finalizing => State::Finalizing {
                    offer: offer.clone(),
                },
            };
            // The state on disk only says where to resume; a failed save resumes earlier.
            let _ = status.save(state_file);
        }
        status.progress = Some(Progress {
            phase: phase.name().to_owned(),
            done,
            total,
        });
    }
}
