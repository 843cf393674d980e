//! The life of one machine across updates, the way an operator sees it: the update server runs on
//! the host, the machine's cloud-config points its agent at it (through a `guestfwd` of
//! restricted user networking), and the operator only publishes, pauses and resumes. The server
//! speaks only HTTPS, with a certificate from the scenario's own CA, which the machine pins
//! (`update: ca-file:`, the file written by the same cloud-config).
//!
//! 1. **Update**: v1 finds v2, writes USR-B, reboots into it, blesses it; the server shows the
//!    machine complete with its events in order, and USR-A still holds v1 byte for byte.
//! 2. **Manual rollback**: `kiln-update rollback` on v2 → the machine reboots into v1; once the
//!    channel is resumed the agent takes v2 again.
//! 3. **Bad update**: v3 (its /usr has a service that always fails) is installed to USR-A, never
//!    blessed; after its three tries the boot loader brings v2 back by itself, the server shows
//!    the rollback, and the agent refuses v3 from then on.
//!
//! One machine runs all three, in order, because each starts where the last ended (and the
//! boots are the expensive part under TCG). Each stage prints its wall time.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_ci::update::{
    event_codes, start_machine, Evidence, UpdateServer, Version, CHANNEL, INSTALL_STEPS, RUNNING,
};
use kiln_ci::{guest, wait_in_guest, work_dir};
use kiln_qemu::{ssh_keygen, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// From publishing to the new version running: check, download, write, read back, reboot.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(1200);
/// Three boots of the bad version, each waiting out the health timeout, then the fallback boot.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(1500);

fn wait_running(vm: &Vm, key: &Path, version: &str, slot: &str, timeout: Duration) {
    let want = format!("{version} {slot}");
    wait_in_guest(vm, key, RUNNING, timeout, |out| out.trim() == want);
}

fn stage(name: &str, started: Instant) {
    eprintln!("stage {name}: {:.0} s", started.elapsed().as_secs_f64());
}

/// SHA-256 of the first `len` bytes of a partition, read in the guest.
fn partition_sha256(vm: &Vm, key: &Path, label: &str, len: u64) -> String {
    let out = guest(
        vm,
        key,
        &format!("sudo head -c {len} /dev/disk/by-partlabel/{label} | sha256sum | cut -d' ' -f1"),
    );
    out.trim().to_owned()
}

/// `true` when `want` appears in `codes` in order (other events may come between).
fn in_order(codes: &[String], want: &[&str]) -> bool {
    let mut it = codes.iter();
    want.iter().all(|w| it.any(|c| c == w))
}

#[test]
fn v1_updates_to_v2_rolls_back_by_hand_and_a_bad_v3_falls_back_by_itself() {
    let v1 = Version::under_test();
    let v2 = Version::from_env("KILN_CI_V2");
    let v3 = Version::from_env("KILN_CI_V3_BROKEN");
    let work = work_dir("update");
    let (key, public) = ssh_keygen(&work).unwrap();
    // Over HTTPS, the machine pinning the server's CA from its cloud-config: the device
    // agent's TLS, end to end (the other scenarios speak plain HTTP).
    let server = UpdateServer::start_https(&work, &v1.public_key());

    let started = Instant::now();
    let vm = start_machine("update", &work, &v1, &public, "immediate", &server);
    let _evidence = Evidence::new(&work, &server, &[&vm], &key);
    vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT).unwrap();
    wait_running(&vm, &key, &v1.version, "a", Duration::from_secs(60));
    let machine = guest(&vm, &key, "cat /etc/machine-id");
    stage("boot v1", started);

    // 1. Update: v2 is published while v1 runs; the agent finds it on its own schedule.
    let t = Instant::now();
    server.publish(&v2);
    wait_running(&vm, &key, &v2.version, "b", UPDATE_TIMEOUT);
    stage("v1 → v2 running", t);
    let status = wait_in_guest(
        &vm,
        &key,
        "sudo kiln-update status",
        Duration::from_secs(300),
        |s| {
            s.contains("state:        idle")
                && s.contains(&format!("kiln-b.conf (version {})", v2.version))
        },
    );
    assert!(
        status.contains(&format!("kiln-a.conf (version {})", v1.version)),
        "v1 stays a complete entry to fall back to:\n{status}"
    );
    let record = server.wait_instance(&machine, Duration::from_secs(120), "complete on v2", |r| {
        r["instance"]["status"] == "complete" && r["instance"]["version"] == v2.version.as_str()
    });
    let codes = event_codes(&record);
    assert!(
        in_order(&codes, &["13/1", "14/1", "3/1", "3/2"]),
        "events out of order or missing: {codes:?}"
    );
    assert_eq!(
        partition_sha256(&vm, &key, "USR-A", v1.usr_len()),
        v1.usr_sha256(v1.usr_len()),
        "USR-A must still hold v1 byte for byte"
    );
    // USR-B needs no hash here: the kernel reads it through dm-verity with v2's root hash.
    // Where the install's time went, as the agent logged it on v1.
    let steps = guest(&vm, &key, INSTALL_STEPS);
    eprintln!("v1's agent installing v2:\n{steps}");
    stage("update", t);

    // 2. Manual rollback. The channel is paused first, or v1's agent would take v2 again at once.
    let t = Instant::now();
    server.admin.pause(&server.app, CHANNEL).unwrap();
    let said = guest(&vm, &key, "sudo kiln-update rollback");
    assert!(said.contains("slot a boots next"), "{said}");
    let _ = vm.ssh(
        &key,
        "core",
        "sudo systemctl reboot",
        Duration::from_secs(30),
    );
    wait_running(&vm, &key, &v1.version, "a", BOOT_TIMEOUT);
    stage("manual rollback to v1", t);
    let t = Instant::now();
    server.admin.resume(&server.app, CHANNEL).unwrap();
    wait_running(&vm, &key, &v2.version, "b", UPDATE_TIMEOUT);
    wait_in_guest(
        &vm,
        &key,
        "sudo kiln-update status",
        Duration::from_secs(300),
        |s| s.contains("state:        idle") && s.contains("kiln-b.conf ("),
    );
    stage("v1 → v2 again after resume", t);

    // 3. A bad update: v3 never gets healthy, so it is never blessed; the counter runs down.
    let t = Instant::now();
    server.publish(&v3);
    let record = server.wait_instance(&machine, ROLLBACK_TIMEOUT, "the rollback of v3", |r| {
        r["instance"]["status"] == "rolled-back"
    });
    stage("v3 installed, tried and rolled back", t);
    wait_running(&vm, &key, &v2.version, "b", Duration::from_secs(300));
    let serial = vm.serial_text().unwrap();
    // systemd greets each boot with the version in bold: "Welcome to \e[1mKiln 1.2.3\e[0m!".
    let greeting = format!("Kiln {}\u{1b}[0m!", v3.version);
    let tries = serial
        .lines()
        .filter(|l| l.contains("Welcome to") && l.contains(&greeting))
        .count();
    assert!(
        tries >= 3,
        "v3 should have been tried 3 times, the serial log shows {tries} boots of it: {}",
        vm.serial_log().display()
    );
    assert!(
        record["instance"]["last_error"].is_string(),
        "the server names the rollback error: {record:#}"
    );
    assert!(
        in_order(&event_codes(&record), &["3/1", "3/0"]),
        "{:?}",
        event_codes(&record)
    );
    // The agent keeps v3 out: a check now finds it offered and refuses it.
    let status = guest(&vm, &key, "sudo kiln-update status");
    assert!(
        status.contains(&format!("bad versions: {}", v3.version)),
        "{status}"
    );
    // Checks go on (every 15 s, and one asked for now); none of them starts a download again.
    let said = guest(&vm, &key, "sudo kiln-update check");
    assert!(said.contains("checked: state idle"), "{said}");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(10));
        let status = guest(&vm, &key, "sudo kiln-update status");
        let state = status.lines().next().unwrap_or_default().to_owned();
        assert!(
            state.ends_with(" idle") || state.ends_with(" checking"),
            "{state}"
        );
    }
    let after = event_codes(&server.instance(&machine));
    let fallback = after
        .iter()
        .rposition(|c| c == "3/0")
        .expect("the 3/0 event");
    assert!(
        !after[fallback..].iter().any(|c| c == "13/1"),
        "v3 was downloaded again after it was marked bad: {after:?}"
    );
    let running = guest(&vm, &key, RUNNING);
    assert_eq!(running, format!("{} b", v2.version));
    stage("bad update", t);
    eprintln!("whole scenario: {:.0} s", started.elapsed().as_secs_f64());
}
