//! The engine through its public API: the update flow, the rollout policy, pause and halt,
//! instance tracking and expiry, on an in-memory SQLite store with a manual clock.

mod common;

use common::*;
use kiln_server::model::{Policy, Status};
use kiln_server::store::Store as _;
use kiln_updater::omaha::Event;

#[test]
fn publish_check_update_events_complete() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("alpha")).unwrap();

    let answer = check(&engine, app("m1", "1.0.0", "alpha"));
    let offer = answer.update().unwrap().expect("an update is offered");
    assert_eq!(offer.version, "1.1.0");
    assert_eq!(
        offer.url,
        format!("http://updates.invalid:8470/v1/payloads/{APP}/1.1.0/update.payload")
    );
    assert_eq!((offer.size, offer.sha256), (4096, SHA));
    let status = |engine: &kiln_server::Engine| engine.instance(APP, "m1", 10).unwrap().0.status;
    assert_eq!(status(&engine), Status::Granted);

    for (event, expected) in [
        (Event::download_started(), Status::Downloading),
        (Event::download_finished(), Status::Downloading),
        (Event::installed(), Status::Installed),
    ] {
        clock.advance(10);
        let answer = check(
            &engine,
            with_events(app("m1", "1.0.0", "alpha"), vec![event]),
        );
        assert_eq!(answer.events.len(), 1, "each event is acknowledged");
        assert_eq!(status(&engine), expected);
    }
    // After the reboot: update_engine's first check carries 3/2 and the new version.
    let mut after = app("m1", "1.1.0", "alpha");
    after.bootid = Some("{boot-2}".into());
    after.events = vec![Event::updated_after_reboot("1.0.0")];
    let answer = check(&engine, after);
    assert!(!offered(&answer), "nothing newer than 1.1.0");
    let (instance, events) = engine.instance(APP, "m1", 10).unwrap();
    assert_eq!(instance.status, Status::Complete);
    assert_eq!(instance.version, "1.1.0");
    let names: Vec<&str> = events.iter().map(|e| e.description.as_str()).collect();
    assert_eq!(
        names,
        [
            "UpdatedAfterReboot",
            "Installed",
            "DownloadFinished",
            "DownloadStarted"
        ]
    );
    let channel = &engine.app(APP).unwrap().channels[0];
    assert_eq!(
        (channel.completes, channel.errors, channel.in_flight),
        (1, 0, 0)
    );
}

#[test]
fn unknown_app_and_braced_ids() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let mut unknown = app("m1", "1.0.0", "stable");
    unknown.appid = "{00000000-0000-0000-0000-000000000000}".into();
    let mut braced = app("{M2}", "1.0.0", "stable");
    braced.appid = format!("{{{}}}", APP.to_uppercase());
    let response = engine.handle(&request(vec![unknown, braced.clone()]), None);
    assert_eq!(
        response.apps[0].status.as_deref(),
        Some("error-unknownApplication")
    );
    assert!(response.apps[1].update().unwrap().is_some());
    assert_eq!(
        response.apps[1].appid, braced.appid,
        "the id is echoed as sent"
    );
    assert!(
        engine.instance(APP, "m2", 1).is_ok(),
        "machine ids are normalized"
    );
}

#[test]
fn no_downgrade_no_machine_id_and_min_from_version() {
    let (engine, _) = engine();
    let mut p = package("2.0.0");
    p.min_from_version = Some("1.5.0".into());
    engine.publish(p, Some("stable")).unwrap();
    assert!(!offered(&check(&engine, app("m1", "2.1.0", "stable"))));
    assert!(!offered(&check(&engine, app("m2", "1.4.0", "stable"))));
    assert!(offered(&check(&engine, app("m3", "1.5.0", "stable"))));
    let mut anonymous = app("x", "1.6.0", "stable");
    anonymous.machineid = None;
    assert!(!offered(&check(&engine, anonymous)));
}

#[test]
fn pause_holds_new_grants_but_not_machines_mid_update() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    assert!(offered(&check(&engine, app("m1", "1.0.0", "stable"))));
    engine.set_paused(APP, "stable", true).unwrap();
    assert!(!offered(&check(&engine, app("m2", "1.0.0", "stable"))));
    assert!(
        offered(&check(&engine, app("m1", "1.0.0", "stable"))),
        "m1 retries its download"
    );
    engine.set_paused(APP, "stable", false).unwrap();
    assert!(offered(&check(&engine, app("m2", "1.0.0", "stable"))));
}

