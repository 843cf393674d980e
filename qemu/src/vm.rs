//! A running VM: the QEMU process (killed and reaped on drop), its serial log, its monitor, and the
//! waits a scenario needs — for console output, for ssh, for the VM to exit — each with a deadline.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmdline::Plan;
use crate::config::{Firmware, Serial, VmConfig};
use crate::process::{
    command_line, deadline_after, run_checked, run_with_timeout, ChildGuard, POLL,
};
use crate::qmp::{self, Events, Qmp};
use crate::ssh::{shared_alive, ssh_banner, ssh_command, start_shared};
use crate::{find_ovmf, find_qemu, find_qemu_img, free_port, resolve_accel, Accel, QemuError};

/// The longest a shared ssh connection may take to start, and how long a VM that refused one
/// goes without (`Vm::shared_ssh`).
const SHARED_START: Duration = Duration::from_secs(30);
const SHARED_RETRY: Duration = Duration::from_secs(20);
/// How long QEMU may take to open its monitor after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one probe in [`Vm::wait_for_ssh`] waits for the server's banner, and the pause
/// between probes.
const SSH_PROBE_WAIT: Duration = Duration::from_secs(3);
const SSH_PROBE_PAUSE: Duration = Duration::from_millis(250);
const SSH_PROBES_PER_TRY: u32 = 5;
/// How many lines of the serial log an error shows.
const TAIL_LINES: usize = 30;
/// The kernel's last line before the machine resets; the firmware prints within seconds after.
const KERNEL_LAST_WORDS: &str = "reboot: machine restart";
/// What the harness writes into a VM's serial log when the reset watchdog power-cycles it; the
/// test command counts these lines.
pub const WATCHDOG_NOTE: &str = "kiln-qemu: reset watchdog:";
/// What the harness writes into a VM's serial log when it starts QEMU again after a guest reboot.
pub const RESTART_NOTE: &str = "kiln-qemu: the guest rebooted; QEMU started again";

/// A running VM. Dropping it kills QEMU (the files in the work directory stay).
#[derive(Debug)]
pub struct Vm {
    plan: Plan,
    command_line: String,
    child: Arc<Mutex<ChildGuard>>,
    qmp: Arc<Mutex<Option<Qmp>>>,
    /// Where the next `wait_for_serial` starts looking: just past the previous match.
    serial_cursor: Mutex<u64>,
    /// Held while a shared ssh connection is looked at or started (`Vm::ssh`); after a failed
    /// start, when the next may be tried.
    ssh_sharing: Mutex<Option<Instant>>,
    /// Set to stop the helper threads (reboot supervisor, reset watchdog).
    watchdog_stop: Arc<AtomicBool>,
    watchdog: Option<thread::JoinHandle<()>>,
    supervisor: Option<thread::JoinHandle<()>>,
    /// For a VM that restarts on reboot: how QEMU ended for good, once it has (a reboot is not
    /// an end). Only the supervisor, which reads QEMU's events, can tell the two apart.
    ended: Arc<Mutex<Option<ExitStatus>>>,
}

impl Vm {
    /// Prepares the VM's files (overlay, UEFI variables) and starts QEMU, returning once QEMU has
    /// finished setting up the machine. Errors carry QEMU's full command line and its messages.
    pub fn start(cfg: &VmConfig) -> Result<Vm, QemuError> {
        std::fs::create_dir_all(&cfg.work_dir)
            .map_err(|e| QemuError::io("creating work dir", &cfg.work_dir, e))?;
        let ovmf = match cfg.firmware {
            Firmware::Uefi => Some(find_ovmf()?),
            Firmware::DirectKernel { .. } => None,
        };
        let ssh_port = if cfg.ssh_forward {
            Some(free_port()?)
        } else {
            None
        };
        let plan = Plan::new(cfg, find_qemu()?, resolve_accel(cfg.accel), ovmf, ssh_port)?;
        prepare_files(&plan)?;
        let command_line = command_line(&plan.command()?);
        let child = spawn(&plan, &command_line)?;
        let mut vm = Vm {
            plan,
            command_line,
            child: Arc::new(Mutex::new(child)),
            qmp: Arc::new(Mutex::new(None)),
            serial_cursor: Mutex::new(0),
            ssh_sharing: Mutex::new(None),
            watchdog_stop: Arc::new(AtomicBool::new(false)),
            watchdog: None,
            supervisor: None,
            ended: Arc::new(Mutex::new(None)),
        };
        vm.connect_monitor()?;
        if vm.plan.restarts_on_reboot() {
            vm.supervisor = Some(vm.start_supervisor());
            vm.watchdog = Some(vm.start_reset_watchdog());
        }
        Ok(vm)
    }

