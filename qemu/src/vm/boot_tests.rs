//! Real boots under TCG: Debian's kernel with a busybox initramfs whose init reports over the serial
//! console what it found (fw_cfg, disks, network), and the harness's waits, errors and clean-up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::testkit::{initramfs, test_kernel};
use crate::{
    Accel, Firmware, GuestFwd, GuestFwdTarget, QemuError, ScratchDir, SocketMode, SocketNic, Vm,
    VmConfig,
};

/// Generous: two cores are shared by several test runs, and TCG is slow.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The test init: mount the basics, report fw_cfg, then either hold (for the timeout test) or
/// exercise disks and network before powering off.
const INIT: &str = r#"
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
echo "kiln test init: started"
for m in $(cat /lib/modules.order); do
  insmod /lib/$m || echo "kiln test init: insmod $m failed"
done
cfg=$(cat /sys/firmware/qemu_fw_cfg/by_name/opt/org.kiln/config/raw)
echo "fw_cfg=[$cfg]"
case "$cfg" in
  *hold*) echo "kiln test init: holding"; sleep 600;;
  peer-*)
    ip link set eth1 up
    ip addr add 192.168.77.${cfg#peer-}/24 dev eth1
    echo "kiln test init: peer up"
    # The other VM may still be booting: keep trying for about two minutes.
    if [ "$cfg" = peer-2 ]; then
      i=0
      until ping -c 1 -W 2 192.168.77.1 >/dev/null; do
        i=$((i+1)); [ $i -ge 60 ] && { echo "kiln test init: peer ping failed"; break; }
      done
      [ $i -lt 60 ] && echo "kiln test init: peer ping ok"
    fi
    sleep 600;;
esac
sleep 1
echo "vda=[$(head -c 13 /dev/vda)] vdb-serial=[$(cat /sys/block/vdb/serial)]"
printf kiln-overlay-write > /dev/vda
printf kiln-extra-write > /dev/vdb
sync
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "guestfwd=[$(timeout 30 wget -q -O - http://10.0.2.100:8080/)]"
echo "guestfwd-relay=[$(timeout 30 wget -q -O - http://10.0.2.101:8080/a) $(timeout 30 wget -q -O - http://10.0.2.101:8080/b)]"
echo "kiln test init: listening"
nc -l -p 22 -e /bin/echo kiln-hostfwd-ok
echo "kiln test init: done"
poweroff -f
"#;

fn kernel_vm(work: &Path, name: &str, config_text: &str) -> VmConfig {
    kiln_image::testutil::require_tool(crate::QEMU_SYSTEM, "qemu-system-x86");
    let kernel = test_kernel();
    let initrd = initramfs(work, INIT, &kernel.modules);
    let config = work.join(format!("{name}.cloud-config"));
    std::fs::write(&config, config_text).expect("writing the fw_cfg file");
    let mut cfg = VmConfig::new(name, work);
    cfg.accel = Accel::Tcg;
    cfg.cpus = 1;
    cfg.memory_mib = 512;
    cfg.no_reboot = true;
    cfg.config_file = Some(config);
    cfg.firmware = Firmware::DirectKernel {
        kernel: kernel.vmlinuz,
        initrd: Some(initrd),
        // panic=-1 with -no-reboot: a kernel panic ends QEMU instead of hanging the test.
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
    };
    cfg
}

/// An HTTP server on 127.0.0.1 answering `body` to `connections` connections; returns its port.
fn serve(body: &'static str, connections: usize) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the test server");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
            if connections == 1 {
                // A character-device forward has only this one connection: keep it a moment.
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    });
    port
}

