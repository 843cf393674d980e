//! Whole-document tests: a CoreOS-shape file parsed unchanged, bad documents with their line
//! and column, and applying into a temporary root checked file by file and with the
//! reference tools (`pwck`, `grpck`, `systemctl --root`, `gzip`, Python's `tomllib`).

use crate::*;
use kiln_contract::update_conf::{RebootStrategy, Weekday};
use kiln_image::testutil::require_tool;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// A cloud-config in the style of the CoreOS documentation (etcd2, fleet, update, locksmith,
/// units with content and drop-ins, users, write_files). The gzip+b64 content was made with
/// `printf 'hello from gzip\n' | gzip -9n | base64 -w0`, the b64 one with
/// `printf 'secret\n' | base64`.
const COREOS_DOC: &str = r#"#cloud-config

hostname: node-1

ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtpbG4ta2V5LWZvci10ZXN0cy1vbmx5LTAwMDAw admin@example

users:
  - name: elroy
    passwd: $6$5s2u6/jR$un0AvWnqilcgaNB3Mkxd5yYv6mTlWfOoCYHZmfi3LDKVltj.E8XNKEcwWm
    groups:
      - sudo
      - docker
    ssh-authorized-keys:
      - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0 elroy@example

coreos:
  etcd2:
    name: node-1
    discovery: https://discovery.example/6a28e078895c5ec737174db2419bb2f3
    advertise-client-urls: http://10.0.0.11:2379
    initial-advertise-peer-urls: http://10.0.0.11:2380
    listen-client-urls: http://0.0.0.0:2379,http://0.0.0.0:4001
    listen-peer-urls: http://10.0.0.11:2380
  fleet:
    public-ip: 10.0.0.11
    metadata: region=us-west
  update:
    reboot-strategy: etcd-lock
    group: stable
  locksmith:
    window-start: Thu 04:00
    window-length: 1h
  units:
    - name: etcd2.service
      command: start
    - name: docker-tcp.socket
      command: start
      enable: true
      content: |
        [Unit]
        Description=Docker Socket for the API

        [Socket]
        ListenStream=2375
        BindIPv6Only=both
        Service=docker.service

        [Install]
        WantedBy=sockets.target
    - name: docker.service
      drop-ins:
        - name: 50-insecure-registry.conf
          content: |
            [Service]
            Environment=DOCKER_OPTS='--insecure-registry="10.0.1.0/24"'

write_files:
  - path: /etc/resolv.conf
    permissions: 0644
    owner: root
    content: |
      nameserver 192.0.2.53
  - path: /home/core/secret.txt
    permissions: '0600'
    owner: 'core:core'
    encoding: b64
    content: c2VjcmV0Cg==
  - path: /opt/blob.txt
    encoding: gzip+b64
    content: H4sIAAAAAAACA8tIzcnJV0grys9VSK/KLOACAHgtvXgQAAAA
"#;

/// Debian's `/lib/systemd/system/etcd.service` from etcd-server 3.4.23-4+b4 (bookworm),
/// copied verbatim from the package.
const DEBIAN_ETCD_SERVICE: &str = "[Unit]
Description=etcd - highly-available key value store
Documentation=https://etcd.io/docs
Documentation=man:etcd
After=network.target
Wants=network-online.target

[Service]
Environment=DAEMON_ARGS=
Environment=ETCD_NAME=%H
Environment=ETCD_DATA_DIR=/var/lib/etcd/default
EnvironmentFile=-/etc/default/%p
Type=notify
User=etcd
PermissionsStartOnly=true
#ExecStart=/bin/sh -c \"GOMAXPROCS=$(nproc) /usr/bin/etcd $DAEMON_ARGS\"
ExecStart=/usr/bin/etcd $DAEMON_ARGS
Restart=on-abnormal
#RestartSec=10s
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
Alias=etcd2.service
";

fn parsed(doc: &str) -> Parsed {
    parse(doc).unwrap_or_else(|e| panic!("{e}"))
}

fn error(doc: &str) -> ConfigError {
    match parse(doc) {
        Ok(p) => panic!("accepted: {:?}", p.config),
        Err(e) => e,
    }
}

#[test]
fn coreos_document_parses_unchanged() {
    let p = parsed(COREOS_DOC);
    let c = &p.config;
    assert_eq!(c.hostname.as_deref(), Some("node-1"));
    assert_eq!(c.ssh_authorized_keys.len(), 1);
    assert_eq!(c.users.len(), 1);
    let u = &c.users[0];
    assert_eq!(u.name, "elroy");
    assert_eq!(u.groups, ["sudo", "docker"]);
    assert!(u.passwd.as_deref().unwrap().starts_with("$6$5s2u6/jR$"));
    assert_eq!(
        u.ssh_authorized_keys,
        ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0 elroy@example"]
    );

    let etcd = c.kiln.etcd.as_ref().unwrap();
    assert_eq!(etcd.get("name"), Some("node-1"));
    assert_eq!(
        etcd.get("listen-client-urls"),
        Some("http://0.0.0.0:2379,http://0.0.0.0:4001")
    );
    assert_eq!(etcd.settings.len(), 6);
    let up = &c.kiln.update_agent.as_ref().unwrap().settings;
    assert_eq!(up.channel.as_deref(), Some("stable"));
    assert_eq!(up.reboot_strategy, RebootStrategy::EtcdLock);
    let w = up.window.unwrap();
    assert_eq!(
        (w.weekday, w.start_secs, w.length_secs),
        (Some(Weekday::Thu), 4 * 3600, 3600)
    );

    let units = &c.kiln.units;
    assert_eq!(units.len(), 3);
    assert_eq!(units[0].command, Some(UnitCommand::Start));
    assert!(units[1].enable);
    assert!(units[1]
        .content
        .as_deref()
        .unwrap()
        .contains("WantedBy=sockets.target\n"));
    assert_eq!(units[2].drop_ins[0].name, "50-insecure-registry.conf");

    let wf = &c.write_files;
    assert_eq!(wf[0].permissions, Some(0o644));
    assert_eq!(
        wf[0].owner,
        Some(Owner {
            user: IdRef::Name("root".into()),
            group: None
        })
    );
    assert_eq!(wf[1].permissions, Some(0o600));
    assert_eq!(wf[1].content, b"secret\n");
    assert_eq!(
        wf[1].owner,
        Some(Owner {
            user: IdRef::Name("core".into()),
            group: Some(IdRef::Name("core".into()))
        })
    );
    assert_eq!(wf[2].encoding, Encoding::GzipBase64);
    assert_eq!(wf[2].content, b"hello from gzip\n");
    assert_eq!(c.source, COREOS_DOC);

    // Every key is known to Kiln: no warning.
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let fleet = c.kiln.fleet.as_ref().expect("the fleet section");
    assert_eq!(fleet.values["public_ip"], "10.0.0.11");
    assert_eq!(fleet.values["metadata"], "region=us-west");
}

/// The line and key of each warning.
fn warned_keys(p: &crate::Parsed) -> Vec<(u64, &str)> {
    p.warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect()
}

