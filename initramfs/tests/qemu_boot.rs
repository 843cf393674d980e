//! End-to-end: Debian's kernel boots our static init in QEMU (TCG) from an initramfs holding
//! the init, busybox as `/bin/sh` and the module subset; the init finds a GPT disk made with
//! host tools, opens `/usr` through dm-verity, mounts ROOT, grows it, and execs a fake systemd
//! (a busybox script) that prints what it sees. A second boot with one byte of USR-A flipped
//! must stop in the emergency shell with the verity error, not in a kernel panic, while slot A's
//! boot entry is blessed; while it is on trial (still counting tries), the init must reboot.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_image::hostdir::{add_host_dir, HostDirOptions};
use kiln_image::kmod;
use kiln_image::testutil::require_tool;
use kiln_image::tree::{Content, Entry, Kind, Meta, Tree, TreePath};

const MIB: u64 = 1 << 20;
/// The disk as partitioned; the file is then made [`DISK_GROWN`] long, as when an image is
/// written to a larger disk, so ROOT has room to grow.
const DISK_PARTITIONED: u64 = 80 * MIB;
const DISK_GROWN: u64 = 160 * MIB;
const USR_FS_BYTES: u64 = 16 * MIB;
const ROOT_PART: u32 = 5;
/// The ESP: partition 1, from sector 2048, 2 MiB (see [`build_disk`]).
const ESP_START: u64 = 2048 * 512;
const ESP_BYTES: u64 = 2 * MIB;
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// The fake systemd: proves it runs from the verified /usr, shows the mounts and ROOT's size,
/// and powers the VM off.
const FAKE_SYSTEMD: &str = "#!/usr/bin/sh
b=/usr/bin/busybox
echo KILN-SYSTEMD-REACHED pid=$$
$b cat /proc/mounts | $b sed 's/^/MOUNT /'
echo ROOT-DF $($b df -k / | $b tail -n 1)
echo ETC-HOSTNAME $($b cat /etc/hostname)
echo MACHINE-ID-BYTES $($b wc -c < /etc/machine-id)
echo TMP-MODE $($b stat -c %a /tmp)
$b poweroff -f
$b sleep 100
";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the init the way the image build does: static, release, for the explicit target
/// (in its own target directory so it never waits on the test build's lock).
fn static_init() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = base.join("kiln-static-init");
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "kiln-initramfs",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&workspace));
    let init = target_dir.join("x86_64-unknown-linux-gnu/release/init");
    let file = run(Command::new("file").arg(&init));
    assert!(file.contains("static"), "the init is not static: {file}");
    init
}

fn busybox() -> PathBuf {
    // busybox-static's binary, not the dynamic one of the busybox package.
    require_tool("busybox", "busybox-static");
    let p = PathBuf::from("/bin/busybox");
    let file = run(Command::new("file").arg("-L").arg(&p));
    assert!(
        file.contains("static"),
        "/bin/busybox is not static (install busybox-static): {file}"
    );
    p
}

fn file_entry(path: &Path, mode: u16) -> Entry {
    Entry::new(
        Kind::File(Content::host(path).unwrap()),
        Meta::root(mode, 0),
    )
}