/// Connects to the guest's forwarded port until the guest's listener answers.
fn read_forwarded(port: u16, deadline: Instant) -> String {
    loop {
        let mut text = String::new();
        if let Ok(mut conn) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("read timeout");
            let _ = conn.read_to_string(&mut text);
        }
        if !text.is_empty() || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn direct_kernel_boot_sees_fw_cfg_disks_and_forwards_then_powers_off() {
    kiln_image::testutil::require_tool("qemu-img", "qemu-utils");
    let work = ScratchDir::new("qemu-boot").expect("work dir");
    let mut cfg = kernel_vm(work.path(), "boot", "hello from the host 42");
    let disk = work.path().join("disk.raw");
    let mut image = b"pristine-disk".to_vec();
    image.resize(64 * 1024, 0);
    std::fs::write(&disk, &image).expect("writing the disk");
    let extra = work.path().join("extra.raw");
    std::fs::write(&extra, vec![0u8; 1 << 20]).expect("writing the extra disk");
    cfg.disk = Some(disk.clone());
    cfg.extra_disks.push(extra.clone());
    cfg.ssh_forward = true;
    cfg.guest_forwards.push(GuestFwd {
        guest_addr: Ipv4Addr::new(10, 0, 2, 100),
        guest_port: 8080,
        target: GuestFwdTarget::HostPort(serve("kiln-guestfwd-ok", 1)),
    });
    // A relay makes one host connection per guest connection: two requests, two answers.
    kiln_image::testutil::require_tool("bash", "bash");
    cfg.guest_forwards.push(GuestFwd {
        guest_addr: Ipv4Addr::new(10, 0, 2, 101),
        guest_port: 8080,
        target: GuestFwdTarget::Relay(serve("relay-ok", 2)),
    });

    let start = Instant::now();
    let vm = Vm::start(&cfg).expect("starting the VM");
    eprintln!("command: {}", vm.command_line());
    vm.wait_for_serial("kiln test init: started", BOOT_TIMEOUT)
        .expect("init started");
    eprintln!("init started after {:?}", start.elapsed());
    vm.wait_for_serial("fw_cfg=[hello from the host 42]", Duration::from_secs(60))
        .expect("fw_cfg echoed");
    vm.wait_for_serial(
        "vda=[pristine-disk] vdb-serial=[kiln-extra-0]",
        Duration::from_secs(60),
    )
    .expect("disks");
    vm.wait_for_serial("guestfwd=[kiln-guestfwd-ok]", Duration::from_secs(60))
        .expect("guest forward");
    vm.wait_for_serial(
        "guestfwd-relay=[relay-ok relay-ok]",
        Duration::from_secs(60),
    )
    .expect("relay forward");
    vm.wait_for_serial("kiln test init: listening", Duration::from_secs(60))
        .expect("guest listening");
    let port = vm.ssh_port().expect("forwarded port");
    let answer = read_forwarded(port, Instant::now() + Duration::from_secs(60));
    assert_eq!(
        answer.trim(),
        "kiln-hostfwd-ok",
        "answer through hostfwd 127.0.0.1:{port}"
    );
    let status = vm
        .wait_exit(Duration::from_secs(60))
        .expect("VM powers off");
    eprintln!("VM powered off after {:?}", start.elapsed());
    assert!(status.success(), "QEMU exit status {status}");
    assert!(!vm.is_running());

    // The boot disk went through the overlay: the image is untouched, the write is in the overlay.
    assert_eq!(std::fs::read(&disk).expect("disk"), image);
    let overlay = std::fs::read(work.path().join("boot.overlay.qcow2")).expect("overlay");
    assert!(
        overlay.windows(18).any(|w| w == b"kiln-overlay-write"),
        "write landed in the overlay"
    );
    // The extra disk is attached as is.
    assert!(std::fs::read(&extra)
        .expect("extra")
        .starts_with(b"kiln-extra-write"));
}

#[test]
fn serial_wait_times_out_with_context_and_drop_kills_qemu() {
    let work = ScratchDir::new("qemu-hold").expect("work dir");
    let mut cfg = kernel_vm(work.path(), "hold", "hold please");
    cfg.ssh_forward = true;
    let vm = Vm::start(&cfg).expect("starting the VM");
    vm.wait_for_serial("kiln test init: holding", BOOT_TIMEOUT)
        .expect("init holding");

    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let err = vm
        .wait_for_serial("a line nobody prints", timeout)
        .expect_err("pattern never printed");
    let waited = start.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert!(matches!(err, QemuError::SerialTimeout { .. }), "{err}");
    let msg = err.to_string();
    for needle in [
        "a line nobody prints",
        "2s",
        &vm.serial_log().display().to_string(),
        "fw_cfg=[hold please]",
    ] {
        assert!(msg.contains(needle), "error lacks {needle:?}: {msg}");
    }

    // Nothing listens on the guest's port 22: the real ssh client fails, and the wait says so.
    let (key, _) = crate::ssh_keygen(work.path()).expect("ssh key");
    let start = Instant::now();
    let err = vm
        .wait_for_ssh(&key, "core", Duration::from_secs(3))
        .expect_err("no sshd in the guest");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "ssh wait took {:?}",
        start.elapsed()
    );
    let msg = err.to_string();
    assert!(
        matches!(err, QemuError::SshTimeout { .. }) && msg.contains("core@127.0.0.1:"),
        "{msg}"
    );
    eprintln!("{msg}");

    // The monitor answers while the guest runs.
    let status = vm.qmp("query-status").expect("query-status");
    assert!(status.contains("\"running\""), "{status}");

    let pid = vm.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} survived the drop of its Vm"
    );
}