/// The flannel daemon's options from the options file's text, as systemd's `EnvironmentFile=`
/// reads it (`KEY="value"` lines, comments aside).
fn daemon_options(text: &str) -> kiln_flannel::daemon::Options {
    let vars: std::collections::HashMap<String, String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    kiln_flannel::daemon::Options::from_env(|k| vars.get(k).cloned())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `flannel:` as CoreOS documented it, and Kiln's `network:`: either spelling, TLS named as
/// unsupported, unknown keys warned at their line, a bad value refused at its key; what
/// kiln-config writes is what the daemon reads.
#[test]
fn flannel_section_reaches_the_daemon() {
    let doc = "#cloud-config\ncoreos:\n  flannel:\n    etcd_prefix: /kiln/network\n    public-ip: 10.77.0.2\n    interface: ens3\n    etcd_endpoints: [\"http://10.77.0.1:2379\", \"http://10.77.0.2:2379\"]\n    ip_masq: false\n    network: 10.5.0.0/16\n    backend: host-gw\n    etcd_cafile: /etc/ca.pem\n    colour: blue\n";
    let p = parsed(doc);
    let w = warned_keys(&p);
    assert_eq!(
        w,
        [
            (11, "coreos.flannel.etcd-cafile"),
            (12, "coreos.flannel.colour")
        ],
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings[0]
            .message
            .contains("TLS to etcd is not supported yet"),
        "{:?}",
        p.warnings
    );
    let text = p.config.kiln.flannel.as_ref().unwrap().render();
    let o = daemon_options(&text);
    assert_eq!(o.prefix, "/kiln/network");
    assert_eq!(o.public_ip, Some(std::net::Ipv4Addr::new(10, 77, 0, 2)));
    assert_eq!(o.interface.as_deref(), Some("ens3"));
    assert_eq!(
        o.etcd_endpoints,
        ["http://10.77.0.1:2379", "http://10.77.0.2:2379"]
    );
    assert!(!o.ip_masq);
    assert_eq!(
        o.network.as_deref(),
        Some(r#"{"Backend":{"Type":"host-gw"},"Network":"10.5.0.0/16"}"#)
    );

    let e = error("#cloud-config\nkiln:\n  flannel:\n    network: 10.5.0.1/16\n");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (4, Some("kiln.flannel.network")),
        "{e}"
    );
    assert!(e.to_string().contains("like 10.5.0.0/16"), "{e}");
}

/// `fleet:` as CoreOS documented it: every key by either spelling, unknown ones warned at their
/// own line, TLS named as unsupported, a bad value refused at its key; what kiln-config writes
/// is what the daemon reads.
#[test]
fn fleet_section_reaches_the_daemon() {
    use kiln_contract::fleet_conf::FleetConf;
    let doc = "#cloud-config\ncoreos:\n  fleet:\n    public-ip: 10.77.0.2\n    metadata: \"region=eu,role=web\"\n    agent_ttl: 60s\n    etcd_servers: [\"http://10.77.0.1:2379\", \"http://10.77.0.2:2379\"]\n    engine-reconcile-interval: 5\n    etcd_cafile: /etc/ca.pem\n    colour: blue\n";
    let p = parsed(doc);
    let w = warned_keys(&p);
    assert_eq!(
        w,
        [(9, "coreos.fleet.etcd_cafile"), (10, "coreos.fleet.colour")],
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings[0].message.contains("not supported yet"),
        "{:?}",
        p.warnings
    );
    let text = p.config.kiln.fleet.as_ref().unwrap().render();
    let (conf, problems) = FleetConf::load(&text, []);
    assert!(problems.is_empty(), "{problems:?}\n{text}");
    assert_eq!(conf.public_ip.as_deref(), Some("10.77.0.2"));
    assert_eq!(conf.metadata.get("role").map(String::as_str), Some("web"));
    assert_eq!(conf.agent_ttl, std::time::Duration::from_secs(60));
    assert_eq!(
        conf.engine_reconcile_interval,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        conf.etcd_servers,
        ["http://10.77.0.1:2379", "http://10.77.0.2:2379"]
    );

    let e = error("#cloud-config\ncoreos:\n  fleet:\n    agent_ttl: soon\n");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (4, Some("coreos.fleet.agent_ttl")),
        "{e}"
    );
    assert!(e.to_string().contains("a duration like 30s"), "{e}");
}

#[test]
fn gzip_content_made_by_the_reference_tool_decodes() {
    let gzip = require_tool("gzip", "gzip");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    fs::write(&input, &data).unwrap();
    let out = Command::new(gzip).arg("-9c").arg(&input).output().unwrap();
    assert!(out.status.success());
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &out.stdout);
    // Wrapped over lines, as `base64` prints it.
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let doc = format!(
        "#cloud-config\nwrite_files:\n  - path: /x\n    encoding: gz+b64\n    content: |\n      {}\n",
        wrapped.join("\n      ")
    );
    assert_eq!(parsed(&doc).config.write_files[0].content, data);
}

#[test]
fn bad_documents_point_at_the_offending_node() {
    let cases: &[(&str, u64, u64, &str)] = &[
        ("#cloud-config\nhostname: [a\n", 2, 11, "invalid YAML: unclosed bracket"),
        ("#cloud-config\ncoreos:\n  units:\n    - command: start\n", 4, 7, "`coreos.units[0]`: a unit needs a `name`"),
        ("#cloud-config\nwrite_files:\n- path: etc/foo\n  content: x\n", 3, 3, "`write_files[0].path`: \"etc/foo\" is a relative path"),
        ("#cloud-config\nwrite_files:\n- path: /a/../b\n", 3, 3, "contains `..`"),
        ("#cloud-config\nwrite_files:\n- path: /a\n  permissions: '0999'\n", 4, 3, "`write_files[0].permissions`: \"0999\" is not an octal file mode"),
        ("#cloud-config\nwrite_files:\n- path: /a\n  permissions: rw-r--r--\n", 4, 3, "not an octal file mode"),
        ("#cloud-config\nwrite_files:\n- path: /a\n  encoding: rot13\n", 4, 3, "unknown encoding \"rot13\""),
        ("#cloud-config\nwrite_files:\n- path: /a\n  encoding: b64\n  content: '!!!'\n", 5, 3, "not valid base64"),
        ("#cloud-config\nwrite_files:\n- path: /a\n  owner: 'a b:c'\n", 4, 3, "is not `user:group`"),
        ("#cloud-config\nkiln:\n  update:\n    reboot-strategy: sometimes\n", 4, 5, "unknown reboot strategy \"sometimes\""),
        ("#cloud-config\nkiln:\n  locksmith:\n    window-start: Thu 25:00\n    window-length: 1h\n", 4, 5, "not a window start"),
        ("#cloud-config\nkiln:\n  locksmith:\n    window-start: Thu 04:00\n    window-length: forever\n", 5, 5, "not a window length like 1h"),
        ("#cloud-config\nkiln:\n  locksmith:\n    window-start: Thu 04:00\n", 4, 5, "needs both"),
        ("#cloud-config\nkiln:\n  units:\n    - name: foo\n", 4, 7, "not a unit name"),
        ("#cloud-config\nkiln:\n  units:\n    - name: a.service\n      command: explode\n", 5, 7, "unknown command"),
        ("#cloud-config\nkiln:\n  network:\n    - name: eth0\n      address: 10.0.0.5\n", 5, 7, "CIDR"),
        ("#cloud-config\nkiln:\n  network:\n    - name: eth0\n      gateway: 10.0.0.300\n", 5, 7, "not an IP address"),
        ("#cloud-config\nkiln:\n  network:\n    - mac: 52:54:00:zz:00:01\n", 4, 7, "not a MAC address"),
        ("#cloud-config\nkiln:\n  network:\n    - address: 10.0.0.5/24\n", 4, 7, "needs a `name`"),
        ("#cloud-config\nusers:\n  - gecos: x\n", 3, 5, "a user needs a `name`"),
        ("#cloud-config\nhostname: -bad-\n", 2, 1, "not a valid host name"),
        ("#cloud-config\n- a\n- b\n", 2, 1, "expected a mapping, found a list"),
    ];
    for (doc, line, column, what) in cases {
        let e = error(doc);
        let shown = e.to_string();
        assert!(shown.contains(what), "{doc:?}: {shown}");
        assert_eq!((e.line, e.column), (*line, *column), "{doc:?}: {shown}");
        assert!(
            shown.starts_with(&format!("cloud-config line {line}, column {column}: ")),
            "{shown}"
        );
    }
}

#[test]
fn error_message_shape() {
    let e = error("#cloud-config\ncoreos:\n  units:\n    - command: start\n");
    assert_eq!(
        e.to_string(),
        "cloud-config line 4, column 7: `coreos.units[0]`: a unit needs a `name` (Kiln does not skip a nameless unit as coreos-cloudinit did): add `name:` with the unit's file name, e.g. `name: etcd.service`, or remove the entry"
    );
    assert_eq!(e.key.as_deref(), Some("coreos.units[0]"));
}

#[test]
fn only_cloud_config_documents() {
    let e = error("#!/bin/bash\necho hi\n");
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.to_string().contains("it is a script"), "{e}");
    assert!(error("{\"ignition\": {}}").to_string().contains("Ignition"));
    assert!(error("hostname: a\n")
        .to_string()
        .contains("does not begin with `#cloud-config`"));
    // A byte-order mark and trailing blanks on the header line are fine; so is an empty body.
    assert_eq!(parsed("\u{feff}#cloud-config  \r\n").config.hostname, None);
    let e = parse_bytes(b"#cloud-config\nhostname: \xff\n").unwrap_err();
    assert_eq!((e.line, e.column), (2, 11));
    assert!(matches!(e.kind, ErrorKind::NotUtf8 { offset: 24 }));
}