/// The initramfs: module subset with its indices, the init, busybox as /bin/sh, /dev/console.
fn build_initramfs(out: &Path, modules_src: &Path, kver: &str, init: &Path, busybox: &Path) {
    let mut root = Tree::new(Meta::root(0o755, 0));
    let opts = HostDirOptions {
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    add_host_dir(
        &mut root,
        modules_src,
        &TreePath::new(kmod::modules_dir(kver)).unwrap(),
        &opts,
    )
    .unwrap();
    let (mut tree, _) = kmod::initramfs_modules(&root, kver, 0).unwrap();
    let dir = Meta::root(0o755, 0);
    tree.insert("init", file_entry(init, 0o755)).unwrap();
    tree.insert_with_parents("bin/sh", file_entry(busybox, 0o755), &dir)
        .unwrap();
    tree.insert_with_parents(
        "dev/console",
        Entry::new(
            Kind::CharDevice { major: 5, minor: 1 },
            Meta::root(0o600, 0),
        ),
        &dir,
    )
    .unwrap();
    for d in ["proc", "sys", "run", "sysroot"] {
        tree.insert(d, Entry::new(Kind::Dir, dir.clone())).unwrap();
    }
    let f = fs::File::create(out).unwrap();
    kiln_image::cpio::write_newc(&tree, f).unwrap();
}

/// The /usr filesystem with dm-verity appended; returns (image, root hash).
fn build_usr(work: &Path, busybox: &Path) -> (PathBuf, String) {
    let src = work.join("usr-src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("lib/systemd")).unwrap();
    fs::create_dir_all(src.join("share/kiln/etc")).unwrap();
    fs::copy(busybox, src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    let systemd = src.join("lib/systemd/systemd");
    fs::write(&systemd, FAKE_SYSTEMD).unwrap();
    fs::set_permissions(&systemd, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("share/kiln/etc/hostname"), "kiln-test\n").unwrap();
    let img = work.join("usr.img");
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    run(Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&src)
        .arg(&img)
        .arg(format!("{}k", USR_FS_BYTES / 1024)));
    let veritysetup = require_tool("veritysetup", "cryptsetup-bin");
    let out = run(Command::new(veritysetup)
        .args(["format", "--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--data-blocks={}", USR_FS_BYTES / 4096))
        .arg(format!("--hash-offset={USR_FS_BYTES}"))
        .arg(&img)
        .arg(&img));
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no root hash in veritysetup output: {out}"));
    (img, hash)
}

/// The GPT disk: EFI-SYSTEM, USR-A (our /usr), USR-B (empty), OEM, ROOT (small ext4).
/// Returns the disk and the byte offset of USR-A.
fn build_disk(work: &Path, usr: &Path) -> (PathBuf, u64) {
    let disk = work.join("disk.raw");
    let f = fs::File::create(&disk).unwrap();
    f.set_len(DISK_PARTITIONED).unwrap();
    drop(f);
    let sgdisk = require_tool("sgdisk", "gdisk");
    run(Command::new(&sgdisk)
        .args(["-n", "1:2048:+2M", "-c", "1:EFI-SYSTEM", "-t", "1:EF00"])
        .args(["-n", "2:0:+20M", "-c", "2:USR-A", "-t", "2:8300"])
        .args(["-n", "3:0:+20M", "-c", "3:USR-B", "-t", "3:8300"])
        .args(["-n", "4:0:+1M", "-c", "4:OEM", "-t", "4:8300"])
        .args(["-n", "5:0:+24M", "-c", "5:ROOT", "-t", "5:8300"])
        .arg(&disk));
    let info = |n: u32| -> (u64, u64) {
        let out = run(Command::new(&sgdisk)
            .arg("-i")
            .arg(n.to_string())
            .arg(&disk));
        let sector = |key: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {out}"))
        };
        (
            sector("First sector:") * 512,
            (sector("Last sector:") + 1) * 512,
        )
    };
    let (usr_start, _) = info(2);
    let (root_start, root_end) = info(ROOT_PART);
    let root_img = work.join("root.img");
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    run(Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "ROOT"])
        .arg(&root_img)
        .arg(format!("{}k", (root_end - root_start) / 1024)));
    let mut out = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for (src, at) in [(usr, usr_start), (root_img.as_path(), root_start)] {
        use std::io::Seek;
        out.seek(std::io::SeekFrom::Start(at)).unwrap();
        out.write_all(&fs::read(src).unwrap()).unwrap();
    }
    // A larger disk than the table describes: the backup GPT is no longer at the end.
    out.set_len(DISK_GROWN).unwrap();
    (disk, usr_start)
}