#[test]
fn socket_nics_join_two_vms_on_a_private_network() {
    let work = ScratchDir::new("qemu-peers").expect("work dir");
    let port = crate::free_port().expect("port");
    let mut first = kernel_vm(work.path(), "peer1", "peer-1");
    first.socket_nics.push(SocketNic {
        mode: SocketMode::Listen(port),
        mac: None,
    });
    let mut second = kernel_vm(work.path(), "peer2", "peer-2");
    second.socket_nics.push(SocketNic {
        mode: SocketMode::Connect(port),
        mac: None,
    });
    // The listener must exist before the other side connects.
    let vm1 = Vm::start(&first).expect("starting the listening VM");
    let vm2 = Vm::start(&second).expect("starting the connecting VM");
    vm1.wait_for_serial("kiln test init: peer up", BOOT_TIMEOUT)
        .expect("first peer up");
    vm2.wait_for_serial("kiln test init: peer ping ok", BOOT_TIMEOUT)
        .expect("second peer reaches the first");
}

#[test]
fn start_failure_reports_the_command_line_and_qemu_message() {
    kiln_image::testutil::require_tool(crate::QEMU_SYSTEM, "qemu-system-x86");
    let work = ScratchDir::new("qemu-fail").expect("work dir");
    let mut cfg = VmConfig::new("fail", work.path());
    cfg.accel = Accel::Tcg;
    cfg.firmware = Firmware::DirectKernel {
        kernel: work.path().join("no-such-kernel"),
        initrd: None,
        cmdline: String::new(),
    };
    let err = Vm::start(&cfg).expect_err("a missing kernel must fail");
    let msg = err.to_string();
    assert!(matches!(err, QemuError::StartFailed { .. }), "{msg}");
    assert!(
        msg.contains("qemu-system-x86_64 -name fail") && msg.contains("no-such-kernel"),
        "{msg}"
    );
}

#[test]
fn uefi_firmware_starts_and_a_restart_continues_the_serial_log() {
    let work = ScratchDir::new("qemu-uefi").expect("work dir");
    let cfg = small_uefi_vm(work.path(), "uefi");
    let start = Instant::now();
    let mut vm = Vm::start(&cfg).expect("starting the VM");
    // With no disk, OVMF's boot manager tries the network and reports it on the serial console.
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output");
    eprintln!("OVMF boot manager after {:?}", start.elapsed());
    assert!(
        work.path().join("uefi.OVMF_VARS.fd").is_file(),
        "per-VM variable store"
    );

    vm.kill();
    assert!(!vm.is_running());
    let first_run = vm.serial_text().expect("log").matches("BdsDxe").count();
    vm.restart().expect("restarting");
    // The cursor is past the first run's match, so this waits for the second run's own output.
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output after restart");
    let log = vm.serial_text().expect("log");
    assert!(
        log.matches("BdsDxe").count() > first_run,
        "restart appended to the log"
    );
}

