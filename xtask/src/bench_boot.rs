//! `cargo xtask bench boot`: how long the built image takes from QEMU's start to an ssh login,
//! per phase, against the floor no image can beat on this machine: the same kernel booted
//! straight (no firmware, no boot loader) into a tiny initramfs that powers off at once.
//!
//! Both run under TCG with 2 vCPUs, one VM at a time. The image boots as `cargo xtask qemu`
//! boots it (UEFI, a fresh 16 GiB overlay, 2 GiB of memory) with a cloud-config that carries
//! a key for `core`; every run is a first boot, and after it the machine reboots once for a
//! later boot (the harness starts QEMU again, as the VM scenarios do). Phases come from the
//! serial console, read as it is written:
//! - firmware + boot loader: QEMU's start to the kernel's start (the host time the kernel's
//!   `Run /init` line appeared, less that line's own timestamp);
//! - kernel: the timestamp of `Run /init`;
//! - init: from there to systemd's first line;
//! - userspace to ssh: from there to the first `ssh core@… true` that succeeds (tried once a
//!   second, so this phase reads up to a second long).
//!
//! The medians of the runs are printed, and the ratio of first boot to the floor.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_image::definition::Definition;
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree};
use kiln_qemu::{ssh_keygen, Accel, Firmware, Vm, VmConfig};

use crate::host;
use crate::measure::{load_line, median};

#[derive(clap::Args)]
pub struct BootBenchConfig {
    /// The build to boot: `build/<version>/` (default: image.toml's version).
    #[arg(long)]
    pub build: Option<PathBuf>,
    /// How many first boots (each followed by one later boot), and floor boots.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the VMs' files go.
    #[arg(long, default_value = "build/bench/boot")]
    pub dir: PathBuf,
}

/// How long any one boot may take before the bench gives up on it.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// The kernel's line just before it runs the initramfs's `/init`.
const RUN_INIT: &str = "Run /init as init process";
/// systemd's first line on the console.
const SYSTEMD_STARTS: &str = "systemd[1]: ";

/// One boot's phases, in seconds.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    firmware: f64,
    kernel: f64,
    init: f64,
    userspace: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.firmware + self.kernel + self.init + self.userspace
    }
}

pub fn boot(cfg: &BootBenchConfig) -> Result<()> {
    host::ensure_packages(host::QEMU_PACKAGES, "the boot benchmark")?;
    host::ensure_packages(
        &[host::HostPackage {
            package: "busybox-static",
            provides: "/bin/busybox",
        }],
        "the boot benchmark's floor",
    )?;
    let root = host::workspace_root();
    let build = match &cfg.build {
        Some(b) => root.join(b),
        None => {
            let def = Definition::load(&root.join("image/image.toml"))?;
            root.join("build").join(def.image.version)
        }
    };
    let disk = build.join(crate::release::DISK_FILE);
    let kernel = build.join("work/vmlinuz");
    if !disk.exists() || !kernel.exists() {
        bail!(
            "{} has no disk.raw and work/vmlinuz: build it first with `cargo xtask build-image`",
            build.display()
        );
    }
    let dir = root.join(&cfg.dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = floor_initramfs(&dir)?;
    let (key, public) = ssh_keygen(&dir)?;
    let config = dir.join("cloud-config.yml");
    std::fs::write(
        &config,
        format!("#cloud-config\nssh_authorized_keys:\n  - {public}\n"),
    )?;
    eprintln!("{}", load_line());

    let (mut floors, mut firsts, mut laters) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=cfg.runs.max(1) {
        let floor = floor_boot(&dir, &kernel, &initrd, run)?;
        eprintln!("run {run}: floor {floor:.2} s");
        floors.push(floor);
        let (first, later) = image_boots(&dir, &disk, &config, &key, run)?;
        eprintln!(
            "run {run}: first boot {:.1} s {first:?}; later boot {:.1} s {later:?}",
            first.total(),
            later.total()
        );
        firsts.push(first);
        laters.push(later);
    }
    eprintln!("{}", load_line());
    let floor = median(floors.iter().copied());
    println!(
        "boot under TCG, 2 vCPUs, median of {} runs (firmware + boot loader / kernel / init / userspace to ssh = total)",
        firsts.len()
    );
    for (name, boots) in [("first boot", &firsts), ("later boot", &laters)] {
        let m = |f: fn(&Phases) -> f64| median(boots.iter().map(f));
        let total = m(Phases::total);
        println!(
            "  {name:<11} {:>5.1} + {:>5.1} + {:>5.1} + {:>5.1} = {total:>5.1} s   {:.2}x the floor",
            m(|p| p.firmware),
            m(|p| p.kernel),
            m(|p| p.init),
            m(|p| p.userspace),
            total / floor
        );
    }
    println!("  floor: the same kernel straight into an initramfs that powers off: {floor:.2} s (QEMU's start to its exit)");
    Ok(())
}

/// The image's first boot to ssh, then a reboot and the later boot to ssh.
fn image_boots(
    dir: &Path,
    disk: &Path,
    config: &Path,
    key: &Path,
    run: usize,
) -> Result<(Phases, Phases)> {
    let mut vm_cfg = VmConfig::new(&format!("boot{run}"), dir);
    vm_cfg.disk = Some(disk.to_owned());
    vm_cfg.overlay_size = Some(16 << 30);
    vm_cfg.accel = Accel::Tcg;
    vm_cfg.ssh_forward = true;
    vm_cfg.config_file = Some(config.to_owned());
    let started = Instant::now();
    let vm = Vm::start(&vm_cfg)?;
    let first = watch_boot(&vm, key, started, 0)?;
    // The later boot starts where the harness notes QEMU's restart in the serial log.
    let offset = std::fs::metadata(vm.serial_log()).map_or(0, |m| m.len());
    let _ = vm.ssh(
        key,
        "core",
        "sudo systemctl reboot",
        Duration::from_secs(30),
    );
    let restarted = wait_for_line(&vm, offset, kiln_qemu::RESTART_NOTE)?;
    let later = watch_boot(&vm, key, restarted.0, restarted.1)?;
    Ok((first, later))
}

/// Follows one boot on the serial log from byte `offset` until ssh answers.
fn watch_boot(vm: &Vm, key: &Path, started: Instant, offset: u64) -> Result<Phases> {
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, seen, stop) = (
            vm.serial_log().to_owned(),
            Arc::clone(&seen),
            Arc::clone(&stop),
        );
        thread::spawn(move || follow(&log, offset, &seen, &stop))
    };
    let ssh = vm.wait_for_ssh(key, "core", BOOT_LIMIT);
    let ssh_at = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    ssh.context("waiting for ssh")?;
    let lines = seen.lock().expect("lock").clone();
    write_timeline(vm, offset, started, &lines, ssh_at);
    let find = |pat: &str| lines.iter().find(|(l, _)| l.contains(pat)).cloned();
    let (run_init, run_init_at) =
        find(RUN_INIT).with_context(|| format!("no `{RUN_INIT}` on the console"))?;
    let (_, systemd_at) =
        find(SYSTEMD_STARTS).with_context(|| format!("no `{SYSTEMD_STARTS}` on the console"))?;
    let kernel = kernel_timestamp(&run_init)
        .with_context(|| format!("no timestamp on the kernel's line `{run_init}`"))?;
    let firmware = (run_init_at - started).as_secs_f64() - kernel;
    Ok(Phases {
        firmware,
        kernel,
        init: (systemd_at - run_init_at).as_secs_f64(),
        userspace: (ssh_at - systemd_at).as_secs_f64(),
    })
}

