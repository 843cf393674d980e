//! A bad cloud-config never costs the machine: whatever is wrong with the document, the machine
//! boots to a login, says what is wrong (with line and column) on the console and in the journal
//! of `kiln-cloud-config.service`, and an operator gets in — with the document's key when it was
//! applied, or with the development key on the OEM partition when it was not.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_ci::{disk_under_test, disk_with_oem_files, guest, overlay, work_dir};
use kiln_qemu::{ssh_keygen, Accel, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// What the parser says about `doc`: its error, or its first warning.
fn parser_says(doc: &str) -> (bool, String) {
    match kiln_config::parse(doc) {
        Err(e) => (false, e.to_string()),
        Ok(p) => (
            true,
            p.warnings
                .first()
                .expect("the document has a warning")
                .to_string(),
        ),
    }
}

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
        // Parses (with a warning) and is applied, but one file cannot be written: the rest is.
        Case {
            name: "unwritable-path",
            doc: format!(
                "#cloud-config\nhostname: node-d\nssh_authorized_keys:\n  - {public_key}\nflavour: spicy\nwrite_files:\n  - path: /etc/passwd/kiln-ci-unwritable\n    content: x\n  - path: /etc/kiln/written-anyway\n    content: y\n"
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
            guest(
                vm,
                &key,
                "systemctl is-failed kiln-cloud-config.service || true"
            ),
            "failed",
            "{}",
            case.name
        );
        let journal = guest(
            vm,
            &key,
            "sudo journalctl -b -u kiln-cloud-config.service --no-pager -o cat",
        );
        if applied {
            assert!(
                journal.contains("write_files: FAILED: /etc/passwd/kiln-ci-unwritable"),
                "{journal}"
            );
            assert_eq!(guest(vm, &key, "hostname"), "node-d");
            assert_eq!(guest(vm, &key, "cat /etc/kiln/written-anyway"), "y");
        } else {
            assert!(
                journal.contains(&message) && journal.contains("was NOT applied"),
                "{}: journal:\n{journal}",
                case.name
            );
            // Nothing of the document was applied: the debug key let us in.
            assert_ne!(guest(vm, &key, "hostname"), "node-a");
        }
        // A login prompt on the serial console too, for an operator at the console.
        assert!(serial.contains("login:"), "{}: no login prompt", case.name);
    }
}