#[test]
fn at_most_n_updates_per_period() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let policy = Policy {
        max_updates_per_period: 2,
        period_secs: 600,
        update_timeout_secs: 0,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", policy).unwrap();
    let machines: Vec<String> = [0, 10, 20]
        .iter()
        .flat_map(|from| (*from..from + 5).map(|i| format!("m{i}")))
        .collect();
    meet(
        &engine,
        &clock,
        &machines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let granted = |from: usize| {
        (from..from + 5)
            .filter(|i| offered(&check(&engine, app(&format!("m{i}"), "1.0.0", "stable"))))
            .count()
    };
    assert_eq!(granted(0), 2);
    clock.advance(599);
    assert_eq!(granted(10), 0, "still inside the period");
    clock.advance(2);
    assert_eq!(granted(20), 2, "a new period");
}

#[test]
fn percentage_of_fleet_is_deterministic() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let policy = Policy {
        percent: 30,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", policy).unwrap();
    let machines: Vec<String> = (0..400).map(|i| format!("machine-{i}")).collect();
    let first: Vec<bool> = machines
        .iter()
        .map(|m| offered(&check(&engine, app(m, "1.0.0", "stable"))))
        .collect();
    let n = first.iter().filter(|&&b| b).count();
    assert!((80..160).contains(&n), "{n} of 400 in 30%");
    for (m, was) in machines.iter().zip(&first) {
        assert_eq!(kiln_server::rollout::in_percent(m, 30), *was);
    }
}

#[test]
fn safe_mode_one_at_a_time_until_first_success() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let policy = Policy {
        safe_mode: true,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", policy).unwrap();
    meet(&engine, &clock, &["m1", "m2", "m3"]);
    assert!(offered(&check(&engine, app("m1", "1.0.0", "stable"))));
    assert!(!offered(&check(&engine, app("m2", "1.0.0", "stable"))));
    // m1 comes back on 1.1.0: the first success opens the gate.
    let mut done = app("m1", "1.1.0", "stable");
    done.events = vec![Event::updated_after_reboot("1.0.0")];
    check(&engine, done);
    assert!(offered(&check(&engine, app("m2", "1.0.0", "stable"))));
    assert!(offered(&check(&engine, app("m3", "1.0.0", "stable"))));
}

#[test]
fn update_timeout_frees_the_safe_mode_slot_and_counts_as_error() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let policy = Policy {
        safe_mode: true,
        update_timeout_secs: 300,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", policy).unwrap();
    meet(&engine, &clock, &["m1", "m2"]);
    assert!(offered(&check(&engine, app("m1", "1.0.0", "stable"))));
    clock.advance(299);
    assert!(!offered(&check(&engine, app("m2", "1.0.0", "stable"))));
    clock.advance(1);
    assert!(offered(&check(&engine, app("m2", "1.0.0", "stable"))));
    let (m1, events) = engine.instance(APP, "m1", 5).unwrap();
    assert_eq!(m1.status, Status::Error);
    assert_eq!(m1.last_error.as_deref(), Some("UpdateTimedOut"));
    assert_eq!(events[0].description, "UpdateTimedOut");
}

#[test]
fn halts_when_the_error_rate_passes_the_threshold() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    let policy = Policy {
        halt_error_rate: Some(0.5),
        halt_min_errors: 2,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", policy).unwrap();
    meet(&engine, &clock, &["m1", "m2", "m3", "m4", "m5"]);
    for m in ["m1", "m2", "m3"] {
        assert!(offered(&check(&engine, app(m, "1.0.0", "stable"))));
    }
    let mut ok = app("m1", "1.1.0", "stable");
    ok.events = vec![Event::updated_after_reboot("1.0.0")];
    check(&engine, ok);
    check(
        &engine,
        with_events(app("m2", "1.0.0", "stable"), vec![Event::error(10)]),
    );
    assert!(
        offered(&check(&engine, app("m4", "1.0.0", "stable"))),
        "1 error: below the minimum"
    );
    check(
        &engine,
        with_events(
            app("m3", "1.0.0", "stable"),
            vec![Event::error(9 | 1 << 30)],
        ),
    );
    let channel = engine.app(APP).unwrap().channels[0].clone();
    let halted = channel.record.halted.expect("halted at 2 of 3 failed");
    assert!(halted.contains("1.1.0"), "{halted}");
    assert!(!offered(&check(&engine, app("m5", "1.0.0", "stable"))));
    let (m3, _) = engine.instance(APP, "m3", 1).unwrap();
    assert_eq!(
        m3.last_error.as_deref(),
        Some("DownloadTransferError+resumed")
    );
    engine.set_paused(APP, "stable", false).unwrap();
    assert!(
        offered(&check(&engine, app("m5", "1.0.0", "stable"))),
        "resume lifts the halt"
    );
}

#[test]
fn rollback_is_seen_when_a_new_boot_brings_the_old_version() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    check(&engine, app("m1", "1.0.0", "stable"));
    check(
        &engine,
        with_events(app("m1", "1.0.0", "stable"), vec![Event::installed()]),
    );
    // Same boot, same version: still waiting to reboot.
    check(&engine, app("m1", "1.0.0", "stable"));
    assert_eq!(
        engine.instance(APP, "m1", 1).unwrap().0.status,
        Status::Installed
    );
    let mut rebooted = app("m1", "1.0.0", "stable");
    rebooted.bootid = Some("{boot-2}".into());
    check(&engine, rebooted);
    let (m1, _) = engine.instance(APP, "m1", 1).unwrap();
    assert_eq!(m1.status, Status::RolledBack);
    assert_eq!(engine.app(APP).unwrap().channels[0].errors, 1);
}

