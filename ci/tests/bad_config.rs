//! A bad cloud-config never costs the machine: whatever is wrong with the document, the machine
//! boots to a login, says what is wrong (with line and column) on the console and in the journal
//! of `kiln-cloud-config.service`, and an operator gets in — with the document's key when it was
//! applied, or with the development key on the OEM partition when it was not.
//!
//! In the same boots, user-data that is not one plain cloud-config: a `#!/bin/bash` script, and
//! a multipart one (Flatcar's) whose script part fails. Each script runs once, from
//! `kiln-user-data.service`, with its output in that unit's journal and its exit status in the
//! report.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_ci::{
    disk_under_test, disk_with_oem_files, guest, overlay, unit_ended, wait_in_guest, work_dir,
};
use kiln_qemu::{ssh_keygen, Accel, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// The first-boot unit that applies the cloud-config; sshd does not wait for it, so on a loaded
/// host a login may come before it has ended.
const CLOUD_CONFIG_UNIT: &str = "kiln-cloud-config.service";

/// What the parser says about `doc`: its error, or its first warning.
fn parser_says(doc: &str) -> (bool, String) {
    match kiln_config::read_user_data(doc.as_bytes()) {
        Err(e) => (false, e.to_string()),
        Ok(user_data) => (
            true,
            kiln_config::describe(user_data)
                .1
                .first()
                .expect("the document has a warning")
                .to_string(),
        ),
    }
}

/// What the multipart case's failing script part prints, and the plain script's line.
const PART_SAYS: &str = "kiln-ci: the multipart user-data's script part ran";
const SCRIPT_SAYS: &str = "kiln-ci: the user-data script ran as";
/// A `public-ip` for flannel that is no address of the machine (TEST-NET-1).
const NOT_HERE: &str = "192.0.2.1";

struct Case {
    name: &'static str,
    doc: String,
}

fn cases(public_key: &str) -> Vec<Case> {
    vec![
        Case {
            name: "invalid-yaml",
            doc: "#cloud-config\nhostname: node-a\nusers: [\n  - name: x\n".into(),
        },
        // A wrong type is only a warning (as for coreos-cloudinit); a bad value refuses the
        // document, at the key's line.
        Case {
            name: "bad-value",
            doc: "#cloud-config\nhostname:\n  node_b!\n".into(),
        },
        Case {
            name: "unit-without-name",
            doc: "#cloud-config\ncoreos:\n  units:\n    - command: start\n      content: |\n        [Service]\n        ExecStart=/bin/true\n".into(),
        },
        // Multipart: a cloud-config part that parses (with a warning) and is applied, but one
        // of its files cannot be written (the rest is), and a script part that fails. Its
        // flannel settings name an address the machine does not have.
        Case {
            name: "unwritable-path",
            doc: format!(
                "Content-Type: multipart/mixed; boundary=\"kiln-ci\"\nMIME-Version: 1.0\n\n--kiln-ci\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n#cloud-config\nhostname: node-d\nssh_authorized_keys:\n  - {public_key}\nflavour: spicy\nwrite_files:\n  - path: /etc/passwd/kiln-ci-unwritable\n    content: x\n  - path: /etc/kiln/written-anyway\n    content: y\ncoreos:\n  units:\n    - name: etcd.service\n      command: start\n  flannel:\n    public-ip: {NOT_HERE}\n\n--kiln-ci\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/sh\necho \"{PART_SAYS}\"\nexit 3\n--kiln-ci--\n"
            ),
        },
    ]
}

fn start(case: &Case, work: &Path, disk: &Path) -> Vm {
    let config = work.join(format!("{}.yml", case.name));
    std::fs::write(&config, &case.doc).unwrap();
    let mut cfg = VmConfig::new(case.name, work);
    cfg.disk = Some(overlay(disk, &work.join(format!("{}.qcow2", case.name)), "6G").unwrap());
    cfg.persist = true;
    cfg.accel = Accel::Auto;
    cfg.memory_mib = 1024;
    cfg.cpus = 1;
    cfg.ssh_forward = true;
    cfg.config_file = Some(config);
    Vm::start(&cfg).unwrap_or_else(|e| panic!("starting {}: {e}", case.name))
}

#[test]
fn bad_documents_are_reported_and_the_machine_stays_reachable() {
    let disk = disk_under_test();
    let work = work_dir("bad-config");
    let (key, public) = ssh_keygen(&work).unwrap();
    // The development key, as `build-image --debug-ssh-key` puts it on OEM.
    let dev_disk = disk_with_oem_files(
        &disk,
        &work.join("disk-with-debug-key.raw"),
        &[("debug-ssh-keys", format!("{public}\n").as_bytes())],
    )
    .unwrap();
    let cases = cases(&public);
    let started = Instant::now();
    let vms: Vec<Vm> = cases.iter().map(|c| start(c, &work, &dev_disk)).collect();
    // A user-data that is only a script: no key but the development one lets us in.
    let script = Case {
        name: "script",
        doc: format!("#!/bin/bash\necho \"{SCRIPT_SAYS} $(id -un) in $PWD\"\n"),
    };
    let script_vm = start(&script, &work, &dev_disk);
    for (case, vm) in cases.iter().zip(&vms) {
        let (applied, message) = parser_says(&case.doc);
        assert!(message.contains("line "), "{message}");
        vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: no login: {e}", case.name));
        eprintln!(
            "{}: ssh after {:.0} s",
            case.name,
            started.elapsed().as_secs_f64()
        );
        // On the console, word for word as the parser said it.
        let serial = vm.serial_text().unwrap();
        assert!(
            serial.contains(&message),
            "{}: the console does not show `{message}`: see {}",
            case.name,
            vm.serial_log().display()
        );
        // The named unit failed, and its journal holds the reason.
        assert_eq!(
            unit_ended(vm, &key, CLOUD_CONFIG_UNIT, BOOT_TIMEOUT),
            "failed",
            "{}",
            case.name
        );
        let journal = guest(
            vm,
            &key,
            &format!("sudo journalctl -b -u {CLOUD_CONFIG_UNIT} --no-pager -o cat"),
        );
        if applied {
            assert!(
                journal.contains("write_files: FAILED: /etc/passwd/kiln-ci-unwritable"),
                "{journal}"
            );
            assert_eq!(guest(vm, &key, "hostname"), "node-d");
            assert_eq!(guest(vm, &key, "cat /etc/kiln/written-anyway"), "y");
            // The script part ran once, failed, and said so in its journal and the report.
            script_ran(vm, &key, "part-02", 3, PART_SAYS);
            flannel_refused(vm, &key);
        } else {
            assert!(
                journal.contains(&message) && journal.contains("was NOT applied"),
                "{}: journal:\n{journal}",
                case.name
            );
            // Nothing of the document was applied: the debug key let us in.
            assert_ne!(guest(vm, &key, "hostname"), "node-a");
        }
        // A login prompt on the serial console too, for an operator at the console (getty
        // may write it after sshd answers).
        vm.wait_for_serial("login:", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: no login prompt: {e}", case.name));
    }

    script_vm
        .wait_for_ssh(&key, "core", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("script: no login: {e}"));
    let serial = script_vm.serial_text().unwrap();
    assert!(
        serial.contains("a script (#!/bin/bash)"),
        "the init did not say it kept the script: see {}",
        script_vm.serial_log().display()
    );
    script_ran(
        &script_vm,
        &key,
        "user-data",
        0,
        &format!("{SCRIPT_SAYS} root in /"),
    );
    let report = guest(
        &script_vm,
        &key,
        "sudo cat /var/lib/kiln/cloud-config.report",
    );
    assert!(report.starts_with("status: ok\n"), "{report}");
    assert_eq!(
        unit_ended(&script_vm, &key, CLOUD_CONFIG_UNIT, BOOT_TIMEOUT),
        "active"
    );
    // The login prompts above came under the device timeout the image sets (a loaded host once
    // took udev past systemd's 90 s for the console's tty, and its getty never started).
    assert_eq!(
        guest(
            &script_vm,
            &key,
            "systemctl show -p DefaultDeviceTimeoutUSec --value"
        ),
        "5min"
    );
}

/// flannel settings that cannot work, one after another: the daemon says why in its journal
/// and in `systemctl status`, keeps trying, and docker runs the machine's containers on its
/// default bridge.
fn flannel_refused(vm: &Vm, key: &Path) {
    let says = |what: &str| {
        wait_in_guest(
            vm,
            key,
            "systemctl show -p StatusText --value kiln-flanneld.service; sudo journalctl -b -u kiln-flanneld.service --no-pager -o cat",
            Duration::from_secs(240),
            |o| o.lines().next().is_some_and(|l| l.contains(what)) && o.contains(what),
        );
    };
    says(&format!(
        "public-ip {NOT_HERE} (FLANNELD_PUBLIC_IP) is not an address of this machine"
    ));
    // docker waited for flannel (at most its 90 s) and started on its default bridge.
    let eth0 = wait_in_guest(
        vm,
        key,
        "sudo docker run --rm kiln/busybox ip -4 -o addr show dev eth0",
        BOOT_TIMEOUT,
        |o| o.contains("inet "),
    );
    assert!(eth0.contains("inet 172.17."), "{eth0}");
    // The address fixed (the machine's own; it has no default route for flannel to find one
    // by); the network config in etcd wrong in each of the ways it can be.
    guest(
        vm,
        key,
        &format!(
            "etcdctl put /coreos.com/network/config 'Network: 10.5.0.0/16' && \
             own=$(ip -4 -o addr show scope global | grep -v docker0 | head -n 1 | sed 's|.* inet \\([0-9.]*\\)/.*|\\1|') && \
             sudo sed -i \"s/{NOT_HERE}/$own/\" /etc/flannel/options.env && \
             sudo systemctl restart --no-block kiln-flanneld.service"
        ),
    );
    says("the network config: it is not JSON");
    guest(
        vm,
        key,
        r#"etcdctl put /coreos.com/network/config '{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}'"#,
    );
    says(r#"`Backend.Type` "udp" is not a backend Kiln's flannel has"#);
    // Room for one subnet, and another machine holds it.
    guest(
        vm,
        key,
        r#"etcdctl put /coreos.com/network/subnets/10.5.0.64-26 '{"PublicIP":"10.9.9.9","BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00:01"}}' && etcdctl put /coreos.com/network/config '{"Network":"10.5.0.0/24","SubnetLen":26,"SubnetMin":"10.5.0.64","SubnetMax":"10.5.0.64"}'"#,
    );
    says("10.5.0.0/24 has no free /26 subnet left");
    assert_eq!(
        guest(vm, key, "systemctl is-active docker.service"),
        "active"
    );
}

/// `name` ran once from kiln-user-data.service: `says` in the unit's journal, the exit status
/// in the report, the unit failed when the script did, the script moved to `ran/`.
fn script_ran(vm: &Vm, key: &Path, name: &str, status: i32, says: &str) {
    let line = format!("script {name}: exit status {status}");
    wait_in_guest(
        vm,
        key,
        "sudo cat /var/lib/kiln/cloud-config.report",
        BOOT_TIMEOUT,
        |report| report.contains(&line),
    );
    let journal = guest(
        vm,
        key,
        "sudo journalctl -b -u kiln-user-data.service --no-pager -o cat",
    );
    assert!(
        journal.contains(says) && journal.contains(&line),
        "{}: {journal}",
        vm.name()
    );
    let state = guest(
        vm,
        key,
        "systemctl is-failed kiln-user-data.service || true",
    );
    assert_eq!(
        state,
        if status == 0 { "inactive" } else { "failed" },
        "{}",
        vm.name()
    );
    assert_eq!(
        guest(
            vm,
            key,
            "sudo ls /var/lib/kiln/user-data/scripts /var/lib/kiln/user-data/ran"
        ),
        format!("/var/lib/kiln/user-data/ran:\n{name}\n\n/var/lib/kiln/user-data/scripts:"),
        "{}",
        vm.name()
    );
}
