//! Issue 8's scenario: `cargo xtask flash` writes the built image to a loop device larger than
//! the image (as root), with a cloud-config; the partition table passes `sgdisk -v` with its
//! backup at the end; the loop's backing file then boots in QEMU (TCG) with the config taken
//! from the OEM partition (no fw_cfg given): hostname and ssh key applied, ROOT grown to the
//! larger disk. And flashing into a file gives the same clean table.

use std::ffi::OsStr;
use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_ci::flash::{check_flashed_table, image_with_sums, xtask_flash, LoopDevice};
use kiln_ci::{check, disk_under_test, guest, work_dir};
use kiln_qemu::{ssh_keygen, Accel, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How much larger than the image the target disk is.
const EXTRA: u64 = 3 << 30;
const HOSTNAME: &str = "kiln-flashed";

fn assert_flashed(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stderr.contains("flashed"),
        "cargo xtask flash failed ({}): {stderr}",
        out.status
    );
    stderr
}

#[test]
fn a_flashed_loop_device_boots_with_the_oem_cloud_config_and_grows_root() {
    let disk = disk_under_test();
    let work = work_dir("flash");
    let image = image_with_sums(&disk, &work).unwrap();
    let (key, public) = ssh_keygen(&work).unwrap();
    let config = work.join("cloud-config.yml");
    std::fs::write(
        &config,
        format!("#cloud-config\nhostname: {HOSTNAME}\nssh_authorized_keys:\n  - {public}\n"),
    )
    .unwrap();

    let backing = work.join("target.img");
    let size = std::fs::metadata(&disk).unwrap().len() + EXTRA;
    File::create(&backing).unwrap().set_len(size).unwrap();
    let lo = LoopDevice::attach(&backing).unwrap();
    let started = Instant::now();
    let mut args = vec![
        OsStr::new("--device"),
        lo.path.as_os_str(),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--yes"),
    ];
    args.extend(image.args());
    let out = xtask_flash(&args).unwrap();
    let log = assert_flashed(&out);
    eprintln!(
        "flash: {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        log.lines()
            .filter(|l| !l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.contains("backup partition table moved to the end"),
        "{log}"
    );
    drop(lo);
    check_flashed_table(&backing).unwrap();
    // Zeroed ranges may be allocated in the backing file; give the space back before booting.
    let _ = Command::new("fallocate")
        .arg("--dig-holes")
        .arg(&backing)
        .status();

    let mut cfg = VmConfig::new("flash", &work);
    cfg.disk = Some(backing.clone());
    cfg.persist = true;
    cfg.accel = Accel::Tcg;
    cfg.memory_mib = 1536;
    cfg.ssh_forward = true;
    // No fw_cfg config: OEM's cloud-config.yml is the only source.
    cfg.config_file = None;
    let started = Instant::now();
    let vm = Vm::start(&cfg).unwrap();
    vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT).unwrap();
    eprintln!("boot to ssh: {:.1} s", started.elapsed().as_secs_f64());

    assert_eq!(guest(&vm, &key, "cat /proc/sys/kernel/hostname"), HOSTNAME);
    let sectors = |path: &str| -> u64 { guest(&vm, &key, &format!("cat {path}")).parse().unwrap() };
    let disk_sectors = sectors("/sys/block/vda/size");
    assert_eq!(disk_sectors * 512, size, "the guest sees another disk size");
    let root_end = sectors("/sys/block/vda/vda5/start") + sectors("/sys/block/vda/vda5/size");
    assert!(
        disk_sectors - root_end <= 2048 + 34,
        "ROOT ends at sector {root_end} of {disk_sectors}: it did not grow"
    );
    let fs_bytes: u64 = guest(&vm, &key, "df -B1 --output=size / | tail -1")
        .parse()
        .unwrap();
    let part_bytes = sectors("/sys/block/vda/vda5/size") * 512;
    assert!(
        fs_bytes * 100 >= part_bytes * 90 && part_bytes > EXTRA,
        "ROOT's filesystem is {fs_bytes} bytes of a {part_bytes}-byte partition"
    );
    // The first boot said where the document came from (the initramfs logs to the console).
    let serial = vm.serial_text().unwrap();
    assert!(
        serial
            .contains("cloud-config: applying the one from the OEM partition's /cloud-config.yml"),
        "the console does not say the cloud-config came from OEM: see {}",
        vm.serial_log().display()
    );
    let _ = vm.ssh(&key, "core", "sudo systemctl poweroff", CMD_TIMEOUT);
    let _ = vm.wait_exit(Duration::from_secs(60));
    drop(vm);
    let _ = std::fs::remove_file(&backing);
}

#[test]
fn flashing_into_a_larger_file_gives_a_clean_table_with_the_backup_at_the_end() {
    let disk = disk_under_test();
    let work = work_dir("flash-file");
    let image = image_with_sums(&disk, &work).unwrap();
    let target = work.join("disk.img");
    let size = std::fs::metadata(&disk).unwrap().len() + EXTRA;
    File::create(&target).unwrap().set_len(size).unwrap();
    let mut args = vec![OsStr::new("--to-file"), target.as_os_str()];
    args.extend(image.args());
    let out = xtask_flash(&args).unwrap();
    assert_flashed(&out);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), size);
    let gpt = check_flashed_table(&target).unwrap();
    // The partitions are the image's, byte for byte: compare the ESP with cmp.
    let (_, esp) = gpt.find_by_name("EFI-SYSTEM").unwrap();
    check(
        Command::new("cmp")
            .arg("-n")
            .arg(esp.size_bytes().to_string())
            .arg(&target)
            .arg(&disk)
            .arg(esp.start_bytes().to_string())
            .arg(esp.start_bytes().to_string()),
    )
    .unwrap();
    let _ = std::fs::remove_file(&target);
}
