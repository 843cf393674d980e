//! Power cuts during an update: QEMU is killed while the agent writes the inactive slot, and at
//! each later point (after the write, after the ESP files, after the boot entry). Every time the
//! machine must boot a good slot, and the update must complete on a later attempt.
//!
//! To cut at an exact point the test writes `<phase>[:<percent>]` to the agent's freeze file
//! (`/run/kiln/update-agent/freeze-at`): the agent stops itself there and says so, and the test
//! kills QEMU. After the boot entry the agent waits at reboot-needed (strategy `off`) and the cut
//! needs no help.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_ci::update::{start_machine, Evidence, UpdateServer, Version, RUNNING};
use kiln_ci::{guest, wait_in_guest, work_dir};
use kiln_qemu::{ssh_keygen, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// From arming a freeze point to the agent stopping there (a download and a write under TCG).
const REACH_TIMEOUT: Duration = Duration::from_secs(900);

/// Kills QEMU and starts it again on the same disk: a power cut.
fn power_cut(vm: &mut Vm, key: &Path, what: &str) {
    let boot_id = guest(vm, key, "cat /proc/sys/kernel/random/boot_id");
    vm.restart().unwrap();
    eprintln!("power cut {what}");
    vm.wait_for_ssh(key, "core", BOOT_TIMEOUT).unwrap();
    let now = guest(vm, key, "cat /proc/sys/kernel/random/boot_id");
    assert_ne!(now, boot_id, "the machine did not restart");
}

/// Arms the agent's freeze point: it stops itself when the install reaches `point`. The file
/// is written beside and renamed into place: an install already running reads it at every
/// progress report, and once read it empty, between `tee`'s truncate and its write, took it for
/// a bad point, removed it and never froze.
fn arm(vm: &Vm, key: &Path, point: &str) {
    guest(
        vm,
        key,
        &format!(
            "sudo mkdir -p /run/kiln/update-agent && echo {point} | sudo tee /run/kiln/update-agent/.freeze-at >/dev/null && sudo mv /run/kiln/update-agent/.freeze-at /run/kiln/update-agent/freeze-at"
        ),
    );
}

/// Waits until the agent has stopped at its freeze point.
fn wait_frozen(vm: &Vm, key: &Path) {
    wait_in_guest(
        vm,
        key,
        "test -e /run/kiln/update-agent/frozen && echo frozen || echo running",
        REACH_TIMEOUT,
        |out| out.trim() == "frozen",
    );
}

#[test]
fn power_cuts_at_every_phase_of_an_update_leave_a_bootable_machine_that_completes_it() {
    let v1 = Version::under_test();
    let v2 = Version::from_env("KILN_CI_V2");
    let work = work_dir("power-cut");
    let (key, public) = ssh_keygen(&work).unwrap();
    let server = UpdateServer::start(&work, &v1.public_key());
    let started = Instant::now();
    let mut vm = start_machine("power-cut", &work, &v1, &public, "off", &server);
    vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT).unwrap();
    assert_eq!(guest(&vm, &key, RUNNING), format!("{} a", v1.version));

    let _evidence = Evidence::new(&work, &server, &[&vm], &key);
    let cuts = [
        ("writing:50", "half way through writing USR-B"),
        ("readingback", "after the write, before the read-back"),
        ("entry", "after the ESP files, before the boot entry"),
    ];
    for (i, (point, what)) in cuts.into_iter().enumerate() {
        let t = Instant::now();
        arm(&vm, &key, point);
        if i == 0 {
            // Armed before publishing: the first install stops half way through its write.
            server.publish(&v2);
        }
        wait_frozen(&vm, &key);
        let status = guest(&vm, &key, "sudo kiln-update status");
        eprintln!("frozen at {point}:\n{status}");
        power_cut(&mut vm, &key, what);
        // The new entry is not complete: the old slot boots.
        assert_eq!(
            guest(&vm, &key, RUNNING),
            format!("{} a", v1.version),
            "after a power cut {what} the machine must boot v1 from USR-A; serial log: {}",
            vm.serial_log().display()
        );
        eprintln!("cut {what}: {:.0} s", t.elapsed().as_secs_f64());
    }

    // The agent resumes on its own and stops at reboot-needed (strategy `off`): the entry is
    // complete, so the cut now boots the new slot, where the agent confirms and blesses it.
    let t = Instant::now();
    wait_in_guest(&vm, &key, "sudo kiln-update status", REACH_TIMEOUT, |s| {
        s.contains("state:        reboot-needed")
    });
    power_cut(&mut vm, &key, "after the boot entry");
    assert_eq!(guest(&vm, &key, RUNNING), format!("{} b", v2.version));
    wait_in_guest(
        &vm,
        &key,
        "sudo kiln-update status",
        Duration::from_secs(300),
        |s| {
            s.contains("state:        idle")
                && s.contains(&format!("kiln-b.conf (version {})", v2.version))
        },
    );
    eprintln!(
        "cut after the boot entry, then blessed: {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let machine = guest(&vm, &key, "cat /etc/machine-id");
    server.wait_instance(&machine, Duration::from_secs(120), "complete on v2", |r| {
        r["instance"]["status"] == "complete" && r["instance"]["version"] == v2.version.as_str()
    });
    eprintln!("whole scenario: {:.0} s", started.elapsed().as_secs_f64());
}
