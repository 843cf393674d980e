//! The third cloud-config source: no fw_cfg item and no `cloud-config.yml` on OEM, but
//! `kiln.config.url=` on the kernel command line. `kiln-config-url.service` fetches the document
//! once the network is up (here from a server on the host, through a `guestfwd` of restricted
//! user networking), applies it to the running system and starts its units.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_ci::{check, disk_under_test, guest, overlay, partition, unit_ended, work_dir};
use kiln_qemu::{ssh_keygen, Accel, GuestFwd, GuestFwdTarget, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the fetching oneshot may still run once ssh answers.
const UNIT_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GUEST_PORT: u16 = 8080;

/// Serves `doc` to every GET on 127.0.0.1 (HTTP/1.0, closing after each answer); counts requests.
fn serve(doc: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/yaml\r\nContent-Length: {}\r\n\r\n{doc}",
                    doc.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, hits)
}

/// A sparse copy of `disk` whose boot entry for slot A carries `param` on its command line.
fn disk_with_kernel_param(disk: &std::path::Path, out: &std::path::Path, param: &str) {
    check(
        std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(disk)
            .arg(out),
    )
    .unwrap();
    let (offset, len) = partition(out, "EFI-SYSTEM").unwrap();
    let file = File::options().read(true).write(true).open(out).unwrap();
    let mut esp = kiln_image::region::Region::new(file, offset, len).unwrap();
    let path = "/loader/entries/kiln-a.conf";
    let text = String::from_utf8(kiln_image::fat::read_file(&mut esp, path).unwrap()).unwrap();
    let edited: String = text
        .lines()
        .map(|l| match l.strip_prefix("options ") {
            Some(o) => format!("options {o} {param}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(edited, text, "no options line in {path}:\n{text}");
    kiln_image::fat::write_file(&mut esp, path, edited.as_bytes(), 0).unwrap();
}

#[test]
fn a_document_from_kiln_config_url_is_fetched_applied_and_its_units_started() {
    let disk = disk_under_test();
    let work = work_dir("config-url");
    let (key, public) = ssh_keygen(&work).unwrap();
    let doc = format!(
        "#cloud-config\nhostname: from-url\nssh_authorized_keys:\n  - {public}\ncoreos:\n  units:\n    - name: url-hello.service\n      command: start\n      content: |\n        [Service]\n        Type=oneshot\n        RemainAfterExit=yes\n        ExecStart=/bin/sh -c 'echo fetched > /run/url-hello'\n"
    );
    kiln_config::parse(&doc).expect("the test's document is valid");
    let (port, hits) = serve(doc);
    let url = format!("http://{GUEST_ADDR}:{GUEST_PORT}/node.yml");
    let raw = work.join("disk-with-url.raw");
    disk_with_kernel_param(&disk, &raw, &format!("kiln.config.url={url}"));

    let mut cfg = VmConfig::new("config-url", &work);
    cfg.disk = Some(overlay(&raw, &work.join("guest.qcow2"), "6G").unwrap());
    cfg.persist = true;
    cfg.accel = Accel::Auto;
    cfg.memory_mib = 1024;
    cfg.ssh_forward = true;
    cfg.guest_forwards = vec![GuestFwd {
        guest_addr: GUEST_ADDR,
        guest_port: GUEST_PORT,
        target: GuestFwdTarget::Relay(port),
    }];
    let vm = Vm::start(&cfg).unwrap();
    // The only way in is the key the fetched document carries.
    vm.wait_for_ssh(&key, "core", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("no login with the fetched document's key: {e}"));
    assert!(hits.load(Ordering::SeqCst) >= 1);
    let serial = vm.serial_text().unwrap();
    assert!(
        serial.contains("cloud-config: none given"),
        "the init should have found no document: see {}",
        vm.serial_log().display()
    );
    assert_eq!(guest(&vm, &key, "hostname"), "from-url");
    // ssh answers once the document's key is in; the oneshot may still be starting the
    // document's units then: waited for until it ends.
    assert_eq!(
        unit_ended(&vm, &key, "kiln-config-url.service", UNIT_TIMEOUT),
        "active"
    );
    assert_eq!(guest(&vm, &key, "cat /run/url-hello"), "fetched");
    let journal = guest(
        &vm,
        &key,
        "sudo journalctl -b -u kiln-config-url.service --no-pager -o cat",
    );
    assert!(
        journal.contains(&format!("cloud-config from {url}")),
        "{journal}"
    );
    let report = guest(
        &vm,
        &key,
        "sudo head -n 1 /var/lib/kiln/cloud-config.report",
    );
    assert_eq!(report, "status: ok");
}