/// A reset that QEMU does not carry out (nothing on the console after the kernel's last line) is
/// ended by a power cycle: the guest is paused, the kernel's last line written to its log, and
/// the watchdog restarts QEMU, which boots the firmware again.
#[test]
fn a_hung_reset_is_power_cycled() {
    let work = ScratchDir::new("qemu-reset-hang").expect("work dir");
    let mut cfg = small_uefi_vm(work.path(), "hang");
    cfg.reset_hang = Duration::from_secs(5);
    let vm = Vm::start(&cfg).expect("starting the VM");
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output");
    let first_pid = vm.pid();
    // Paused, the firmware prints nothing more: what a reset spinning in QEMU looks like.
    vm.qmp("stop").expect("pausing the VM");
    std::thread::sleep(Duration::from_secs(1));
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(vm.serial_log())
        .expect("serial log");
    std::io::Write::write_all(&mut log, b"\r\n[   89.891719] reboot: machine restart\r\n")
        .expect("writing the serial log");
    vm.wait_for_serial("power-cycling it", Duration::from_secs(60))
        .expect("the watchdog's note");
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output after the power cycle");
    assert_ne!(vm.pid(), first_pid, "QEMU was started again");
}

/// A reset of a UEFI VM that reboots by itself ends its QEMU and the harness starts a new one on
/// the same files (no reset inside QEMU to hang in): the firmware boots again, and no wait sees
/// the VM stopped. A power-off, by contrast, ends it.
#[test]
fn a_reset_starts_a_new_qemu_and_a_power_off_ends_the_vm() {
    let work = ScratchDir::new("qemu-restart").expect("work dir");
    let vm = Vm::start(&small_uefi_vm(work.path(), "restart")).expect("starting the VM");
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output");
    let first_pid = vm.pid();
    vm.reset().expect("pressing reset");
    vm.wait_for_serial(crate::RESTART_NOTE, Duration::from_secs(60))
        .expect("the harness's note of the restart");
    vm.wait_for_serial("BdsDxe", BOOT_TIMEOUT)
        .expect("firmware output after the restart");
    assert_ne!(vm.pid(), first_pid, "a new QEMU runs the VM");
    assert!(vm.is_running());
    vm.qmp("quit").expect("quitting");
    vm.wait_exit(Duration::from_secs(30))
        .expect("a quit QEMU ends the VM");
    assert!(!vm.is_running());
}

/// A small UEFI VM without a disk under TCG: OVMF's boot manager says `BdsDxe` on the console.
fn small_uefi_vm(work: &Path, name: &str) -> VmConfig {
    kiln_image::testutil::require_tool(crate::QEMU_SYSTEM, "qemu-system-x86");
    require_ovmf();
    let mut cfg = VmConfig::new(name, work);
    cfg.accel = Accel::Tcg;
    cfg.cpus = 1;
    cfg.memory_mib = 256;
    cfg
}

/// Installs Debian's `ovmf` when its firmware is missing, the way `require_tool` installs tools.
fn require_ovmf() {
    if crate::find_ovmf().is_ok() {
        return;
    }
    let status = std::process::Command::new("flock")
        .args(["/tmp/kiln-apt.lock", "sh", "-c"])
        .arg("DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 ovmf >/tmp/kiln-apt-ovmf.log 2>&1")
        .status()
        .expect("running flock/apt-get");
    assert!(
        status.success(),
        "installing ovmf failed: see /tmp/kiln-apt-ovmf.log"
    );
    crate::find_ovmf().expect("ovmf installed");
}