/// Kiln's agent reports the fallback itself (3/0, errorcode 1000) in the same request as its
/// first check from the old slot; that is a rollback too, not a plain error.
#[test]
fn the_agents_boot_fallback_event_is_a_rollback() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    check(&engine, app("m1", "1.0.0", "stable"));
    check(
        &engine,
        with_events(app("m1", "1.0.0", "stable"), vec![Event::installed()]),
    );
    let mut back = with_events(
        app("m1", "1.0.0", "stable"),
        vec![Event::error(kiln_contract::errorcode::BOOT_FALLBACK)],
    );
    back.bootid = Some("{boot-4}".into());
    check(&engine, back);
    let (m1, events) = engine.instance(APP, "m1", 10).unwrap();
    assert_eq!(m1.status, Status::RolledBack);
    assert_eq!(m1.last_error.as_deref(), Some("KilnBootFallback"));
    assert!(events.iter().any(|e| e.error_code == Some(1000)));
}

#[test]
fn promote_moves_a_version_between_channels() {
    let (engine, _) = engine();
    engine.publish(package("1.1.0"), Some("alpha")).unwrap();
    assert!(!offered(&check(&engine, app("m1", "1.0.0", "beta"))));
    assert!(engine.promote(APP, "alpha", "beta").is_ok());
    assert!(offered(&check(&engine, app("m1", "1.0.0", "beta"))));
    assert!(engine.promote(APP, "gamma", "beta").is_err());
    assert!(engine.set_channel_version(APP, "beta", "9.9.9").is_err());
}

#[test]
fn stale_instances_expire_from_memory_and_store() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    check(&engine, app("old", "1.1.0", "stable"));
    clock.advance(3600);
    check(&engine, app("new", "1.1.0", "stable"));
    assert_eq!(engine.expire(1800).unwrap(), 1);
    let left = machine_ids(&engine);
    assert_eq!(left, ["new"]);
    assert!(engine.instance(APP, "old", 1).is_err());
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let clock = kiln_server::clock::ManualClock::new(5000);
    let open = || engine_on_file(&db, &clock);
    {
        let engine = open();
        engine.publish(package("1.1.0"), Some("stable")).unwrap();
        let policy = Policy {
            safe_mode: true,
            ..Policy::default()
        };
        engine.set_policy(APP, "stable", policy).unwrap();
        meet(&engine, &clock, &["m1", "m2"]);
        assert!(offered(&check(&engine, app("m1", "1.0.0", "stable"))));
        engine.shutdown();
    }
    let engine = open();
    assert_eq!(
        engine.instance(APP, "m1", 1).unwrap().0.status,
        Status::Granted
    );
    // The in-flight update was restored, so safe mode still holds the next machine back.
    assert!(!offered(&check(&engine, app("m2", "1.0.0", "stable"))));
}