/// Formats the ESP with `mkfs.fat` and puts boot entries with these names (long names, as
/// systemd-boot and the update agent use) in `/loader/entries` with mtools.
fn write_esp(work: &Path, disk: &Path, entries: &[&str]) {
    let esp = work.join("esp.img");
    let _ = fs::remove_file(&esp);
    let mkfs = require_tool("mkfs.fat", "dosfstools");
    run(Command::new(mkfs)
        .args(["-C", "-n", "ESP"])
        .arg(&esp)
        .arg((ESP_BYTES / 1024).to_string()));
    let mmd = require_tool("mmd", "mtools");
    run(Command::new(mmd)
        .arg("-i")
        .arg(&esp)
        .args(["::/loader", "::/loader/entries"]));
    let entry = work.join("entry.conf");
    fs::write(&entry, "title Kiln\nlinux /kiln/a/vmlinuz\n").unwrap();
    let mcopy = require_tool("mcopy", "mtools");
    for name in entries {
        run(Command::new(&mcopy)
            .arg("-i")
            .arg(&esp)
            .arg(&entry)
            .arg(format!("::/loader/entries/{name}")));
    }
    let mut out = fs::OpenOptions::new().write(true).open(disk).unwrap();
    use std::io::Seek;
    out.seek(std::io::SeekFrom::Start(ESP_START)).unwrap();
    out.write_all(&fs::read(&esp).unwrap()).unwrap();
}

/// What a boot waits for, and what it types on the serial console.
struct Script<'a> {
    /// The boot is over when this holds for the serial log.
    done: &'a dyn Fn(&str) -> bool,
    /// Once the log contains `.0`, `.1` is typed (once).
    input: Option<(&'a str, &'a str)>,
}

/// Boots the VM with its serial console on QEMU's stdio; returns the serial log once the
/// script is done, QEMU exits, the kernel panics or the timeout passes (then QEMU is killed).
fn boot(
    work: &Path,
    name: &str,
    vmlinuz: &Path,
    initrd: &Path,
    disk: &Path,
    append: &str,
    script: Script,
) -> String {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let mut child: Child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "768",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serial = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&serial);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut typed = false;
    let start = Instant::now();
    let text = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = String::from_utf8_lossy(&serial.lock().unwrap()).into_owned();
        if let Some((trigger, line)) = script.input {
            if !typed && text.contains(trigger) {
                stdin.write_all(line.as_bytes()).unwrap();
                stdin.flush().unwrap();
                typed = true;
            }
        }
        let exited = child.try_wait().unwrap().is_some();
        if exited
            || (script.done)(&text)
            || text.contains("Kernel panic")
            || start.elapsed() > QEMU_TIMEOUT
        {
            break text;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    // Keep the log for whoever debugs a failure.
    let _ = fs::write(work.join(format!("{name}.log")), &text);
    let _ = fs::write(
        Path::new(kiln_image::testutil::TEST_CACHE).join(format!("qemu-{name}.log")),
        &text,
    );
    eprintln!("{name}: {:.1} s", start.elapsed().as_secs_f64());
    text
}