/// Writes `<vm>.timeline` beside the serial log (appended per boot): each console line with the
/// seconds since QEMU's start at which it appeared, for a look at where a boot spends its time.
fn write_timeline(
    vm: &Vm,
    offset: u64,
    started: Instant,
    lines: &[(String, Instant)],
    ssh_at: Instant,
) {
    use std::fmt::Write as _;
    let mut text = format!("== boot from serial log byte {offset}\n");
    for (line, at) in lines {
        let _ = writeln!(text, "{:8.2}  {line}", (*at - started).as_secs_f64());
    }
    let _ = writeln!(
        text,
        "{:8.2}  (ssh answered)",
        (ssh_at - started).as_secs_f64()
    );
    let path = vm.work_dir().join(format!("{}.timeline", vm.name()));
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
}

/// Reads the serial log from `offset` as it grows, noting when each line first appeared.
fn follow(log: &Path, mut offset: u64, seen: &Mutex<Vec<(String, Instant)>>, stop: &AtomicBool) {
    let mut partial = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let bytes = read_from(log, offset);
        offset += bytes.len() as u64;
        partial.extend_from_slice(&bytes);
        let now = Instant::now();
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&partial[..end]).trim().to_owned();
            seen.lock().expect("lock").push((line, now));
            partial.drain(..=end);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `pattern` on the serial log after `offset`; returns when it appeared and the offset
/// just past it.
fn wait_for_line(vm: &Vm, offset: u64, pattern: &str) -> Result<(Instant, u64)> {
    let deadline = Instant::now() + BOOT_LIMIT;
    while Instant::now() < deadline {
        let bytes = read_from(vm.serial_log(), offset);
        if let Some(at) = bytes
            .windows(pattern.len())
            .position(|w| w == pattern.as_bytes())
        {
            return Ok((Instant::now(), offset + (at + pattern.len()) as u64));
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "`{pattern}` did not appear on {}",
        vm.serial_log().display()
    )
}

fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    kiln_qemu::read_log_from(path, offset).unwrap_or_default()
}

/// The `[   1.234567]` timestamp a kernel line starts with, in seconds.
fn kernel_timestamp(line: &str) -> Option<f64> {
    let inside = line.split_once('[')?.1.split_once(']')?.0;
    inside.trim().parse().ok()
}

/// The floor: the image's kernel, booted directly into `floor.cpio`, from QEMU's start to its
/// exit.
fn floor_boot(dir: &Path, kernel: &Path, initrd: &Path, run: usize) -> Result<f64> {
    let mut vm_cfg = VmConfig::new(&format!("floor{run}"), dir);
    vm_cfg.accel = Accel::Tcg;
    vm_cfg.firmware = Firmware::DirectKernel {
        kernel: kernel.to_owned(),
        initrd: Some(initrd.to_owned()),
        cmdline: "console=ttyS0,115200n8 panic=-1".into(),
    };
    vm_cfg.no_reboot = true;
    let started = Instant::now();
    let vm = Vm::start(&vm_cfg)?;
    vm.wait_exit(BOOT_LIMIT)?;
    Ok(started.elapsed().as_secs_f64())
}

/// An initramfs whose `/init` powers the machine off at once: the host's static busybox.
fn floor_initramfs(dir: &Path) -> Result<PathBuf> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    let mut tree = Tree::new(Meta::root(0o755, 0));
    let file = |data: Vec<u8>| Entry::new(Kind::File(Content::bytes(data)), Meta::root(0o755, 0));
    tree.insert_with_parents("bin/busybox", file(busybox), &Meta::root(0o755, 0))?;
    tree.insert_with_parents(
        "init",
        file(b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n".to_vec()),
        &Meta::root(0o755, 0),
    )?;
    let path = dir.join("floor.cpio");
    let out =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    kiln_image::cpio::write_newc(&tree, std::io::BufWriter::new(out))?;
    Ok(path)
}