#[test]
fn an_instance_reaches_the_store_when_it_changes_and_its_check_in_time_once_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let clock = kiln_server::clock::ManualClock::new(10_000);
    let engine = engine_on_file(&db, &clock);
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    // (status, last check-in) of m1 as the store has it.
    let stored = || {
        engine.flush().unwrap();
        let snapshot = kiln_server::store::SqliteStore::open(&db)
            .unwrap()
            .load()
            .unwrap();
        let m1 = snapshot.instances.iter().find(|i| i.machine_id == "m1");
        m1.map(|i| (i.status, i.last_check))
    };
    let plain = || app("m1", "1.0.0", "stable");
    assert!(offered(&check(&engine, plain())));
    assert_eq!(stored(), Some((Status::Granted, 10_000)));
    clock.advance(30);
    check(&engine, plain());
    assert_eq!(
        stored(),
        Some((Status::Granted, 10_000)),
        "only the time changed"
    );
    clock.advance(10);
    check(&engine, with_events(plain(), vec![Event::installed()]));
    assert_eq!(
        stored(),
        Some((Status::Installed, 10_040)),
        "a change goes at once"
    );
    clock.advance(59);
    check(&engine, plain());
    assert_eq!(stored(), Some((Status::Installed, 10_040)));
    clock.advance(1);
    check(&engine, plain());
    assert_eq!(
        stored(),
        Some((Status::Installed, 10_100)),
        "a minute on, the time too"
    );
    // The engine itself always answers with the latest.
    assert_eq!(engine.instance(APP, "m1", 1).unwrap().0.last_check, 10_100);
}

/// Machine ids anyone can make up: new ones take no place in a limited rollout (safe mode, a
/// number per period) until the server has known them for an hour, and what they report does
/// not halt a channel; a machine the server knows is still granted, and new machines update at
/// once where the rollout has no limits.
#[test]
fn machines_the_server_has_just_met_do_not_steer_the_rollout() {
    let (engine, clock) = engine();
    engine.publish(package("1.1.0"), Some("stable")).unwrap();
    meet(&engine, &clock, &["real"]);
    let limited = Policy {
        safe_mode: true,
        max_updates_per_period: 1,
        period_secs: 3600,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", limited).unwrap();
    for n in 0..50 {
        let fake = app(&format!("fake{n}"), "1.0.0", "stable");
        assert!(!offered(&check(&engine, fake)), "fake{n} took a place");
    }
    assert!(
        offered(&check(&engine, app("real", "1.0.0", "stable"))),
        "the known machine's place was used up"
    );

    // Halting: fake machines granted where nothing limits the rollout report failures.
    let halting = Policy {
        halt_error_rate: Some(0.1),
        halt_min_errors: 2,
        update_timeout_secs: 0,
        ..Policy::default()
    };
    engine.set_policy(APP, "stable", halting).unwrap();
    for fake in ["fake-a", "fake-b", "fake-c"] {
        assert!(
            offered(&check(&engine, app(fake, "1.0.0", "stable"))),
            "{fake}"
        );
        check(
            &engine,
            with_events(app(fake, "1.0.0", "stable"), vec![Event::error(10)]),
        );
    }
    let channel = engine.app(APP).unwrap().channels[0].clone();
    assert_eq!(
        channel.record.halted, None,
        "new machines halted the channel"
    );
    assert_eq!(channel.errors, 3, "the operator still sees every failure");
    // The same failures from machines the server knows do halt it.
    meet(&engine, &clock, &["k1", "k2"]);
    for known in ["k1", "k2"] {
        assert!(offered(&check(&engine, app(known, "1.0.0", "stable"))));
    }
    for known in ["k1", "k2"] {
        check(
            &engine,
            with_events(app(known, "1.0.0", "stable"), vec![Event::error(10)]),
        );
    }
    let channel = engine.app(APP).unwrap().channels[0].clone();
    assert!(channel.record.halted.is_some(), "{channel:?}");
}

/// A machine id seen in one check-in only is forgotten after a day, not after the month the
/// expiry keeps machines that come back.
#[test]
fn machines_seen_once_expire_after_a_day() {
    let (engine, clock) = engine();
    engine.publish(package("1.0.0"), Some("stable")).unwrap();
    check(&engine, app("once", "1.0.0", "stable"));
    check(&engine, app("regular", "1.0.0", "stable"));
    clock.advance(3600);
    check(&engine, app("regular", "1.0.0", "stable"));
    clock.advance(kiln_server::store::ONCE_SEEN_STALE_AFTER + 1);
    assert_eq!(engine.expire(30 * 86_400).unwrap(), 1);
    let left = machine_ids(&engine);
    assert_eq!(left, ["regular"]);
}