#[test]
fn boots_to_systemd_from_verified_usr_and_stops_on_corruption() {
    let (kernel_dir, kver) = kiln_image::testutil::debian_kernel();
    let vmlinuz = kernel_dir.join(format!("boot/vmlinuz-{kver}"));
    let init = static_init();
    let busybox = busybox();
    let work = tempfile::Builder::new()
        .prefix("kiln-qemu")
        .tempdir_in("/var/tmp")
        .unwrap();
    let work = work.path();

    let initrd = work.join("initrd.cpio");
    build_initramfs(
        &initrd,
        &kernel_dir.join("lib/modules").join(&kver),
        &kver,
        &init,
        &busybox,
    );
    let (usr, hash) = build_usr(work, &busybox);
    let (disk, usr_start) = build_disk(work, &usr);
    let append = format!("console=ttyS0 panic=-1 kiln.slot=a kiln.usrhash={hash} kiln.debug");

    let finished = |l: &str| l.contains("MACHINE-ID-BYTES") && l.contains("TMP-MODE");
    let script = Script {
        done: &finished,
        input: None,
    };
    let log = boot(work, "good", &vmlinuz, &initrd, &disk, &append, script);
    assert!(!log.contains("Kernel panic"), "{log}");
    assert!(
        log.contains("KILN-SYSTEMD-REACHED pid=1"),
        "the fake systemd did not run as PID 1:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("MOUNT /dev/mapper/usr /usr ext4 ro,")),
        "/usr is not the read-only dm-verity device:\n{log}"
    );
    assert!(
        log.contains("ETC-HOSTNAME kiln-test"),
        "/etc was not laid down:\n{log}"
    );
    assert!(log.contains("MACHINE-ID-BYTES 0"), "{log}");
    assert!(log.contains("TMP-MODE 1777"), "{log}");
    // The disk controller's driver came from its device's modalias, not from the fixed list.
    assert!(
        log.contains("device virtio:d00000002v00001AF4 wants virtio_blk"),
        "{log}"
    );
    // ROOT was 24 MiB; the disk has 80 MiB more than the table said.
    let df_kib: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("ROOT-DF "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ROOT-DF line:\n{log}"));
    assert!(df_kib > 90 * 1024, "ROOT did not grow: {df_kib} KiB\n{log}");
    // The table on disk is valid, with the backup at the new end and ROOT reaching it.
    let sgdisk = require_tool("sgdisk", "gdisk");
    let verify = run(Command::new(&sgdisk).arg("-v").arg(&disk));
    assert!(verify.contains("No problems found"), "{verify}");
    let part = run(Command::new(&sgdisk)
        .args(["-i", &ROOT_PART.to_string()])
        .arg(&disk));
    let last: u64 = part
        .lines()
        .find_map(|l| l.strip_prefix("Last sector:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        (last + 1) * 512 > DISK_GROWN - 2 * MIB,
        "ROOT ends at sector {last}\n{part}"
    );

    // Flip one byte of the /usr filesystem's superblock area (s_wtime: the raw superblock
    // fields the init reads stay intact, but the block no longer matches the hash tree).
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    use std::io::{Seek, SeekFrom};
    let at = usr_start + 1024 + 0x30;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    drop(f);
    // Slot A's entry is blessed: the boot stops for an operator.
    write_esp(work, &disk, &["kiln-a.conf", "kiln-b+3.conf"]);
    // The emergency shell answers on the console.
    let answered = |l: &str| l.contains("SHELL-ANSWERS-42");
    let script = Script {
        done: &answered,
        input: Some(("kiln-emergency#", "echo SHELL-ANSWERS-$((6*7))\n")),
    };
    let log = boot(work, "corrupt", &vmlinuz, &initrd, &disk, &append, script);
    assert!(!log.contains("Kernel panic"), "{log}");
    assert!(!log.contains("KILN-SYSTEMD-REACHED"), "{log}");
    assert!(log.contains("EMERGENCY"), "{log}");
    assert!(
        log.contains("dm-verity: /usr data does not match kiln.usrhash="),
        "{log}"
    );
    assert!(
        log.contains("SHELL-ANSWERS-42"),
        "the emergency shell did not answer:\n{log}"
    );
    assert!(
        log.contains("not rebooting: kiln-a.conf is blessed"),
        "{log}"
    );
    // The kernel's own words are part of the message.
    let emergency = &log[log.find("EMERGENCY").unwrap()..];
    assert!(
        emergency.contains("verity: 253:") && emergency.contains("data block 0 is corrupted"),
        "{log}"
    );

    // kiln.emergency stops before touching any disk.
    let shell = |l: &str| l.contains("starting the emergency shell");
    let script = Script {
        done: &shell,
        input: None,
    };
    let log = boot(
        work,
        "emergency",
        &vmlinuz,
        &initrd,
        &disk,
        &format!("{append} kiln.emergency"),
        script,
    );
    assert!(!log.contains("Kernel panic"), "{log}");
    assert!(
        log.contains("kiln.emergency is on the kernel command line"),
        "{log}"
    );
    assert!(!log.contains("boot disk"), "{log}");

    // Slot A on trial: the same failure reboots (QEMU runs with -no-reboot, so it exits), and
    // the boot loader can count the try and fall back.
    write_esp(work, &disk, &["kiln-a+2-1.conf", "kiln-b.conf"]);
    let never = |_: &str| false;
    let script = Script {
        done: &never,
        input: None,
    };
    let log = boot(work, "trial", &vmlinuz, &initrd, &disk, &append, script);
    assert!(!log.contains("Kernel panic"), "{log}");
    assert!(
        log.contains("dm-verity: /usr data does not match kiln.usrhash="),
        "{log}"
    );
    assert!(
        log.contains("slot a is on trial (boot entry kiln-a+2-1.conf): rebooting in 10 s"),
        "{log}"
    );
    assert!(!log.contains("starting the emergency shell"), "{log}");
    assert!(log.contains("reboot: Restarting system"), "{log}");
}