    /// Starts QEMU again with the same disks and firmware variables (no fresh overlay), after
    /// killing it if it still runs: a power cycle. The serial log continues in the same file.
    pub fn restart(&mut self) -> Result<(), QemuError> {
        power_cycle(&self.plan, &self.command_line, &self.child, &self.qmp)?;
        *lock(&self.ended) = None;
        Ok(())
    }

    /// Starts QEMU again whenever the guest reboots (see `Plan::restarts_on_reboot`): reads
    /// QEMU's events, and when QEMU exits after a reset event, spawns it anew on the same files,
    /// under the process lock, so no wait sees the VM stopped in between. Any other end (a
    /// power-off, a kill) is recorded in `ended`.
    fn start_supervisor(&self) -> thread::JoinHandle<()> {
        let (plan, command_line) = (self.plan.clone(), self.command_line.clone());
        let (child, qmp, stop, ended) = (
            Arc::clone(&self.child),
            Arc::clone(&self.qmp),
            Arc::clone(&self.watchdog_stop),
            Arc::clone(&self.ended),
        );
        thread::spawn(move || {
            let events_socket = plan
                .events_socket
                .clone()
                .expect("a supervised VM has events");
            while !stop.load(Ordering::SeqCst) {
                let pid = lock(&child).id();
                let mut reset = false;
                if let Some(mut events) = connect_events(&events_socket, &child, pid, &stop) {
                    loop {
                        match events.next() {
                            Ok(Some(event)) => reset |= qmp::is_reset(&event),
                            Ok(None) if stop.load(Ordering::SeqCst) => return,
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                }
                // QEMU closed its monitor: it is exiting, was killed, or was power-cycled.
                let mut process = lock(&child);
                if process.id() != pid {
                    continue;
                }
                let status = process.wait_timeout(Duration::from_secs(30));
                if reset && !stop.load(Ordering::SeqCst) {
                    note(&plan, RESTART_NOTE);
                    *lock(&qmp) = None;
                    let started = remove_sockets(&plan).and_then(|()| spawn(&plan, &command_line));
                    match started {
                        Ok(new) => *process = new,
                        Err(e) => {
                            eprintln!("kiln-qemu: starting VM `{}` again: {e}", plan.cfg.name);
                            *lock(&ended) = status;
                            return;
                        }
                    }
                    drop(process);
                    if let Err(e) = connect_monitor(&plan, &command_line, &child, &qmp) {
                        eprintln!("kiln-qemu: VM `{}` after its reboot: {e}", plan.cfg.name);
                    }
                    continue;
                }
                *lock(&ended) = status.or_else(|| process.kill());
                drop(process);
                // Ended; a `restart` (a power cycle) brings it back with a new process.
                while !stop.load(Ordering::SeqCst) && lock(&child).id() == pid {
                    thread::sleep(POLL);
                }
            }
        })
    }

    /// Watches for a reset QEMU does not carry out (`reset_hang`) and power-cycles the VM
    /// then, as one would press the reset button of a hung machine: the guest had finished its
    /// shutdown, so what the scenario checks (the boot loader's choice, the disk) is unchanged.
    /// It says so on stderr and in the serial log.
    fn start_reset_watchdog(&self) -> thread::JoinHandle<()> {
        let (plan, command_line) = (self.plan.clone(), self.command_line.clone());
        let (child, qmp, stop) = (
            Arc::clone(&self.child),
            Arc::clone(&self.qmp),
            Arc::clone(&self.watchdog_stop),
        );
        thread::spawn(move || {
            let mut seen = (0u64, Instant::now());
            let poll = (plan.cfg.reset_hang / 4).min(Duration::from_secs(2));
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(poll);
                let len = std::fs::metadata(&plan.serial_log).map_or(0, |m| m.len());
                if len != seen.0 {
                    seen = (len, Instant::now());
                    continue;
                }
                if seen.1.elapsed() < plan.cfg.reset_hang || lock(&child).try_status().is_some() {
                    continue;
                }
                let tail = read_from(&plan.serial_log, len.saturating_sub(200)).unwrap_or_default();
                if !String::from_utf8_lossy(&tail)
                    .trim_end()
                    .ends_with(KERNEL_LAST_WORDS)
                {
                    continue;
                }
                note(
                    &plan,
                    &format!(
                        "{WATCHDOG_NOTE} VM `{}` did not come back from its reboot: nothing on \
                         its console for {} s after the kernel's `{KERNEL_LAST_WORDS}` (QEMU \
                         hung in the reset or the exit); power-cycling it",
                        plan.cfg.name,
                        plan.cfg.reset_hang.as_secs()
                    ),
                );
                if let Err(e) = power_cycle(&plan, &command_line, &child, &qmp) {
                    eprintln!("kiln-qemu: power-cycling VM `{}`: {e}", plan.cfg.name);
                    return;
                }
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.plan.cfg.name
    }

    /// The shell-quoted QEMU command line, to rerun the VM by hand.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The accelerator the VM runs with (`Auto` resolved).
    pub fn accel(&self) -> Accel {
        self.plan.accel
    }

    /// The host port on 127.0.0.1 forwarded to the guest's ssh port, if `ssh_forward` was set.
    pub fn ssh_port(&self) -> Option<u16> {
        self.plan.ssh_port
    }

    pub fn serial_log(&self) -> &Path {
        &self.plan.serial_log
    }

    /// QEMU's own messages (stderr).
    pub fn qemu_log(&self) -> &Path {
        &self.plan.qemu_log
    }

    pub fn work_dir(&self) -> &Path {
        &self.plan.cfg.work_dir
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        lock(&self.child).id()
    }

    /// Whether QEMU still runs (a VM that restarts on reboot runs through its reboots).
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// How QEMU ended, if it has: for a VM that restarts on reboot, as its supervisor saw it.
    fn exit_status(&self) -> Option<ExitStatus> {
        if self.plan.restarts_on_reboot() {
            *lock(&self.ended)
        } else {
            lock(&self.child).try_status()
        }
    }

    /// Everything the serial console printed so far (invalid UTF-8 replaced).
    pub fn serial_text(&self) -> Result<String, QemuError> {
        let bytes = read_from(self.serial_log(), 0)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Waits until `pattern` (plain text) appears on the serial console after the previous match,
    /// so successive waits follow the boot in order and a second boot's banner is a new match.
    pub fn wait_for_serial(&self, pattern: &str, timeout: Duration) -> Result<(), QemuError> {
        let deadline = deadline_after(timeout);
        let mut cursor = lock(&self.serial_cursor);
        loop {
            // Check for exit before reading, so output written just before QEMU exited is still seen.
            let exited = self.exit_status();
            let text = read_from(self.serial_log(), *cursor)?;
            if let Some(at) = find(&text, pattern.as_bytes()) {
                *cursor += (at + pattern.len()) as u64;
                return Ok(());
            }
            if let Some(status) = exited {
                return Err(QemuError::SerialExited {
                    vm: self.name().into(),
                    pattern: pattern.into(),
                    status: status.to_string(),
                    log: self.serial_log().into(),
                    tail: self.serial_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::SerialTimeout {
                    vm: self.name().into(),
                    pattern: pattern.into(),
                    timeout,
                    log: self.serial_log().into(),
                    tail: self.serial_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `ssh` into the guest runs `true` successfully.
    pub fn wait_for_ssh(&self, key: &Path, user: &str, timeout: Duration) -> Result<(), QemuError> {
        let port = self.ssh_port().ok_or_else(|| QemuError::NoSshForward {
            vm: self.name().into(),
        })?;
        let deadline = deadline_after(timeout);
        let mut last_error;
        let mut probes = 0u32;
        loop {
            self.ensure_running()?;
            // ssh once the server shows its banner (see `ssh_banner`): under TCG an ssh begun
            // too early got in seconds late. Every few probes ssh is tried anyway, in case a
            // loaded guest is slower with its banner than a probe waits.
            probes += 1;
            if !probes.is_multiple_of(SSH_PROBES_PER_TRY) && !ssh_banner(port, SSH_PROBE_WAIT) {
                last_error = "no SSH banner yet".into();
                if Instant::now() + SSH_PROBE_WAIT >= deadline {
                    return Err(self.ssh_timeout(user, port, timeout, last_error));
                }
                thread::sleep(SSH_PROBE_PAUSE);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ssh(key, user, "true", left.min(Duration::from_secs(30))) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => {
                    last_error = format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() + Duration::from_secs(1) >= deadline {
                return Err(self.ssh_timeout(user, port, timeout, last_error));
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    fn ssh_timeout(&self, user: &str, port: u16, timeout: Duration, last: String) -> QemuError {
        QemuError::SshTimeout {
            vm: self.name().into(),
            user: user.into(),
            port,
            timeout,
            last_error: last,
            log: self.serial_log().into(),
        }
    }

    /// Runs `command` in the guest over ssh and returns its output, whatever its exit status;
    /// the client is killed after `timeout`.
    pub fn ssh(
        &self,
        key: &Path,
        user: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<Output, QemuError> {
        let port = self.ssh_port().ok_or_else(|| QemuError::NoSshForward {
            vm: self.name().into(),
        })?;
        let shared = self.shared_ssh(key, user, port, timeout);
        run_with_timeout(
            &mut ssh_command(key, user, port, command, timeout, shared.as_deref())?,
            timeout,
        )
    }

    /// The socket of this VM's shared connection for `user` (started if there is none), or
    /// `None` where none could be made (the guest down, or a path too long for a socket): the
    /// command then connects on its own, as it would without sharing.
    fn shared_ssh(&self, key: &Path, user: &str, port: u16, timeout: Duration) -> Option<PathBuf> {
        let socket = self.work_dir().join(format!("{}.{user}.ssh", self.name()));
        // A Unix socket's path holds at most 107 bytes.
        if socket.as_os_str().len() > 100 {
            return None;
        }
        let mut not_before = lock(&self.ssh_sharing);
        if shared_alive(&socket) {
            return Some(socket);
        }
        // A guest that refused one (down, rebooting) is not asked twice for every command of a
        // wait: its commands connect on their own for a while.
        if not_before.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if start_shared(key, user, port, &socket, timeout.min(SHARED_START)) {
            *not_before = None;
            return Some(socket);
        }
        *not_before = Some(Instant::now() + SHARED_RETRY);
        None
    }

    /// Waits for QEMU to exit by itself (guest power-off, or a reboot with `no_reboot`).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::ExitTimeout {
                    vm: self.name().into(),
                    timeout,
                    log: self.serial_log().into(),
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Ends QEMU at once, like pulling the power cord. Disk writes the guest had not flushed may be lost.
    pub fn kill(&self) {
        let mut process = lock(&self.child);
        let status = process.kill();
        if self.plan.restarts_on_reboot() {
            // Ended now, not when the supervisor hears of it: the caller may look at once.
            *lock(&self.ended) = status;
        }
    }

    /// Presses the virtual power button (ACPI); the guest decides how to shut down.
    pub fn powerdown(&self) -> Result<(), QemuError> {
        self.qmp("system_powerdown").map(drop)
    }

    /// Presses the virtual reset button: an immediate reboot without the guest's cooperation.
    pub fn reset(&self) -> Result<(), QemuError> {
        self.qmp("system_reset").map(drop)
    }

    /// Sends a QMP command without arguments and returns QEMU's reply line.
    pub fn qmp(&self, command: &str) -> Result<String, QemuError> {
        let mut qmp = lock(&self.qmp);
        let conn = qmp
            .as_mut()
            .ok_or_else(|| self.qmp_error(command, "the monitor is not connected".into()))?;
        conn.execute(command)
            .map_err(|reason| self.qmp_error(command, reason))
    }

    /// The last lines of the serial log, escape sequences removed, for error messages.
    pub fn serial_tail(&self) -> String {
        log_tail(self.serial_log(), TAIL_LINES)
    }

    fn ensure_running(&self) -> Result<(), QemuError> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(QemuError::NotRunning {
                vm: self.name().into(),
                status: status.to_string(),
                log: self.serial_log().into(),
            }),
        }
    }

    fn qmp_error(&self, command: &str, reason: String) -> QemuError {
        QemuError::Qmp {
            vm: self.name().into(),
            command: command.into(),
            reason,
        }
    }

    /// Waits until QEMU accepts a monitor connection, failing early when it exits instead.
    fn connect_monitor(&self) -> Result<(), QemuError> {
        connect_monitor(&self.plan, &self.command_line, &self.child, &self.qmp)
    }
}

/// Kills QEMU if it still runs and starts it again with the same files. The process is swapped
/// under its lock, so no one sees the VM stopped in between (`wait_for_serial` would fail).
fn power_cycle(
    plan: &Plan,
    command_line: &str,
    child: &Mutex<ChildGuard>,
    qmp: &Mutex<Option<Qmp>>,
) -> Result<(), QemuError> {
    let mut process = lock(child);
    process.kill();
    *lock(qmp) = None;
    remove_sockets(plan)?;
    *process = spawn(plan, command_line)?;
    drop(process);
    connect_monitor(plan, command_line, child, qmp)
}

/// Waits until QEMU accepts a monitor connection, failing early when it exits instead.
fn connect_monitor(
    plan: &Plan,
    command_line: &str,
    child: &Mutex<ChildGuard>,
    qmp: &Mutex<Option<Qmp>>,
) -> Result<(), QemuError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = lock(child).try_status() {
            return Err(start_failed(plan, command_line, status.to_string()));
        }
        if plan.qmp_socket.exists() {
            if let Ok(conn) = Qmp::connect(&plan.qmp_socket) {
                *lock(qmp) = Some(conn);
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            lock(child).kill();
            return Err(QemuError::StartTimeout {
                command: command_line.to_owned(),
                timeout: START_TIMEOUT,
                stderr_log: plan.qemu_log.clone(),
            });
        }
        thread::sleep(POLL);
    }
}

fn start_failed(plan: &Plan, command_line: &str, status: String) -> QemuError {
    let stderr_tail = read_from(&plan.qemu_log, 0)
        .map(|b| tail_lines(&b, TAIL_LINES))
        .unwrap_or_default();
    QemuError::StartFailed {
        command: command_line.to_owned(),
        status,
        stderr_log: plan.qemu_log.clone(),
        stderr_tail,
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.watchdog_stop.store(true, Ordering::SeqCst);
        for helper in [self.watchdog.take(), self.supervisor.take()]
            .into_iter()
            .flatten()
        {
            let _ = helper.join();
        }
        if self.plan.cfg.serial == Serial::Terminal && self.is_running() {
            // QEMU put the terminal in raw mode; only a clean exit gives it back.
            if self.qmp("quit").is_ok() {
                lock(&self.child).wait_timeout(Duration::from_secs(3));
            }
        }
        self.kill();
        if thread::panicking() {
            eprintln!(
                "kiln-qemu: VM `{}` failed; its files are kept in {} (serial: {}, QEMU: {}); command: {}",
                self.name(),
                self.work_dir().display(),
                self.serial_log().display(),
                self.qemu_log().display(),
                self.command_line
            );
        }
    }
}

/// Connects to the events monitor of QEMU process `pid`, retrying while it starts; `None` when
/// that process is gone (exited, or replaced by a power cycle) or the VM is being dropped.
fn connect_events(
    socket: &Path,
    child: &Mutex<ChildGuard>,
    pid: u32,
    stop: &AtomicBool,
) -> Option<Events> {
    loop {
        if let Ok(events) = Events::connect(socket) {
            return Some(events);
        }
        {
            let mut process = lock(child);
            if process.id() != pid || process.try_status().is_some() {
                return None;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Says `text` on stderr and in the VM's serial log, on a line of its own.
fn note(plan: &Plan, text: &str) {
    eprintln!("{text}");
    let _ = OpenOptions::new()
        .append(true)
        .open(&plan.serial_log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("\r\n{text}\r\n").as_bytes()));
}

/// Makes the files QEMU opens: a fresh overlay, this VM's UEFI variable store, and an empty log.
fn prepare_files(plan: &Plan) -> Result<(), QemuError> {
    if let Some(mut cmd) = plan.overlay_command(&find_qemu_img()?) {
        if let Some(disk) = &plan.disk {
            remove_if_present(&disk.file)?;
        }
        run_checked(&mut cmd, Duration::from_secs(60))?;
    }
    if let Some((ovmf, vars)) = &plan.uefi {
        // A persistent VM keeps its variables (boot entries) from one start to the next.
        if !(plan.cfg.persist && vars.exists()) {
            std::fs::copy(&ovmf.vars, vars)
                .map_err(|e| QemuError::io("copying UEFI variables to", vars, e))?;
        }
    }
    remove_if_present(&plan.serial_log)?;
    remove_sockets(plan)
}

/// Removes the monitor sockets a previous QEMU left, so a wait for them sees the new ones.
fn remove_sockets(plan: &Plan) -> Result<(), QemuError> {
    remove_if_present(&plan.qmp_socket)?;
    match &plan.events_socket {
        Some(events) => remove_if_present(events),
        None => Ok(()),
    }
}

/// Spawns QEMU with its messages going to the work directory's `qemu.log`.
fn spawn(plan: &Plan, command_line: &str) -> Result<ChildGuard, QemuError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.qemu_log)
        .map_err(|e| QemuError::io("opening", &plan.qemu_log, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| QemuError::io("opening", &plan.qemu_log, e))?;
    let (stdin, stdout) = match plan.cfg.serial {
        Serial::Terminal => (Stdio::inherit(), Stdio::inherit()),
        Serial::LogFile(_) => (Stdio::null(), Stdio::from(log)),
    };
    let child = plan
        .command()?
        .stdin(stdin)
        .stdout(stdout)
        .stderr(log_err)
        .spawn()
        .map_err(|error| QemuError::Spawn {
            command: command_line.into(),
            error,
        })?;
    Ok(ChildGuard::new(child))
}

fn remove_if_present(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(QemuError::io("removing", path, e))
        }
        _ => Ok(()),
    }
}

/// The bytes of `path` (a VM's serial log, say) from `offset` on; a file QEMU has not created
/// yet reads as empty.
pub fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, QemuError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(QemuError::io("opening", path, e)),
    };
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| QemuError::io("reading", path, e))?;
    Ok(bytes)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The last `n` non-empty lines of a console log (a VM's serial log, say) as readable text, for
/// a failure's message; also usable once the VM is gone.
pub fn log_tail(path: &Path, n: usize) -> String {
    match read_from(path, 0) {
        Ok(bytes) => tail_lines(&bytes, n),
        Err(e) => format!("({} unreadable: {e})", path.display()),
    }
}

/// The last `n` lines of a console log as readable text: terminal escape sequences (which firmware
/// prints in plenty) and other control characters removed.
fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = strip_escapes(&String::from_utf8_lossy(bytes));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI sequence: ESC [ parameters, ending with a letter.
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still fine to use.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod boot_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_without_escape_sequences() {
        let log = b"one\r\n\x1b[2J\x1b[01;01Htwo\r\nthree\x07\r\nfour\r\n";
        assert_eq!(tail_lines(log, 2), "three\nfour");
        assert_eq!(tail_lines(log, 30), "one\ntwo\nthree\nfour");
    }

    #[test]
    fn find_locates_a_pattern_anywhere() {
        assert_eq!(find(b"abc login: x", b"login:"), Some(4));
        assert_eq!(find(b"abc", b"login:"), None);
    }
}
