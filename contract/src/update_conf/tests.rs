use super::*;

fn apply(text: &str) -> Result<(Settings, Vec<String>), ConfError> {
    let mut s = Settings::default();
    let warnings = s.apply(Path::new("/etc/kiln/update.conf"), text)?;
    Ok((s, warnings))
}

#[test]
fn the_defaults_file_reads_back_as_the_defaults_and_names_every_key() {
    let text = defaults_file();
    let (settings, warnings) = apply(&text).unwrap();
    assert_eq!(settings, Settings::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    for key in KEYS {
        assert!(
            text.contains(&format!("\n{} = ", key.name))
                || text.contains(&format!("\n# {} = ", key.name)),
            "{} is not in the defaults file",
            key.name
        );
    }
}

#[test]
fn every_key_has_a_setting_a_kind_and_one_cloud_config_home() {
    let mut seen = BTreeSet::new();
    for key in KEYS {
        // Rendering and setting panic for a key without a field.
        let _ = Settings::default().render_value(key);
        for name in key.cloud_config {
            assert!(seen.insert((key.section, *name)), "{name} twice");
            assert_eq!(cloud_config_key(key.section, name).unwrap().name, key.name);
            assert_eq!(
                cloud_config_key(key.section, &name.replace('-', "_"))
                    .unwrap()
                    .name,
                key.name
            );
        }
    }
}

#[test]
fn etc_overrides_usr_and_unknown_keys_warn() {
    let mut s = Settings::default();
    s.apply(
        Path::new("usr"),
        "reboot_strategy = \"off\"\ncheck_interval = \"30m\"\n",
    )
    .unwrap();
    let warnings = s
        .apply(
            Path::new("etc"),
            "reboot_strategy = \"fleetlock\"\nfleetlock_url = \"http://l:1\"\n\
             health_units = \"etcd.service, containerd.service\"\ncolour = \"red\"\n",
        )
        .unwrap();
    assert_eq!(s.reboot_strategy, RebootStrategy::FleetLock);
    assert_eq!(s.check_interval, Duration::from_secs(1800));
    assert_eq!(s.health_units, ["etcd.service", "containerd.service"]);
    assert_eq!(warnings, ["etc: unknown key `colour` ignored"]);
}

#[test]
fn old_names_and_spellings_are_read() {
    let (s, warnings) = apply(
        "group = \"beta\"\nfleetlock_group = \"web\"\nreboot_strategy = \"reboot\"\n\
         check_interval = 90\n",
    )
    .unwrap();
    assert_eq!(s.channel.as_deref(), Some("beta"));
    assert_eq!(s.lock_group, "web");
    assert_eq!(s.reboot_strategy, RebootStrategy::Immediate);
    assert_eq!(s.check_interval, Duration::from_secs(90));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("old name of `immediate`"),
        "{warnings:?}"
    );
    for name in ["fleetlock", "fleet-lock", "fleet_lock"] {
        let (s, _) = apply(&format!("reboot_strategy = \"{name}\"\n")).unwrap();
        assert_eq!(s.reboot_strategy, RebootStrategy::FleetLock);
    }
}

#[test]
fn best_effort_is_decided_where_etcd_is_known() {
    let read = |etcd| RebootStrategy::read("best-effort", etcd).map(|(s, _)| s);
    assert_eq!(read(Some(true)), Ok(RebootStrategy::EtcdLock));
    assert_eq!(read(Some(false)), Ok(RebootStrategy::Immediate));
    let e = apply("reboot_strategy = \"best-effort\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("write etcd-lock or immediate"), "{e}");
}

#[test]
fn bad_values_name_the_file_key_and_what_to_write() {
    let e = apply("reboot_strategy = \"sometimes\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/etc/kiln/update.conf") && e.contains("reboot_strategy"),
        "{e}"
    );
    assert!(
        e.contains("use immediate, etcd-lock, fleetlock or off"),
        "{e}"
    );
    let e = apply("window_start = \"Thu 04:00\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs both"), "{e}");
    let e = apply("window_start = \"Thu 04:00\"\nwindow_length = \"a week\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("window length like 1h"), "{e}");
    let e = apply("server = \"updates.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an http:// or https:// URL"), "{e}");
    assert!(apply("check_interval = \"soon\"\n").is_err());
    assert!(apply("lock_install = \"yes\"\n").is_err());
    assert!(apply("server = [\n").is_err());
}

#[test]
fn an_empty_window_start_clears_the_window() {
    let mut s = Settings::default();
    s.apply(
        Path::new("usr"),
        "window_start = \"04:00\"\nwindow_length = \"1h\"\n",
    )
    .unwrap();
    assert!(s.window.is_some());
    s.apply(
        Path::new("etc"),
        "window_start = \"\"\nwindow_length = \"\"\n",
    )
    .unwrap();
    assert_eq!(s.window, None);
}

#[test]
fn given_renders_only_its_keys_and_reads_back_to_its_values() {
    let mut given = Given::default();
    let key = |name| self::key(name).unwrap();
    given
        .set(
            key("server"),
            &Raw::Text("http://10.0.0.1:8000/v1/update/".into()),
            false,
        )
        .unwrap();
    given
        .set(
            key("etcd_endpoints"),
            &Raw::Text("http://a:2379, http://b:2379".into()),
            false,
        )
        .unwrap();
    given.set_window(Window::parse("thursday 4:00", "90m").unwrap());
    let text = given.render();
    assert_eq!(
        text,
        "# Written by kiln-config from the cloud-config; read by the update agent.\n\
         server = \"http://10.0.0.1:8000/v1/update/\"\n\
         window_start = \"Thu 04:00\"\nwindow_length = \"1h30m\"\n\
         etcd_endpoints = [\"http://a:2379\", \"http://b:2379\"]\n"
    );
    let (read, warnings) = apply(&text).unwrap();
    assert_eq!(read, given.settings);
    assert!(warnings.is_empty());
}

#[test]
fn a_group_has_a_semaphore_of_its_own() {
    let mut s = Settings::default();
    assert_eq!(s.etcd_semaphore_key(), "/kiln/reboot-lock");
    s.lock_group = "web".into();
    assert_eq!(s.etcd_semaphore_key(), "/kiln/reboot-lock/groups/web");
}
