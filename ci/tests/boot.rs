//! Issue 3's VM scenario: the built image boots under UEFI to an ssh login with a verified,
//! read-only /usr and a ROOT that grew to the disk, and comes back after a reboot; a corrupted
//! /usr stops the boot with a verity error.

use std::process::Command;
use std::time::{Duration, Instant};

use kiln_ci::{check, disk_under_test, guest, partition, ssh_cloud_config, work_dir};
use kiln_qemu::{ssh_keygen, Accel, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest's disk is bigger than the image, so the first boot has room to grow ROOT.
const GUEST_DISK: &str = "8G";

#[test]
fn boots_to_ssh_with_verified_usr_grown_root_and_survives_a_reboot() {
    let disk = disk_under_test();
    let work = work_dir("boot");
    let (key, public) = ssh_keygen(&work).unwrap();
    let config = ssh_cloud_config(&work, &public).unwrap();
    let overlay = work.join("guest.qcow2");
    check(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&disk)
            .arg(&overlay)
            .arg(GUEST_DISK),
    )
    .unwrap();

    let mut cfg = VmConfig::new("boot", &work);
    cfg.disk = Some(overlay);
    cfg.persist = true;
    cfg.accel = Accel::Auto;
    cfg.memory_mib = 1536;
    cfg.ssh_forward = true;
    cfg.config_file = Some(config);
    let started = Instant::now();
    let vm = Vm::start(&cfg).unwrap();
    vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot to ssh: {:.1} s ({:?})",
        started.elapsed().as_secs_f64(),
        vm.accel()
    );

    // /usr is the verity device, mounted read-only.
    let usr = guest(&vm, &key, "findmnt -n -o SOURCE,OPTIONS /usr");
    assert!(
        usr.starts_with("/dev/mapper/usr ") && usr.contains("ro"),
        "/usr: {usr}"
    );
    let table = guest(&vm, &key, "sudo dmsetup table usr");
    let cmdline = guest(&vm, &key, "cat /proc/cmdline");
    let hash = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kiln.usrhash="))
        .expect("usrhash on the cmdline");
    assert!(
        table.contains(" verity ") && table.contains(hash),
        "dm table {table} lacks verity with {hash}"
    );

    // ROOT grew to the end of the 8 GiB disk: the partition ends within 1 MiB of the backup
    // GPT, and the filesystem fills the partition.
    let sectors = |path: &str| -> u64 { guest(&vm, &key, &format!("cat {path}")).parse().unwrap() };
    let disk_end = sectors("/sys/block/vda/size");
    let root_end = sectors("/sys/block/vda/vda5/start") + sectors("/sys/block/vda/vda5/size");
    assert!(
        disk_end - root_end <= 2048 + 34,
        "ROOT ends at sector {root_end} of {disk_end}: it did not grow"
    );
    let fs_bytes: u64 = guest(&vm, &key, "df -B1 --output=size / | tail -1")
        .parse()
        .unwrap();
    let part_bytes = sectors("/sys/block/vda/vda5/size") * 512;
    assert!(
        fs_bytes * 100 >= part_bytes * 90,
        "ROOT's filesystem is {fs_bytes} bytes of a {part_bytes}-byte partition"
    );

    let os = guest(&vm, &key, "cat /etc/os-release");
    let version = std::env::var("KILN_CI_VERSION").expect("KILN_CI_VERSION");
    assert!(os.contains(&format!("VERSION_ID={version}")), "{os}");

    let state = vm
        .ssh(
            &key,
            "core",
            "systemctl is-system-running --wait",
            Duration::from_secs(180),
        )
        .unwrap();
    let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
    if state != "running" {
        let failed = guest(
            &vm,
            &key,
            "systemctl list-units --failed --plain --no-legend | awk '{print $1}'",
        );
        assert_eq!(state, "degraded", "system state {state}");
        for unit in failed.lines() {
            assert!(
                !unit.starts_with("kiln"),
                "a Kiln unit failed: {unit} (all failed: {failed})"
            );
        }
        eprintln!(
            "degraded; failed units (not Kiln's): {}",
            failed.replace('\n', " ")
        );
    }

    // A reboot comes back, with a new boot id and the same /usr.
    let boot_id = guest(&vm, &key, "cat /proc/sys/kernel/random/boot_id");
    let _ = vm.ssh(&key, "core", "sudo systemctl reboot", CMD_TIMEOUT);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the machine did not come back after a reboot: see {}",
            vm.serial_log().display()
        );
        std::thread::sleep(Duration::from_secs(5));
        if let Ok(out) = vm.ssh(
            &key,
            "core",
            "cat /proc/sys/kernel/random/boot_id",
            Duration::from_secs(20),
        ) {
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !id.is_empty() && id != boot_id {
                break;
            }
        }
    }
    assert!(guest(&vm, &key, "findmnt -n -o SOURCE /usr").starts_with("/dev/mapper/usr"));
    // The first boot's journal survived its reboot: what it said is there to read.
    let first = guest(
        &vm,
        &key,
        &format!(
            "sudo journalctl --list-boots --no-pager | grep -c '[0-9a-f]\\{{32\\}}'; sudo journalctl -b {} --no-pager -q -o cat | wc -l",
            boot_id.replace('-', "")
        ),
    );
    let counts: Vec<u64> = first
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == 2 && counts[1] > 100,
        "the first boot's journal is not kept (boots listed, then the first boot's lines): {first}"
    );
}

#[test]
fn one_flipped_byte_in_usr_stops_the_boot_with_a_verity_error() {
    let disk = disk_under_test();
    let work = work_dir("verity-corrupt");
    let copy = work.join("disk.raw");
    check(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk)
            .arg(&copy),
    )
    .unwrap();
    // Block 0 of USR-A's filesystem is the first block the kernel reads through verity when it
    // mounts /usr; its byte 0x100 is outside the superblock fields the init reads raw.
    let (offset, _) = partition(&copy, "USR-A").unwrap();
    let mut bytes = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    use std::io::{Read, Seek, SeekFrom, Write};
    let at = offset + 0x100;
    let mut b = [0u8; 1];
    bytes.seek(SeekFrom::Start(at)).unwrap();
    bytes.read_exact(&mut b).unwrap();
    bytes.seek(SeekFrom::Start(at)).unwrap();
    bytes.write_all(&[b[0] ^ 0xFF]).unwrap();
    drop(bytes);

    let mut cfg = VmConfig::new("corrupt", &work);
    cfg.disk = Some(copy);
    cfg.persist = true;
    cfg.memory_mib = 1024;
    let vm = Vm::start(&cfg).unwrap();
    vm.wait_for_serial("verity", BOOT_TIMEOUT).unwrap();
    vm.wait_for_serial("emergency shell", Duration::from_secs(120))
        .unwrap();
    let log = vm.serial_text().unwrap();
    assert!(
        !log.contains("Kernel panic"),
        "the kernel panicked: see {}",
        vm.serial_log().display()
    );
    assert!(
        !log.contains("Welcome to"),
        "systemd started on a corrupted /usr: see {}",
        vm.serial_log().display()
    );
}