#[test]
fn unknown_keys_and_old_names_are_warnings() {
    let doc = "#cloud-config\nhostname: a\nmanage_etc_hosts: localhost\nusers:\n  - name: bob\n    lock_passwd: true\ncoreos:\n  update:\n    reboot-strategy: best-effort\n  etcd2:\n    name: x\n    addr: $private_ipv4:4001\n    advertise-client-urls: http://$private_ipv4:2379\n";
    let p = parsed(doc);
    let w = warned_keys(&p);
    assert_eq!(
        w,
        [
            (6, "users[0].lock_passwd"),
            (9, "coreos.update.reboot-strategy"),
            (12, "coreos.etcd2.addr"),
        ]
    );
    // best-effort with etcd configured means etcd-lock, as on CoreOS.
    assert_eq!(
        p.config.kiln.update_agent.unwrap().settings.reboot_strategy,
        RebootStrategy::EtcdLock
    );
    let p = parsed("#cloud-config\nkiln:\n  update:\n    reboot-strategy: reboot\n");
    assert_eq!(
        p.config.kiln.update_agent.unwrap().settings.reboot_strategy,
        RebootStrategy::Immediate
    );
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn yaml_1_1_booleans_and_spellings() {
    let doc = "#cloud-config\nhostname: yes\nkiln:\n  units:\n    - name: a.service\n      enable: yes\n      runtime: on\n      mask: off\n  etcd:\n    name: n\n    enable_v2: yes\nwrite_files:\n  - path: /p\n    permissions: 644\n    content: 0644\n    append: y\n";
    let c = parsed(doc).config;
    // `yes` is a string where a string is expected (a host name), a boolean where one is.
    assert_eq!(c.hostname.as_deref(), Some("yes"));
    let u = &c.kiln.units[0];
    assert!(u.enable && u.runtime && !u.mask);
    assert_eq!(c.kiln.etcd.unwrap().get("enable-v2"), Some("true"));
    assert_eq!(c.write_files[0].permissions, Some(0o644));
    assert_eq!(c.write_files[0].content, b"0644");
    assert!(c.write_files[0].append);
}

#[test]
fn etcd_pre_vote_is_on_unless_the_document_turns_it_off() {
    let env = |doc: &str| crate::systemd::etcd_env(parsed(doc).config.kiln.etcd.as_ref().unwrap());
    assert!(env("#cloud-config\nkiln:\n  etcd:\n    name: n\n").contains("\nETCD_PRE_VOTE=true\n"));
    let off = env("#cloud-config\nkiln:\n  etcd:\n    name: n\n    pre-vote: false\n");
    assert!(off.contains("\nETCD_PRE_VOTE=false\n"), "{off}");
    assert!(!off.contains("ETCD_PRE_VOTE=true"), "{off}");
}

#[test]
fn groups_as_comma_string_and_duplicate_keys() {
    let doc = "#cloud-config\nhostname: a\nhostname: b\nusers:\n  - name: x\n    groups: sudo, docker\n    ssh_authorized_keys: [k1]\n    ssh-authorized-keys: [k2]\n";
    let p = parsed(doc);
    assert_eq!(p.config.hostname.as_deref(), Some("b"));
    assert_eq!(p.config.users[0].groups, ["sudo", "docker"]);
    assert_eq!(p.config.users[0].ssh_authorized_keys, ["k2"]);
    let w = warned_keys(&p);
    assert_eq!(w, [(2, "hostname"), (7, "users[0].ssh_authorized_keys")]);
}

// ---------------------------------------------------------------------------------------
// Applying.

/// A root like Kiln's ROOT after the build: base accounts, an `etcd` user, Debian's etcd unit.
fn make_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in [
        "etc",
        "root",
        "usr/lib/systemd/system",
        "usr/sbin",
        "usr/bin",
        "var/lib/etcd",
        "home",
        "etc/skel",
        "run",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    fs::write(r.join("usr/bin/bash"), "").unwrap();
    fs::write(r.join("usr/sbin/nologin"), "").unwrap();
    fs::write(r.join("etc/skel/.profile"), "# skel\n").unwrap();
    let passwd =
        "root:x:0:0:root:/root:/bin/bash\netcd:x:110:115::/var/lib/etcd:/usr/sbin/nologin\n";
    let group = "root:x:0:\nsudo:x:27:\nshadow:x:42:\netcd:x:115:\n";
    let shadow = "root:*:19000:0:99999:7:::\netcd:*:19000:0:99999:7:::\n";
    let gshadow = "root:*::\nsudo:*::\nshadow:*::\netcd:!::\n";
    fs::write(r.join("etc/passwd"), passwd).unwrap();
    fs::write(r.join("etc/group"), group).unwrap();
    fs::write(r.join("etc/shadow"), shadow).unwrap();
    fs::write(r.join("etc/gshadow"), gshadow).unwrap();
    for f in ["etc/shadow", "etc/gshadow"] {
        fs::set_permissions(
            r.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(r.join(f), Some(0), Some(42)).unwrap();
    }
    fs::write(
        r.join("usr/lib/systemd/system/etcd.service"),
        DEBIAN_ETCD_SERVICE,
    )
    .unwrap();
    dir
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// (mode, uid, gid) of a file or directory.
fn meta(root: &Path, p: &str) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn link(root: &Path, p: &str) -> String {
    fs::read_link(root.join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn systemctl_state(root: &Path, unit: &str) -> String {
    let systemctl = require_tool("systemctl", "systemd");
    let out = Command::new(systemctl)
        .arg(format!("--root={}", root.display()))
        .args(["is-enabled", unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every path under `root` with its type, mode, owner and content or link target.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else {
                format!("file {:?}", fs::read(&p).unwrap())
            };
            let key = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                key,
                format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
        }
    }
    out
}

#[test]
fn apply_coreos_document() {
    let dir = make_root();
    let r = dir.path();
    let cfg = parsed(COREOS_DOC).config;
    let report = apply(&cfg, r, &ApplyOptions::default()).unwrap();
    assert!(report.all_ok(), "{report}");

    assert_eq!(read(r, "etc/hostname"), "node-1\n");
    assert_eq!(meta(r, "etc/hostname"), (0o644, 0, 0));

    // Accounts: core at 500 (absent from the image), elroy from 1000, docker created.
    let passwd = read(r, "etc/passwd");
    assert!(passwd.ends_with("core:x:500:500:Kiln Admin:/home/core:/bin/bash\nelroy:x:1000:1000::/home/elroy:/bin/bash\n"), "{passwd}");
    let group = read(r, "etc/group");
    assert_eq!(group, "root:x:0:\nsudo:x:27:elroy\nshadow:x:42:\netcd:x:115:\ncore:x:500:\nelroy:x:1000:\ndocker:x:999:elroy\n");
    let shadow = read(r, "etc/shadow");
    assert!(shadow.ends_with("core:*:::::::\nelroy:$6$5s2u6/jR$un0AvWnqilcgaNB3Mkxd5yYv6mTlWfOoCYHZmfi3LDKVltj.E8XNKEcwWm:::::::\n"), "{shadow}");
    assert_eq!(meta(r, "etc/shadow"), (0o640, 0, 42));
    assert!(read(r, "etc/gshadow").ends_with("core:!::\nelroy:!::\ndocker:!::elroy\n"));
    assert_eq!(meta(r, "home/core"), (0o755, 500, 500));
    assert_eq!(read(r, "home/core/.profile"), "# skel\n");
    assert_eq!(meta(r, "home/core/.profile"), (0o644, 500, 500));
    assert_eq!(meta(r, "home/core/.ssh"), (0o700, 500, 500));
    assert_eq!(meta(r, "home/core/.ssh/authorized_keys"), (0o600, 500, 500));
    assert_eq!(
        read(r, "home/core/.ssh/authorized_keys"),
        format!("{}\n", cfg.ssh_authorized_keys[0])
    );
    assert_eq!(
        meta(r, "home/elroy/.ssh/authorized_keys"),
        (0o600, 1000, 1000)
    );
    assert_eq!(
        read(r, "home/elroy/.ssh/authorized_keys"),
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0 elroy@example\n"
    );
    // The reference checkers agree the databases are consistent.
    for tool in ["pwck", "grpck"] {
        let bin = require_tool(tool, "passwd");
        let out = Command::new(bin)
            .args(["-r", "-R"])
            .arg(r)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // write_files: contents decoded, modes and owners resolved through the new accounts.
    assert_eq!(read(r, "etc/resolv.conf"), "nameserver 192.0.2.53\n");
    assert_eq!(meta(r, "etc/resolv.conf"), (0o644, 0, 0));
    assert_eq!(read(r, "home/core/secret.txt"), "secret\n");
    assert_eq!(meta(r, "home/core/secret.txt"), (0o600, 500, 500));
    assert_eq!(read(r, "opt/blob.txt"), "hello from gzip\n");
    assert_eq!(meta(r, "opt"), (0o755, 0, 0));

    // etcd: environment for Debian's unit, etcdctl defaults, data dir, enabled with its alias.
    assert_eq!(
        read(r, "etc/default/etcd"),
        "# Written by kiln-config from the cloud-config; read by etcd.service.\n\
         ETCD_ADVERTISE_CLIENT_URLS=http://10.0.0.11:2379\n\
         ETCD_DATA_DIR=/var/lib/etcd/default\n\
         ETCD_DISCOVERY=https://discovery.example/6a28e078895c5ec737174db2419bb2f3\n\
         ETCD_DISCOVERY_FALLBACK=exit\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.0.0.11:2380\n\
         ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379,http://0.0.0.0:4001\n\
         ETCD_LISTEN_PEER_URLS=http://10.0.0.11:2380\n\
         ETCD_NAME=node-1\n\
         ETCD_PRE_VOTE=true\n"
    );
    assert_eq!(
        read(r, "etc/environment"),
        "ETCDCTL_API=3\nETCDCTL_ENDPOINTS=http://10.0.0.11:2379\n"
    );
    assert_eq!(meta(r, "var/lib/etcd/default"), (0o700, 110, 115));
    let drop_in = read(r, "etc/systemd/system/etcd.service.d/10-kiln.conf");
    assert!(
        drop_in.contains("Restart=on-failure\n")
            && drop_in.contains("After=network-online.target kiln-config-addresses.service\n")
            && drop_in.contains("ExecStartPre=-+/usr/bin/kiln-etcd check-discovery\n"),
        "{drop_in}"
    );
    assert_eq!(
        link(r, "etc/systemd/system/multi-user.target.wants/etcd.service"),
        "/usr/lib/systemd/system/etcd.service"
    );
    assert_eq!(
        link(r, "etc/systemd/system/etcd2.service"),
        "/usr/lib/systemd/system/etcd.service"
    );
    assert_eq!(systemctl_state(r, "etcd.service"), "enabled");

    // update.conf, read back by a real TOML parser.
    let conf = read(r, "etc/kiln/update.conf");
    assert!(conf.ends_with("channel = \"stable\"\nreboot_strategy = \"etcd-lock\"\nwindow_start = \"Thu 04:00\"\nwindow_length = \"1h\"\n"), "{conf}");
    let python = require_tool("python3", "python3");
    let out = Command::new(python)
        .args(["-c", "import sys,tomllib; d=tomllib.load(open(sys.argv[1],'rb')); print(d['channel'], d['reboot_strategy'], d['window_start'], d['window_length'], sep='|')"])
        .arg(r.join("etc/kiln/update.conf"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stable|etcd-lock|Thu 04:00|1h\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Units: content, enable links from [Install], drop-ins, the start list.
    assert!(read(r, "etc/systemd/system/docker-tcp.socket").contains("ListenStream=2375\n"));
    assert_eq!(
        link(
            r,
            "etc/systemd/system/sockets.target.wants/docker-tcp.socket"
        ),
        "/etc/systemd/system/docker-tcp.socket"
    );
    assert_eq!(systemctl_state(r, "docker-tcp.socket"), "enabled");
    assert!(read(
        r,
        "etc/systemd/system/docker.service.d/50-insecure-registry.conf"
    )
    .starts_with("[Service]\n"));
    assert_eq!(
        read(r, "var/lib/kiln/units-to-start"),
        "start etcd2.service\nstart docker-tcp.socket\n"
    );

    // The record.
    assert_eq!(read(r, "var/lib/kiln/cloud-config.applied"), COREOS_DOC);
    assert_eq!(meta(r, "var/lib/kiln/cloud-config.applied"), (0o600, 0, 0));
    let rep = read(r, "var/lib/kiln/cloud-config.report");
    assert!(
        rep.starts_with("status: ok\nhostname: ok\nusers: ok\n"),
        "{rep}"
    );
    assert_eq!(crate::Status::of_report(&rep), Some(crate::Status::Applied));
    assert!(rep.contains("record: ok\n"));

    // Idempotent: a second apply leaves every file, mode, owner and link as it was. The
    // report differs only in its notes (nothing is "created" the second time).
    let report_file = "var/lib/kiln/cloud-config.report";
    let mut before = snapshot(r);
    let again = apply(&cfg, r, &ApplyOptions::default()).unwrap();
    assert!(again.all_ok(), "{again}");
    let mut after = snapshot(r);
    assert!(before.remove(report_file).is_some() && after.remove(report_file).is_some());
    let names = |rep: &ApplyReport| {
        rep.steps
            .iter()
            .map(|s| (s.name, s.is_ok()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&report), names(&again));
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        changed.is_empty() && before.len() == after.len(),
        "changed on the second apply: {changed:?}"
    );
}

#[test]
fn apply_kiln_units_network_and_masks() {
    let dir = make_root();
    let r = dir.path();
    let run = tempfile::tempdir().unwrap();
    fs::write(
        r.join("usr/lib/systemd/system/getty@.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    )
    .unwrap();
    fs::write(
        r.join("usr/lib/systemd/system/vendor.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nRequiredBy=multi-user.target\n",
    )
    .unwrap();
    let doc = "#cloud-config\nkiln:\n  units:\n    - name: getty@ttyS0.service\n      enable: true\n    - name: vendor.service\n      enable: true\n    - name: bad.service\n      mask: true\n    - name: tmp.service\n      runtime: true\n      content: \"[Service]\\nExecStart=/bin/true\\n\"\n    - name: 20-lan.network\n      content: \"[Match]\\nName=lan0\\n\"\n    - name: missing.service\n      enable: true\n  network:\n    - name: eth0\n      address: [10.0.0.5/24, \"2001:db8::5/64\"]\n      gateway: 10.0.0.1\n      dns: [10.0.0.2, 10.0.0.3]\n    - match: en*\n      address: 192.0.2.7/24\n    - mac: 52:54:00:AB:00:01\n      address: 10.1.0.1/24\n      ipv6-accept-ra: false\n";
    let cfg = parsed(doc).config;
    let report = apply(
        &cfg,
        r,
        &ApplyOptions {
            run_dir: Some(run.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();

    // The one unit that cannot be enabled fails its step; the others and later steps ran.
    let units = report.step("units").unwrap();
    assert!(
        units
            .error
            .as_deref()
            .unwrap()
            .contains("cannot enable missing.service"),
        "{report}"
    );
    assert!(report.step("network").unwrap().is_ok() && report.step("record").unwrap().is_ok());
    assert!(read(r, "var/lib/kiln/cloud-config.report")
        .contains("units: FAILED: missing.service: cannot enable"));

    assert_eq!(
        link(
            r,
            "etc/systemd/system/getty.target.wants/getty@ttyS0.service"
        ),
        "/usr/lib/systemd/system/getty@.service"
    );
    assert_eq!(systemctl_state(r, "getty@ttyS0.service"), "enabled");
    assert_eq!(
        link(
            r,
            "etc/systemd/system/multi-user.target.requires/vendor.service"
        ),
        "/usr/lib/systemd/system/vendor.service"
    );
    assert_eq!(systemctl_state(r, "vendor.service"), "enabled");
    assert_eq!(link(r, "etc/systemd/system/bad.service"), "/dev/null");
    assert_eq!(systemctl_state(r, "bad.service"), "masked");
    assert_eq!(
        fs::read_to_string(run.path().join("systemd/system/tmp.service")).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
    assert!(!r.join("etc/systemd/system/tmp.service").exists());
    assert_eq!(
        read(r, "etc/systemd/network/20-lan.network"),
        "[Match]\nName=lan0\n"
    );
    assert_eq!(
        read(r, "etc/systemd/network/10-kiln-eth0.network"),
        "# Written by kiln-config from the cloud-config.\n[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.5/24\nAddress=2001:db8::5/64\nGateway=10.0.0.1\nDNS=10.0.0.2\nDNS=10.0.0.3\n"
    );
    assert!(read(r, "etc/systemd/network/10-kiln-en_.network").contains("Name=en*\n"));
    assert_eq!(
        read(r, "etc/systemd/network/10-kiln-52_54_00_ab_00_01.network"),
        "# Written by kiln-config from the cloud-config.\n[Match]\nMACAddress=52:54:00:ab:00:01\n\n[Network]\nAddress=10.1.0.1/24\nIPv6AcceptRA=no\n"
    );
    // No `command:` anywhere: no start list.
    assert!(!r.join("var/lib/kiln/units-to-start").exists());
}

#[test]
fn a_failing_write_does_not_stop_the_other_steps() {
    let dir = make_root();
    let r = dir.path();
    let doc = "#cloud-config\nhostname: box\nssh_authorized_keys: [ssh-ed25519 AAAA k]\nwrite_files:\n  - path: /etc/hostname/below-a-file\n    content: x\n  - path: /etc/ok\n    content: y\n  - path: /etc/owned\n    owner: nobody-here\n    content: z\nkiln:\n  update:\n    reboot-strategy: off\n";
    let cfg = parsed(doc).config;
    let report = apply(&cfg, r, &ApplyOptions::default()).unwrap();
    let wf = report.step("write_files").unwrap().error.clone().unwrap();
    assert!(wf.contains("/etc/hostname/below-a-file:"), "{wf}");
    assert!(
        wf.contains("/etc/owned: owner nobody-here is not in /etc/passwd"),
        "{wf}"
    );
    assert_eq!(read(r, "etc/ok"), "y");
    assert_eq!(read(r, "etc/hostname"), "box\n");
    assert_eq!(
        read(r, "home/core/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA k\n"
    );
    assert!(read(r, "etc/kiln/update.conf").ends_with("reboot_strategy = \"off\"\n"));
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| !s.is_ok())
        .map(|s| s.name)
        .collect();
    assert_eq!(failed, ["write_files"]);
    assert!(report
        .to_string()
        .contains("write_files: FAILED: /etc/hostname/below-a-file:"));
    // The report file says so on its first line, for kiln-cloud-config.service.
    let rep = read(r, "var/lib/kiln/cloud-config.report");
    assert_eq!(
        crate::Status::of_report(&rep),
        Some(crate::Status::Failed),
        "{rep}"
    );
    let rejected = crate::rejected_report("fw_cfg", "line 2, column 1: bad");
    assert_eq!(
        crate::Status::of_report(&rejected),
        Some(crate::Status::Rejected)
    );
    assert!(rejected.contains("cloud-config from fw_cfg was NOT applied: line 2, column 1: bad"));
}

/// The image's unit for a worker's etcd, as the overlay ships it.
const GATEWAY_UNIT: &str =
    include_str!("../../overlays/usr/lib/systemd/system/kiln-etcd-gateway.service");

#[test]
fn a_worker_runs_the_etcd_gateway_and_no_member() {
    let dir = make_root();
    let r = dir.path();
    fs::write(
        r.join("usr/lib/systemd/system/kiln-etcd-gateway.service"),
        GATEWAY_UNIT,
    )
    .unwrap();
    let doc = "#cloud-config\ncoreos:\n  etcd2:\n    proxy: on\n    discovery: http://10.0.2.2:8470/discovery/0123abcd\n    advertise-client-urls: http://10.77.0.4:2379\n";
    let p = parsed(doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let report = apply(&p.config, r, &ApplyOptions::default()).unwrap();
    assert!(report.all_ok(), "{report}");
    // The gateway reads the members from etcd's own settings; no fallback for a proxy.
    assert_eq!(
        read(r, "etc/default/etcd"),
        "# Written by kiln-config from the cloud-config; read by etcd.service.\n\
         ETCD_ADVERTISE_CLIENT_URLS=http://10.77.0.4:2379\n\
         ETCD_DATA_DIR=/var/lib/etcd/default\n\
         ETCD_DISCOVERY=http://10.0.2.2:8470/discovery/0123abcd\n\
         ETCD_DISCOVERY_FALLBACK=exit\n\
         ETCD_PRE_VOTE=true\n"
    );
    // etcdctl talks to the gateway, not to the address a member would advertise.
    assert_eq!(
        read(r, "etc/environment"),
        "ETCDCTL_API=3\nETCDCTL_ENDPOINTS=http://127.0.0.1:2379\n"
    );
    assert_eq!(systemctl_state(r, "kiln-etcd-gateway.service"), "enabled");
    assert_eq!(systemctl_state(r, "etcd.service"), "disabled");
    assert!(!r
        .join(kiln_contract::paths::under(
            kiln_contract::paths::ETCD_MEMBER_ENABLED
        ))
        .exists());
    assert!(!r
        .join("etc/systemd/system/etcd.service.d/10-kiln.conf")
        .exists());
    // CoreOS documents start `etcd2.service`: on a worker that is the gateway.
    assert_eq!(
        link(r, "etc/systemd/system/etcd2.service"),
        "/usr/lib/systemd/system/kiln-etcd-gateway.service"
    );
    assert!(report.to_string().contains("etcd proxy"), "{report}");
}

#[test]
fn etcd_proxy_and_fallback_settings_that_cannot_work_are_said() {
    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    proxy: readonly\n    initial-cluster: a=http://10.0.0.1:2380\n");
    assert!(
        w.iter().any(|(l, m)| *l == 4 && m.contains("read as `on`")),
        "{w:?}"
    );
    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    proxy: on\n");
    assert!(
        w.iter()
            .any(|(l, m)| *l == 4 && m.contains("needs the cluster's members")),
        "{w:?}"
    );
    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    discovery: http://d.example/x\n    discovery-fallback: proxy\n");
    assert!(
        w.iter().any(|(l, m)| *l == 5 && m.contains("proxy: on")),
        "{w:?}"
    );
    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    initial-cluster: a=http://10.0.0.1:2380\n    discovery: http://d.example/x\n");
    assert!(
        w.iter()
            .any(|(l, m)| *l == 5 && m.contains("more than one of initial-cluster, discovery")),
        "{w:?}"
    );
    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    proxy: sometimes\n");
    assert!(
        w.iter()
            .any(|(l, m)| *l == 4 && m.contains("none of `on`, `off`, `readonly`; read as `off`")),
        "{w:?}"
    );
    // `off` is a member, as without the key.
    let p = parsed("#cloud-config\ncoreos:\n  etcd2:\n    proxy: off\n    name: a\n");
    assert!(!p.config.kiln.etcd.unwrap().proxy);
}

#[test]
fn writes_stay_inside_the_root() {
    let dir = make_root();
    let r = dir.path();
    let outside = tempfile::tempdir().unwrap();
    // A link pointing outside, as a hostile or careless image could have.
    std::os::unix::fs::symlink(outside.path(), r.join("etc/escape")).unwrap();
    let doc = "#cloud-config\nwrite_files:\n  - path: /etc/escape/f\n    content: inside\n    append: true\n";
    let cfg = parsed(doc).config;
    let report = apply(&cfg, r, &ApplyOptions::default()).unwrap();
    assert!(report.all_ok(), "{report}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote outside the root"
    );
    let inside = r.join(outside.path().strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read_to_string(inside).unwrap(), "inside");
    // Appending the same content again does not double it.
    apply(&cfg, r, &ApplyOptions::default()).unwrap();
    let inside = r.join(outside.path().strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read_to_string(inside).unwrap(), "inside");
}

#[test]
fn apply_needs_a_root_directory() {
    let e = apply(
        &CloudConfig::default(),
        Path::new("/nonexistent/kiln-root"),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/kiln-root"));
}

/// Every `update:` and `locksmith:` key, under the names users write: the document renders an
/// `update.conf` that the agent's reader (`Settings::load`, over the image's defaults) reads back
/// to exactly these values.
#[test]
fn every_agent_setting_goes_from_the_cloud_config_to_the_agent() {
    use kiln_contract::update_conf::{defaults_file, Settings, Window, KEYS};
    use std::time::Duration;
    let doc =
        "#cloud-config\ncoreos:\n  update:\n    server: http://10.0.0.1:8000/v1/update/\n    \
        app-id: 0d1a2b3c-0000-4000-8000-000000000001\n    group: beta\n    \
        reboot-strategy: fleet-lock\n    check-interval: 20m\n    http-timeout: 45\n    \
        health-units: [etcd.service, docker.service]\n    health-timeout: 5m\n    \
        allow-downgrade: true\n    ca-file: /etc/kiln/update-ca.pem\n  \
        locksmith:\n    endpoint: http://10.0.0.1:2379,http://10.0.0.2:2379\n    \
        group: web\n    window-start: Sun 03:30\n    window-length: 2h\n    \
        etcd-lock-key: /site/reboot\n    etcd-lock-ttl: 30m\n    lock-retry: 10s\n    \
        lock-install: yes\n    fleetlock-url: http://10.0.0.9:8080\n";
    let p = parsed(doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let given = p.config.kiln.update_agent.as_ref().unwrap();
    let missing: Vec<&str> = KEYS
        .iter()
        .filter(|k| !given.keys.contains(k.name))
        .map(|k| k.name)
        .collect();
    assert!(missing.is_empty(), "the document leaves out {missing:?}");

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    apply(&p.config, r, &ApplyOptions::default()).unwrap();
    let usr = r.join("defaults.conf");
    fs::write(&usr, defaults_file()).unwrap();
    let (read_back, warnings) = Settings::load(&[&usr, &r.join("etc/kiln/update.conf")]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let expected = Settings {
        server: Some("http://10.0.0.1:8000/v1/update/".into()),
        channel: Some("beta".into()),
        app_id: Some("0d1a2b3c-0000-4000-8000-000000000001".into()),
        reboot_strategy: RebootStrategy::FleetLock,
        window: Some(Window::parse("Sun 03:30", "2h").unwrap()),
        check_interval: Duration::from_secs(20 * 60),
        http_timeout: Duration::from_secs(45),
        etcd_endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
        etcd_lock_key: "/site/reboot".into(),
        etcd_lock_ttl: Duration::from_secs(30 * 60),
        lock_retry: Duration::from_secs(10),
        lock_install: true,
        lock_group: "web".into(),
        fleetlock_url: Some("http://10.0.0.9:8080".into()),
        health_units: vec!["etcd.service".into(), "docker.service".into()],
        health_timeout: Duration::from_secs(5 * 60),
        allow_downgrade: true,
        ca_file: Some("/etc/kiln/update-ca.pem".into()),
    };
    assert_eq!(read_back, expected);
    assert_eq!(read_back, given.settings);
}

/// locksmith's TLS keys are known, and said to be unsupported rather than unknown.
#[test]
fn locksmith_tls_keys_are_named_as_unsupported() {
    let p = parsed("#cloud-config\ncoreos:\n  locksmith:\n    endpoint: http://e:2379\n    etcd_cafile: /etc/ssl/ca.pem\n");
    let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("coreos.locksmith.etcd_cafile") && w[0].contains("not supported yet"),
        "{w:?}"
    );
    assert!(!w[0].contains("unknown key"), "{w:?}");
}

/// The README's cloud-config example whose `coreos:` section begins with `section`.
fn readme_example(section: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let start = readme
        .find(&format!("```yaml\n#cloud-config\ncoreos:\n  {section}"))
        .unwrap_or_else(|| panic!("the README's {section} example"));
    let doc = &readme[start + "```yaml\n".len()..];
    &doc[..doc.find("```").unwrap()]
}

/// The README's example of the address variables is CoreOS's, read without a warning.
#[test]
fn the_readmes_address_example_is_read_without_a_warning() {
    let doc = readme_example("etcd2:");
    assert!(crate::addresses::uses_addresses(doc));
    let p = parsed(doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        p.config.kiln.addresses.private_interface.as_deref(),
        Some("ens4")
    );
    let root = make_root();
    let done = apply_user_data(
        doc.as_bytes(),
        "README",
        root.path(),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert!(
        done.addresses_pending && done.status == Status::Applied,
        "{}",
        done.report
    );
    let e = error("#cloud-config\ncoreos:\n  addresses:\n    private-interface: a/b\n");
    assert!(e.to_string().contains("not an interface name"), "{e}");
}

/// The README's static interface reaches its networkd file, `ipv6-accept-ra:` included; the
/// key takes a boolean and names itself otherwise.
#[test]
fn the_readmes_network_example_writes_its_networkd_file() {
    let p = parsed(readme_example("network:"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let root = make_root();
    apply(&p.config, root.path(), &ApplyOptions::default()).unwrap();
    assert_eq!(
        read(root.path(), "etc/systemd/network/10-kiln-52_54_00_77_00_01.network"),
        "# Written by kiln-config from the cloud-config.\n[Match]\nMACAddress=52:54:00:77:00:01\n\n[Network]\nAddress=10.77.0.1/24\nGateway=10.77.0.254\nDNS=10.77.0.53\nIPv6AcceptRA=no\n"
    );
    // As every bad `network:` entry: the section is left out, the rest of the document applies.
    let bad = parsed(
        "#cloud-config\ncoreos:\n  network:\n    - name: eth1\n      ipv6-accept-ra: maybe\n",
    );
    assert!(bad.config.kiln.network.is_empty());
    assert!(
        bad.warnings
            .iter()
            .map(ToString::to_string)
            .any(|w| w.contains("coreos.network[0].ipv6-accept-ra") && w.contains("true or false")),
        "{:?}",
        bad.warnings
    );
}

/// The README's example of the update settings parses without a warning and sets every key.
#[test]
fn the_readmes_update_example_sets_every_agent_setting() {
    use kiln_contract::update_conf::KEYS;
    let p = parsed(readme_example("update:"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let given = p.config.kiln.update_agent.unwrap();
    let missing: Vec<&str> = KEYS
        .iter()
        .map(|k| k.name)
        .filter(|k| !given.keys.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "the README's example leaves out {missing:?}"
    );
}

/// The README's fleet example parses without a warning and reaches fleet.conf.
#[test]
fn the_readmes_fleet_example_is_read_without_a_warning() {
    let p = parsed(readme_example("fleet:"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let fleet = p.config.kiln.fleet.unwrap();
    assert_eq!(fleet.values.len(), 4, "{fleet:?}");
}

/// The README's flannel example parses without a warning, waits for the machine's address,
/// and reaches the daemon's options.
#[test]
fn the_readmes_flannel_example_is_read_without_a_warning() {
    let doc = readme_example("flannel:");
    assert!(crate::addresses::uses_addresses(doc));
    let doc = doc.replace("$private_ipv4", "10.0.0.11");
    let p = parsed(&doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let text = p.config.kiln.flannel.unwrap().render();
    let o = daemon_options(&text);
    assert_eq!(o.interface.as_deref(), Some("10.0.0.11"));
    assert_eq!(o.prefix, "/coreos.com/network");
    assert!(o.network.unwrap().contains("10.5.0.0/16"));
}

/// The README's worker and new-member examples parse without a warning: the worker is a proxy,
/// the new member joins an existing cluster.
#[test]
fn the_readmes_worker_and_new_member_examples_are_read_without_a_warning() {
    let p = parsed(readme_example("etcd2:\n    proxy: on"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let etcd = p.config.kiln.etcd.unwrap();
    assert!(etcd.proxy && etcd.get("discovery").is_some());
    let p = parsed(readme_example("etcd2:\n    name: node4"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let etcd = p.config.kiln.etcd.unwrap();
    assert!(!etcd.proxy);
    assert_eq!(etcd.get("initial-cluster-state"), Some("existing"));
}

// ---------------------------------------------------------------------------------------
// What coreos-cloudinit accepts: leniency where it is lenient, its checks, its encodings.

fn warnings_of(doc: &str) -> Vec<(u64, String)> {
    parsed(doc)
        .warnings
        .iter()
        .map(|w| (w.line, w.to_string()))
        .collect()
}

#[test]
fn a_wrong_type_is_a_warning_at_its_key_and_the_rest_is_applied() {
    let cases: &[(&str, u64, &str)] = &[
        ("#cloud-config\nhostname:\n  name: x\nusers:\n  - name: bob\n", 2, "`hostname`: expected a string, found a mapping"),
        ("#cloud-config\nusers:\n  true\nhostname: h\n", 2, "`users`: expected a list, found a scalar; write each item"),
        ("#cloud-config\nssh_authorized_keys: true\nhostname: h\n", 2, "`ssh_authorized_keys`: expected a list of strings, found a scalar"),
        ("#cloud-config\nssh_authorized_keys: ssh-ed25519 AAAA k\nhostname: h\n", 2, "expected a list of strings"),
        ("#cloud-config\ncoreos:\n  - hello\nhostname: h\n", 2, "`coreos`: expected a mapping, found a list"),
        ("#cloud-config\ncoreos:\n  units:\n    - enable:\n        bad:\n      name: a.service\nhostname: h\n", 4, "`coreos.units[0].enable`: expected true or false, found a mapping"),
        ("#cloud-config\nkiln:\n  units:\n    - name: a.service\n      enable: maybe\nhostname: h\n", 5, "expected true or false, found \"maybe\""),
    ];
    for (doc, line, what) in cases {
        let p = parsed(doc);
        let w: Vec<(u64, String)> = p.warnings.iter().map(|w| (w.line, w.to_string())).collect();
        assert!(
            w.iter().any(|(l, m)| l == line
                && m.contains(what)
                && m.contains("the rest of the document is applied")),
            "{doc:?}: {w:?}"
        );
    }
    // What was not wrong is applied.
    let p = parsed(cases[0].0);
    assert_eq!(
        (p.config.hostname.as_deref(), p.config.users.len()),
        (None, 1)
    );
    let p = parsed(cases[2].0);
    assert!(p.config.ssh_authorized_keys.is_empty());
    assert_eq!(p.config.hostname.as_deref(), Some("h"));
    let p = parsed(cases[5].0);
    assert!(
        p.config.kiln.units.is_empty(),
        "the unit with the bad value is left out"
    );
    assert_eq!(p.config.hostname.as_deref(), Some("h"));
    // Other errors still refuse the document, at the key's line for a value below it.
    let e = error("#cloud-config\nhostname:\n  -bad-\n");
    assert_eq!((e.line, e.column), (2, 1), "{e}");
}

#[test]
fn binary_content_and_every_coreos_encoding_decode() {
    // `printf 'hello\n' | gzip -n | base64`
    let gz = "H4sIAAAAAAAAA8tIzcnJ5wIAIDA6NgYAAAA=";
    let doc = format!(
        "#cloud-config\nwrite_files:\n  - path: /a\n    encoding: gzip\n    content: !!binary |\n      {gz}\n  - path: /b\n    encoding: gz\n    content: !!binary {gz}\n  - path: /c\n    content: !!binary aGVsbG8K\n  - path: /d\n    encoding: gz+base64\n    content: {gz}\n  - path: /e\n    encoding: base64\n    content: aGVsbG8K\n  - path: /f\n    encoding: b64\n    content: aGVsbG8K\n  - path: /g\n    encoding: gzip+b64\n    content: {gz}\n"
    );
    let p = parsed(&doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    for f in &p.config.write_files {
        assert_eq!(f.content, b"hello\n", "{}", f.path);
    }
    // !!binary then base64: the binary's bytes are the base64 text (coreos-cloudinit's test).
    let e = error("#cloud-config\nwrite_files:\n  - path: /a\n    encoding: base64\n    content: !!binary aGVsbG8K\n");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.to_string().contains("not valid base64"), "{e}");
    // Binary that is not text, where text is wanted: the library's own hints never show.
    let e = error("#cloud-config\nhostname: !!binary H4sI\n");
    let shown = e.to_string();
    assert!(
        shown.contains("!!binary") && !shown.contains("Options"),
        "{shown}"
    );
}

#[test]
fn binary_gzip_content_is_written_decoded() {
    let root = make_root();
    let r = root.path();
    let gz = "H4sIAAAAAAAAA8tIzcnJ5wIAIDA6NgYAAAA=";
    let doc = format!("#cloud-config\nwrite_files:\n  - path: /opt/gz\n    encoding: gzip\n    permissions: '0600'\n    content: !!binary |\n      {gz}\n  - path: /opt/bin\n    content: !!binary AAEC/w==\n");
    let cfg = parsed(&doc).config;
    let report = apply(&cfg, r, &ApplyOptions::default()).unwrap();
    assert!(report.all_ok(), "{report}");
    assert_eq!(fs::read(r.join("opt/gz")).unwrap(), b"hello\n");
    assert_eq!(meta(r, "opt/gz").0, 0o600);
    assert_eq!(fs::read(r.join("opt/bin")).unwrap(), [0, 1, 2, 0xff]);
}

#[test]
fn a_write_files_entry_without_path_is_skipped_with_a_warning() {
    let doc = "#cloud-config\nwrite_files:\n  - content: x\n  - path: /b\n    content: y\n";
    let p = parsed(doc);
    assert_eq!(p.config.write_files.len(), 1);
    assert_eq!(p.config.write_files[0].path, "/b");
    let w = warnings_of(doc);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 3);
    assert!(
        w[0].1.contains("no `path`") && w[0].1.contains("add `path:`"),
        "{w:?}"
    );
    // Its content is checked all the same.
    let e = error("#cloud-config\nwrite_files:\n  - encoding: base64\n    content: '!!!'\n");
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn checks_coreos_cloudinit_makes() {
    let e = error("#cloud-config\nwrite_files:\n  - path: /usr/invalid\n");
    assert_eq!((e.line, e.column), (3, 5), "{e}");
    assert!(
        e.to_string().contains("read-only") && e.to_string().contains("/etc"),
        "{e}"
    );
    let e = error("#cloud-config\nwrite_files:\n  - path: underscore\n");
    assert!(e.to_string().contains("write \"/underscore\""), "{e}");

    let w = warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    discovery: disco\n");
    assert!(
        w.iter().any(|(l, m)| *l == 4 && m.contains("not a URL")),
        "{w:?}"
    );
    assert!(
        warnings_of("#cloud-config\ncoreos:\n  etcd2:\n    discovery: https://d.example/x\n")
            .is_empty()
    );

    let w = warnings_of("#cloud-config\n\t\nhostname: a\n");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, 2);
    assert!(w[0].1.contains("only a tab"), "{w:?}");

    let e = error("#cloud-config\ncoreos:\n  units:\n    - command: start\n      name: a.service\n    - name: stop\n");
    assert!(e.to_string().contains("write `command: stop`"), "{e}");
}

#[test]
fn keys_kiln_handles_differently_say_what_it_does() {
    let doc = "#cloud-config\ncoreos:\n  oem:\n    id: xyz\n  etcd:\n    addr: 10.0.0.1:4001\n    peer-addr: 10.0.0.1:7001\nusers:\n  - name: bob\n    coreos-ssh-import-github: bob\n    coreos-ssh-import-url: http://x/keys\n    no_log_init: true\n";
    let w = warnings_of(doc);
    let expect: &[(u64, &str)] = &[
        (3, "Kiln has one image for every platform"),
        (
            6,
            "write `advertise-client-urls: http://ADDRESS:2379` instead",
        ),
        (
            7,
            "write `initial-advertise-peer-urls: http://ADDRESS:2380` instead",
        ),
        (
            10,
            "put the keys themselves under this user's `ssh_authorized_keys`",
        ),
        (11, "put the keys themselves"),
    ];
    assert_eq!(w.len(), expect.len(), "{w:?}");
    for ((line, msg), (want_line, want)) in w.iter().zip(expect) {
        assert_eq!(line, want_line, "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
    // The IPv4 variables are replaced (see firstboot_tests); the IPv6 ones are named.
    assert!(warnings_of(
        "#cloud-config\ncoreos:\n  etcd2:\n    advertise-client-urls: http://$private_ipv4:2379\n",
    )
    .is_empty());
    let w = warnings_of(
        "#cloud-config\ncoreos:\n  etcd2:\n    advertise-client-urls: http://[$private_ipv6]:2379\n",
    );
    assert!(w[0].1.contains("not the IPv6 ones"), "{w:?}");
}

#[test]
fn manage_etc_hosts_and_no_user_group_apply() {
    let root = make_root();
    let r = root.path();
    let doc = "#cloud-config\nhostname: node-1.example\nmanage_etc_hosts: localhost\nusers:\n  - name: bob\n    no_user_group: true\n    no_log_init: true\n";
    let p = parsed(doc);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let report = apply(&p.config, r, &ApplyOptions::default()).unwrap();
    assert!(report.all_ok(), "{report}");
    let hosts = read(r, "etc/hosts");
    assert!(hosts.contains("\n127.0.0.1\tlocalhost node-1.example node-1\n::1\tlocalhost ip6-localhost ip6-loopback node-1.example node-1\n"), "{hosts}");
    let passwd = read(r, "etc/passwd");
    assert!(
        passwd.ends_with("bob:x:1000:100::/home/bob:/bin/bash\n"),
        "{passwd}"
    );
    assert!(read(r, "etc/group").contains("\nusers:x:100:\n"));
    assert!(!read(r, "etc/group").contains("\nbob:"));

    let e = error("#cloud-config\nhostname: a\nmanage_etc_hosts: true\n");
    assert!(e.to_string().contains("manage_etc_hosts: localhost"), "{e}");
    let w = warnings_of("#cloud-config\nmanage_etc_hosts: localhost\n");
    assert!(w[0].1.contains("add `hostname:`"), "{w:?}");
}

// ---------------------------------------------------------------------------------------
// A user-data at first boot: scripts, multipart, empty, and the address variables.

mod firstboot_tests {
    use super::*;
    use crate::addresses::{Addresses, Chosen};

    fn first_boot(root: &Path, user_data: &str) -> FirstBoot {
        apply_user_data(user_data.as_bytes(), "test", root, &ApplyOptions::default()).unwrap()
    }

    #[test]
    fn a_script_is_kept_and_runs_once_with_its_exit_status_in_the_report() {
        let root = make_root();
        let r = root.path();
        let done = first_boot(
            r,
            "#!/bin/sh\necho \"ran in $(pwd)\" > \"${0%/scripts/*}/out\"\nexit 3\n",
        );
        assert_eq!((done.status, done.scripts), (Status::Applied, 1));
        assert!(
            done.report.contains("a script (#!/bin/sh)"),
            "{}",
            done.report
        );
        assert_eq!(
            meta(r, "var/lib/kiln/user-data/scripts/user-data").0 & 0o777,
            0o700
        );
        assert!(read(
            r,
            "etc/systemd/system/kiln-user-data.service.d/10-kiln-network.conf"
        )
        .contains("Wants=network-online.target"));
        let e = run_scripts(r).unwrap_err();
        assert_eq!(e, "script user-data: exit status 3");
        let report = read(r, "var/lib/kiln/cloud-config.report");
        assert!(report.starts_with("status: failed\n"), "{report}");
        assert!(
            report.ends_with("script user-data: exit status 3\n"),
            "{report}"
        );
        assert_eq!(read(r, "var/lib/kiln/user-data/out"), "ran in /\n");
        // Once: it moved, and nothing is left to run.
        assert!(!r.join("var/lib/kiln/user-data/scripts/user-data").exists());
        assert_eq!(run_scripts(r).unwrap(), 0);
        // An interpreter that is not there is said as such.
        first_boot(r, "#!/usr/bin/no-such-interpreter\n");
        let e = run_scripts(r).unwrap_err();
        assert!(
            e.contains("could not start") && e.contains("interpreter"),
            "{e}"
        );
    }

    #[test]
    fn a_multipart_user_data_applies_its_cloud_config_and_keeps_its_scripts() {
        let root = make_root();
        let r = root.path();
        let doc = "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: from-mime\n\n--B\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho part two\n--B\nContent-Type: application/json\n\n{}\n--B--\n";
        let done = first_boot(r, doc);
        assert_eq!(
            (done.status, done.scripts),
            (Status::Applied, 1),
            "{}",
            done.report
        );
        assert_eq!(read(r, "etc/hostname"), "from-mime\n");
        assert_eq!(
            read(r, "var/lib/kiln/user-data/scripts/part-02"),
            "#!/bin/sh\necho part two"
        );
        assert!(
            done.report
                .contains("part 3 (line 18, application/json): ignored"),
            "{}",
            done.report
        );
        assert_eq!(run_scripts(r).unwrap(), 1);
        assert!(read(r, "var/lib/kiln/cloud-config.report")
            .ends_with("script part-02: exit status 0\n"));
    }

    /// Two cloud-config parts are one document: both parts' units start, the later hostname
    /// wins; one part's address variable keeps both for the second pass.
    #[test]
    fn the_cloud_config_parts_of_a_multipart_user_data_are_applied_as_one() {
        let root = make_root();
        let r = root.path();
        let part = |body: &str| format!("--B\nContent-Type: text/cloud-config\n\n{body}\n");
        let doc = format!(
            "Content-Type: multipart/mixed; boundary=B\n\n{}{}--B--\n",
            part("hostname: first\ncoreos:\n  units:\n    - name: a.service\n      command: start\n      content: |\n        [Service]\n        ExecStart=/bin/true\n"),
            part("hostname: second\nwrite_files:\n  - path: /etc/addr\n    content: $private_ipv4\ncoreos:\n  units:\n    - name: b.service\n      command: start\n      content: |\n        [Service]\n        ExecStart=/bin/true\n"),
        );
        let done = first_boot(r, &doc);
        assert!(
            done.addresses_pending && done.status == Status::Applied,
            "{}",
            done.report
        );
        assert_eq!(read(r, "etc/hostname"), "second\n");
        let starts = read(r, "var/lib/kiln/units-to-start");
        assert_eq!(starts, "start a.service\nstart b.service\n");
        assert!(!r.join("etc/addr").exists());
        for unit in ["a.service", "b.service"] {
            assert!(r
                .join(format!(
                    "etc/systemd/system/{unit}.d/10-kiln-addresses.conf"
                ))
                .exists());
        }
        assert_eq!(pending_documents(r).unwrap().len(), 2);
        let chosen = Chosen {
            addresses: Addresses::both("10.1.2.3".parse().unwrap()),
            private_from: "x".into(),
            public_from: "x".into(),
        };
        // Not known (yet): the report says so, and the documents wait for the next try.
        let (added, all_ok) = complete_addresses(
            r,
            &ApplyOptions::default(),
            Err("no interface has an IPv4 address yet after 120 s"),
        )
        .unwrap();
        assert!(!all_ok && added.contains("not known"), "{added}");
        assert!(read(r, "var/lib/kiln/cloud-config.report").starts_with("status: failed\n"));
        assert_eq!(pending_documents(r).unwrap().len(), 2);
        complete_addresses(r, &ApplyOptions::default(), Ok(&chosen)).unwrap();
        assert_eq!(read(r, "etc/addr"), "10.1.2.3");
        assert_eq!(read(r, "var/lib/kiln/units-to-start"), starts);
        assert_eq!(read(r, "etc/hostname"), "second\n");
    }

    #[test]
    fn an_empty_user_data_is_nothing_to_do_and_a_bad_one_is_rejected() {
        let root = make_root();
        let r = root.path();
        let done = first_boot(r, "\n \n");
        assert_eq!(done.status, Status::Applied);
        assert!(read(r, "var/lib/kiln/cloud-config.report").contains("is empty: nothing to apply"));
        let done = first_boot(r, "hostname: a\n");
        assert_eq!(done.status, Status::Rejected);
        let report = read(r, "var/lib/kiln/cloud-config.report");
        assert!(
            report.starts_with("status: rejected\ncloud-config from test was NOT applied"),
            "{report}"
        );
    }

    /// The CoreOS documentation's etcd2 example, with a file and a unit that use the variables.
    const WITH_ADDRESSES: &str = "#cloud-config\ncoreos:\n  etcd2:\n    name: n1\n    advertise-client-urls: http://$private_ipv4:2379,http://$private_ipv4:4001\n    initial-advertise-peer-urls: http://$private_ipv4:2380\n    listen-client-urls: http://0.0.0.0:2379,http://0.0.0.0:4001\n    listen-peer-urls: http://${private_ipv4}:2380\n  fleet:\n    public-ip: $public_ipv4\n  units:\n    - name: hello.service\n      command: start\n      content: |\n        [Service]\n        ExecStart=/bin/echo $private_ipv4\n  network:\n    - name: ens4\n      address: 10.77.0.9/24\nwrite_files:\n  - path: /etc/at-first\n    content: plain\n  - path: /etc/addressed\n    append: true\n    content: \"public $public_ipv4\\n\"\n";

    #[test]
    fn address_variables_are_applied_with_a_placeholder_then_with_the_addresses() {
        let root = make_root();
        let r = root.path();
        let done = first_boot(r, WITH_ADDRESSES);
        assert!(
            done.addresses_pending && done.status == Status::Applied,
            "{}",
            done.report
        );
        // First pass: the placeholder; the file that uses them is held back; the unit waits.
        let env = read(r, "etc/default/etcd");
        assert!(
            env.contains("ETCD_ADVERTISE_CLIENT_URLS=http://0.0.0.0:2379,http://0.0.0.0:4001\n"),
            "{env}"
        );
        assert_eq!(read(r, "etc/at-first"), "plain");
        assert!(!r.join("etc/addressed").exists());
        assert!(read(
            r,
            "etc/systemd/system/hello.service.d/10-kiln-addresses.conf"
        )
        .contains("After=kiln-config-addresses.service"));
        assert!(read(r, "etc/systemd/system/etcd.service.d/10-kiln.conf")
            .contains("kiln-config-addresses.service"));
        assert_eq!(pending_documents(r).unwrap().len(), 1);
        // The rules: the document's static address is private.
        let (settings, statics) = address_rules(&[WITH_ADDRESSES.to_string()]).unwrap();
        assert_eq!(
            statics,
            ["10.77.0.9".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(settings, Default::default());
        // Second pass.
        let chosen = Chosen {
            addresses: Addresses {
                private_ipv4: "10.77.0.9".parse().unwrap(),
                public_ipv4: "192.0.2.7".parse().unwrap(),
            },
            private_from: "static".into(),
            public_from: "route".into(),
        };
        let (added, all_ok) = complete_addresses(r, &ApplyOptions::default(), Ok(&chosen)).unwrap();
        assert!(all_ok, "{added}");
        assert!(added.starts_with("addresses: $private_ipv4 is 10.77.0.9 (static), $public_ipv4 is 192.0.2.7 (route)\n"), "{added}");
        let env = read(r, "etc/default/etcd");
        assert!(
            env.contains(
                "ETCD_ADVERTISE_CLIENT_URLS=http://10.77.0.9:2379,http://10.77.0.9:4001\n"
            ),
            "{env}"
        );
        assert!(
            env.contains("ETCD_LISTEN_PEER_URLS=http://10.77.0.9:2380\n"),
            "{env}"
        );
        assert!(read(r, "etc/fleet/fleet.conf").contains("public_ip=\"192.0.2.7\""));
        assert!(
            read(r, "etc/systemd/system/hello.service").contains("ExecStart=/bin/echo 10.77.0.9")
        );
        // Written once, appended once.
        assert_eq!(read(r, "etc/addressed"), "public 192.0.2.7\n");
        let environment = read(r, "etc/environment");
        assert!(
            environment.contains("COREOS_PRIVATE_IPV4=10.77.0.9\nCOREOS_PUBLIC_IPV4=192.0.2.7\n"),
            "{environment}"
        );
        assert!(
            environment.contains("ETCDCTL_ENDPOINTS=http://10.77.0.9:2379,http://10.77.0.9:4001\n"),
            "{environment}"
        );
        let report = read(r, "var/lib/kiln/cloud-config.report");
        assert!(
            report.starts_with("status: ok\n")
                && report.contains("says $private_ipv4")
                && report.contains("addresses: $private_ipv4 is 10.77.0.9"),
            "{report}"
        );
        assert!(pending_documents(r).unwrap().is_empty());
    }
}
