//! One test per path of the state machine, against the mock Omaha + payload server.

use std::time::Duration;

use kiln_contract::boot::Slot;

use super::*;
use kiln_contract::errorcode;

/// Idle → checking → idle: nothing offered, nothing downloaded, next check about an interval away.
#[test]
fn no_update_goes_back_to_idle() {
    let env = Env::new();
    env.script().offer = None;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    assert_eq!(agent.step().unwrap(), Next::Now);
    assert_eq!(state_name(agent.status()), "checking");
    agent.step().unwrap();
    let status = env.saved();
    assert!(is_idle(&status.state), "{status:?}");
    assert_eq!(status.last_error, None);
    let wait = status.next_check - T0;
    assert!(
        (3240..=3960).contains(&wait),
        "next check in {wait}s, expected 1h ± 10%"
    );
    // Idle again: the agent waits for the next check instead of asking at once.
    match agent.step().unwrap() {
        Next::Wait(d) => assert_eq!(d.as_secs(), wait),
        other => panic!("{other:?}"),
    }
    drop(agent);
    assert!(env.events().is_empty());
    assert!(env.payload_gets().is_empty());
    assert!(installer.payloads.is_empty());
}

/// The whole update: download (13/1, 14/1), write → verify → finalize (3/1), reboot, and on the new
/// slot health → bless → 3/2 with the previous version → idle.
#[test]
fn update_installs_reboots_and_is_blessed() {
    let mut env = Env::new();
    env.config.health_units = vec!["etcd.service".into()];
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    host.active.insert("etcd.service".into());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 3);
        assert_eq!(
            env.saved().state.name(),
            "downloading",
            "persisted at each transition"
        );
        step_until(&mut agent, "writing", 1);
        step_until(&mut agent, "reboot-needed", 1);
        step_until(&mut agent, "rebooting", 1);
        // In rebooting the agent asks for the reboot and waits, bounded.
        assert!(matches!(agent.step().unwrap(), Next::Wait(d) if d <= Duration::from_secs(300)));
    }
    assert_eq!(host.reboots, 1);
    assert_eq!(installer.payloads, [env.script().payload.clone()]);
    assert_eq!(
        installer.phases,
        [Phase::Writing, Phase::Verifying, Phase::Finalizing]
    );
    assert_eq!(env.events(), ["13/1", "14/1", "3/1"]);
    let State::Rebooting { pending } = env.saved().state else {
        panic!("{:?}", env.saved())
    };
    assert_eq!(
        (
            pending.version.as_str(),
            pending.previous_version.as_str(),
            pending.slot
        ),
        ("0.2.0", "0.1.0", Slot::B)
    );
    assert!(
        std::fs::read_dir(env.paths.download_dir())
            .unwrap()
            .next()
            .is_none(),
        "the payload is removed once installed"
    );

    // The machine comes back on slot B with a new boot id; a new agent process starts.
    host.boot_id = BOOT_2.into();
    installer.running = Slot::B;
    host.system_state = "starting".into();
    {
        let mut agent = env.agent(&mut installer, &mut host);
        assert_eq!(state_name(agent.status()), "confirming");
        // Still starting: the agent polls (the fake clock moves) until the system runs.
        agent.step().unwrap();
    }
    // Never healthy while "starting": no bless, and the agent reboots to run the counter down.
    assert_eq!(installer.blessed, 0);
    assert_eq!(env.saved().state.name(), "rebooting");
    assert!(host.slept.iter().map(|d| d.as_secs()).sum::<u64>() >= 60);

    host.boot_id = "{11111111-2222-3333-4444-555555555555}".into();
    host.system_state = "running".into();
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "idle", 2);
    }
    assert_eq!(installer.blessed, 1);
    assert_eq!(env.events(), ["13/1", "14/1", "3/1", "3/2 previous=0.1.0"]);
    assert_eq!(env.saved().last_error, None);
}

/// Confirming with a named unit inactive: not blessed within the timeout.
#[test]
fn inactive_unit_is_not_blessed() {
    let mut env = Env::new();
    env.config.health_units = vec!["etcd.service".into()];
    env.config.reboot_strategy = RebootStrategy::Off;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::B), FakeHost::new());
    write_state(
        &env,
        State::Confirming {
            pending: pending(Slot::B, ""),
        },
    );
    let mut agent = env.agent(&mut installer, &mut host);
    // With `off` the agent does not reboot by itself: it stays confirming and waits.
    assert_eq!(agent.step().unwrap(), Next::Wait(env.config.check_interval));
    assert_eq!(state_name(agent.status()), "confirming");
    let error = agent.status().last_error.clone().unwrap();
    assert!(error.contains("etcd.service is not active"), "{error}");
    drop(agent);
    assert_eq!(installer.blessed, 0);
    assert!(env.events().is_empty());
}

/// A failed unit (`degraded`) ends the health wait at once: not blessed, and with a reboot
/// strategy the agent reboots right away instead of waiting out the timeout.
#[test]
fn degraded_is_not_blessed_and_does_not_wait_out_the_timeout() {
    let env = Env::new();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::B), FakeHost::new());
    write_state(
        &env,
        State::Confirming {
            pending: pending(Slot::B, ""),
        },
    );
    host.system_state = "degraded".into();
    {
        let mut agent = env.agent(&mut installer, &mut host);
        agent.step().unwrap();
        let error = agent.status().last_error.clone().unwrap();
        assert!(error.contains("degraded"), "{error}");
    }
    assert_eq!(installer.blessed, 0);
    assert_eq!(env.saved().state.name(), "rebooting");
    assert!(host.slept.is_empty(), "slept {:?}", host.slept);
}

/// The boot loader fell back to the old slot: 3/0 with the fallback code, the version marked bad,
/// and the same version offered again is not taken.
#[test]
fn fallback_reports_and_marks_the_version_bad() {
    let env = Env::new();
    let (mut installer, mut host) = fell_back(&env, &[]);
    let mut agent = env.agent(&mut installer, &mut host);
    assert_eq!(state_name(agent.status()), "confirming");
    agent.step().unwrap();
    assert_eq!(state_name(agent.status()), "idle");
    assert!(agent.status().bad_versions.contains("0.2.0"));
    // The next check offers 0.2.0 again: refused without downloading.
    let next_check = agent.status().next_check;
    drop(agent);
    host.now = next_check;
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "checking", 1);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert!(is_idle(&status.state));
    assert!(status
        .last_error
        .unwrap()
        .contains("not installing it again"));
    assert_eq!(
        env.events(),
        [format!("3/0 code={}", errorcode::BOOT_FALLBACK)]
    );
    assert!(env.payload_gets().is_empty());
    assert_eq!(installer.blessed, 0);
}

/// The server cannot be reached when the fallback is found (the network is still coming up):
/// the 3/0 stays queued, survives a restart of the agent, and reaches the server before the
/// next check.
#[test]
fn fallback_event_waits_for_the_server_and_goes_before_the_next_check() {
    let env = Env::new();
    let (mut installer, mut host) = fell_back(&env, &[503]);
    let mut agent = env.agent(&mut installer, &mut host);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert!(is_idle(&status.state));
    assert_eq!(env.saved().unsent_events.len(), 1, "{status:?}");
    let refused = env.server.seen().len();

    // The agent restarts; at its next check the event goes first, then the check.
    host.now = status.next_check;
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "checking", 1);
    agent.step().unwrap();
    drop(agent);
    assert!(env.saved().unsent_events.is_empty());
    let fallback = format!("3/0 code={}", errorcode::BOOT_FALLBACK);
    // Once refused with 503, once taken.
    assert_eq!(env.events(), [fallback.clone(), fallback]);
    let after: Vec<String> = env.server.seen()[refused..]
        .iter()
        .filter_map(|s| Request::parse(&s.body).ok())
        .map(|r| {
            let app = &r.apps[0];
            match (&app.updatecheck, app.events.first()) {
                (Some(_), _) => "check".to_owned(),
                (None, Some(_)) => "event".to_owned(),
                (None, None) => "other".to_owned(),
            }
        })
        .collect();
    assert_eq!(after, ["event", "check"]);
}

/// An idle agent does not wait for its next check (an hour by default) to send what the server
/// missed: it tries again a minute later.
#[test]
fn idle_agent_sends_unsent_events_within_a_minute() {
    let env = Env::new();
    let (mut installer, mut host) = fell_back(&env, &[503]);
    let mut agent = env.agent(&mut installer, &mut host);
    agent.step().unwrap();
    // Straight after the failure, idle does not hammer the server: it waits a minute.
    assert_eq!(agent.step().unwrap(), Next::Wait(Duration::from_secs(60)));
    assert_eq!(agent.status().unsent_events.len(), 1);
    host_advance(&mut agent, 60);
    agent.step().unwrap();
    assert!(is_idle(&agent.status().state));
    drop(agent);
    assert!(env.saved().unsent_events.is_empty());
    let fallback = format!("3/0 code={}", errorcode::BOOT_FALLBACK);
    assert_eq!(env.events(), [fallback.clone(), fallback]);
    // No check was made for it.
    assert!(env
        .server
        .seen()
        .iter()
        .filter_map(|s| Request::parse(&s.body).ok())
        .all(|r| r.apps[0].updatecheck.is_none()));
}

/// The server refuses an event for good (a 4xx): it is dropped, not sent for ever.
#[test]
fn refused_event_is_dropped() {
    let env = Env::new();
    let (mut installer, mut host) = fell_back(&env, &[400]);
    let mut agent = env.agent(&mut installer, &mut host);
    agent.step().unwrap();
    drop(agent);
    assert_eq!(
        env.events(),
        [format!("3/0 code={}", errorcode::BOOT_FALLBACK)]
    );
    assert!(env.saved().unsent_events.is_empty());
}

/// The payload's SHA-256 is not the response's: 3/0 code 10, file deleted, nothing installed.
#[test]
fn payload_hash_mismatch_is_refused() {
    let env = Env::new();
    env.script().announced_sha256 = Some([7u8; 32]);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "downloading", 2);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert_refused_for_its_hash(&env, &status, &installer);
}

/// A download whose SHA-256 was not the response's: idle, 3/0 code 10, nothing installed, the
/// file deleted.
fn assert_refused_for_its_hash(env: &Env, status: &Status, installer: &FakeInstaller) {
    assert!(is_idle(&status.state), "{status:?}");
    let e = status.last_error.clone().unwrap();
    assert!(e.contains("SHA-256"), "{e}");
    assert_eq!(
        env.events(),
        [
            "13/1",
            format!("3/0 code={}", errorcode::PAYLOAD_HASH_MISMATCH).as_str()
        ]
    );
    assert!(installer.payloads.is_empty());
    assert!(std::fs::read_dir(env.paths.download_dir())
        .unwrap()
        .next()
        .is_none());
}

/// The body breaks off half-way: backoff, then a `Range` request for the rest, and the resumed
/// file is whole (the installer gets exactly the payload).
#[test]
fn truncated_download_resumes_with_range() {
    let env = Env::new();
    env.script().truncate_next = Some(100_000);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 2);
        let next = agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "backoff");
        let progress = agent.status().progress.clone().unwrap();
        assert_eq!((progress.done, progress.total), (100_000, 300_000));
        let Next::Wait(d) = next else {
            panic!("{next:?}")
        };
        assert!((30..=38).contains(&d.as_secs()), "first backoff {d:?}");
    }
    // A restart during the backoff resumes it too.
    host.now += 40;
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 1);
        step_until(&mut agent, "writing", 1);
    }
    let gets = env.payload_gets();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].header("Range"), None);
    assert_eq!(gets[1].header("Range"), Some("bytes=100000-"));
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 1);
    }
    assert_eq!(installer.payloads, [env.script().payload.clone()]);
    assert_eq!(env.events(), ["13/1", "14/1", "3/1"]);
}

/// The hash is taken as the bytes arrive, and of the part kept for a resume from the file: a
/// byte of that part changed on the disk before the resume is caught (3/0, the file deleted).
#[test]
fn a_kept_part_changed_before_the_resume_fails_the_hash() {
    let env = Env::new();
    env.script().truncate_next = Some(100_000);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "downloading", 2);
    agent.step().unwrap();
    assert_eq!(state_name(agent.status()), "backoff");
    let kept: Vec<_> = std::fs::read_dir(env.paths.download_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut bytes = std::fs::read(&kept[0]).unwrap();
    assert_eq!(bytes.len(), 100_000);
    bytes[4096] ^= 1;
    std::fs::write(&kept[0], &bytes).unwrap();
    host_advance(&mut agent, 40);
    step_until(&mut agent, "downloading", 2);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert_eq!(env.payload_gets()[1].header("Range"), Some("bytes=100000-"));
    assert_refused_for_its_hash(&env, &status, &installer);
}

/// 5xx and a hanging server: exponential backoff (each wait bounded), then success.
#[test]
fn server_errors_and_timeouts_back_off_exponentially() {
    let env = Env::new();
    env.script().omaha_failures = [503, 0, 500].into_iter().collect();
    env.script().offer = None;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    let mut waits = Vec::new();
    for _ in 0..3 {
        step_until(&mut agent, "checking", 2);
        match agent.step().unwrap() {
            Next::Wait(d) => waits.push(d.as_secs()),
            other => panic!("{other:?}"),
        }
        assert_eq!(state_name(agent.status()), "backoff");
        let e = agent.status().last_error.clone().unwrap();
        assert!(e.contains("will retry"), "{e}");
        // Before the retry time the agent keeps waiting.
        assert!(matches!(agent.step().unwrap(), Next::Wait(_)));
        host_advance(&mut agent, waits.last().copied().unwrap());
    }
    for (i, (w, base)) in waits.iter().zip([30u64, 60, 120]).enumerate() {
        assert!(
            (base..=base + base / 4).contains(w),
            "wait {i} was {w}s: {waits:?}"
        );
    }
    step_until(&mut agent, "checking", 1);
    agent.step().unwrap();
    assert!(is_idle(&agent.status().state));
    assert_eq!(agent.status().failures, 0);
    assert!(
        agent.backoff_delay(30) <= Duration::from_secs(3600 + 900),
        "capped"
    );
}

/// `error-unknownApplication`: not retried early, reported as the status, no download.
#[test]
fn wrong_app_id_is_an_error_without_backoff() {
    let env = Env::new();
    env.script().unknown_app = true;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "checking", 1);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert!(is_idle(&status.state), "{status:?}");
    let e = status.last_error.unwrap();
    assert!(
        e.contains("error-unknownApplication") && e.contains(APP_ID),
        "{e}"
    );
    assert!(status.next_check - T0 >= 3240);
    assert!(env.payload_gets().is_empty());
}

/// The installer refuses (e.g. bad signature, verity mismatch): 3/0 with its code, back to idle.
#[test]
fn install_failure_reports_its_code() {
    let env = Env::new();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    installer.fail = Some(InstallFailure {
        code: errorcode::SIGNATURE,
        message: "manifest signature does not verify".into(),
    });
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "writing", 3);
    agent.step().unwrap();
    let status = agent.status().clone();
    drop(agent);
    assert!(is_idle(&status.state));
    assert!(status.last_error.unwrap().contains("signature"));
    assert_eq!(env.events(), ["13/1", "14/1", "3/0 code=18"]);
    assert_eq!(host.reboots, 0);
}

/// A restart in the middle of writing / verifying / finalizing installs again from the payload.
#[test]
fn restart_while_installing_starts_the_install_over() {
    let env = Env::new();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "writing", 3);
    }
    let State::Writing { offer } = env.saved().state else {
        panic!()
    };
    write_state(&env, State::Verifying { offer });
    let mut agent = env.agent(&mut installer, &mut host);
    assert_eq!(state_name(agent.status()), "writing");
    step_until(&mut agent, "reboot-needed", 1);
}

/// A restart while checking checks again; a restart in rebooting with the same boot id asks for
/// the reboot again.
#[test]
fn restart_resumes_checking_and_rebooting() {
    let env = Env::new();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    write_state(&env, State::Checking);
    {
        let agent = env.agent(&mut installer, &mut host);
        assert_eq!(state_name(agent.status()), "idle");
    }
    write_state(
        &env,
        State::Rebooting {
            pending: pending(Slot::B, BOOT_1),
        },
    );
    {
        let mut agent = env.agent(&mut installer, &mut host);
        assert_eq!(state_name(agent.status()), "rebooting");
        agent.step().unwrap();
    }
    assert_eq!(host.reboots, 1);
}

/// `off` stops at reboot-needed; a window makes `immediate` wait for it.
#[test]
fn strategy_off_and_window_hold_the_reboot() {
    let mut env = Env::new();
    env.config.reboot_strategy = RebootStrategy::Off;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    write_state(
        &env,
        State::RebootNeeded {
            pending: pending(Slot::B, ""),
        },
    );
    {
        let mut agent = env.agent(&mut installer, &mut host);
        assert_eq!(agent.step().unwrap(), Next::Wait(env.config.check_interval));
        assert_eq!(state_name(agent.status()), "reboot-needed");
    }
    env.config.reboot_strategy = RebootStrategy::Immediate;
    env.config.window = Some(kiln_contract::update_conf::Window::parse("Thu 04:00", "1h").unwrap());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        // T0 is Thursday 00:00: four hours to wait, in bounded steps.
        assert_eq!(agent.step().unwrap(), Next::Wait(Duration::from_secs(3600)));
        assert_eq!(state_name(agent.status()), "reboot-needed");
    }
    host.now = T0 + 4 * 3600 + 60;
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "rebooting", 1);
        agent.step().unwrap();
    }
    assert_eq!(host.reboots, 1);
}

/// With `off`, an operator reboots by hand: the agent notices the new boot and confirms.
#[test]
fn manual_reboot_with_strategy_off_is_confirmed() {
    let mut env = Env::new();
    env.config.reboot_strategy = RebootStrategy::Off;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 5);
        assert_eq!(agent.step().unwrap(), Next::Wait(env.config.check_interval));
    }
    assert_eq!(host.reboots, 0);
    host.boot_id = BOOT_2.into();
    installer.running = Slot::B;
    {
        let mut agent = env.agent(&mut installer, &mut host);
        assert_eq!(state_name(agent.status()), "confirming");
        step_until(&mut agent, "idle", 1);
    }
    assert_eq!(installer.blessed, 1);
    assert_eq!(env.events(), ["13/1", "14/1", "3/1", "3/2 previous=0.1.0"]);
}

/// `kiln-update check` wakes an idle agent before its next check, sent as on demand.
#[test]
fn check_trigger_wakes_the_idle_agent() {
    let env = Env::new();
    env.script().offer = None;
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    step_until(&mut agent, "idle", 3);
    assert!(matches!(agent.step().unwrap(), Next::Wait(_)));
    std::fs::create_dir_all(&env.paths.run_dir).unwrap();
    std::fs::write(env.paths.check_trigger(), "").unwrap();
    assert_eq!(agent.step().unwrap(), Next::Now);
    assert_eq!(state_name(agent.status()), "checking");
    agent.step().unwrap();
    drop(agent);
    assert!(!env.paths.check_trigger().exists());
    let sources: Vec<_> = env
        .server
        .seen()
        .iter()
        .filter_map(|s| Request::parse(&s.body).ok())
        .map(|r| r.installsource.unwrap_or_default())
        .collect();
    assert_eq!(sources, ["scheduler", "ondemandupdate"]);
}

/// A machine rebooted (boot 1 → boot 2) while slot B was on trial and came back on slot A; the
/// server answers its next Omaha requests with `failures` (HTTP statuses) first.
fn fell_back(env: &Env, failures: &[u16]) -> (FakeInstaller, FakeHost) {
    write_state(
        env,
        State::Rebooting {
            pending: pending(Slot::B, BOOT_1),
        },
    );
    env.script().omaha_failures.extend(failures);
    let mut host = FakeHost::new();
    host.boot_id = BOOT_2.into();
    (FakeInstaller::new(Slot::A), host)
}

fn pending(slot: Slot, boot_id: &str) -> crate::state::Pending {
    crate::state::Pending {
        version: "0.2.0".into(),
        previous_version: "0.1.0".into(),
        slot,
        boot_id: boot_id.into(),
    }
}

fn write_state(env: &Env, state: State) {
    let mut status = Status::load(&env.paths.state_file()).unwrap();
    status.state = state;
    status.save(&env.paths.state_file()).unwrap();
}

/// The fake clock lives in the host the agent borrows; the agent's own wait moves it.
fn host_advance(agent: &mut Agent, secs: u64) {
    agent.wait(Duration::from_secs(secs));
}

/// At boot the network may not be up yet (the agent does not hold the boot for
/// network-online.target): a server it cannot connect to at all is asked again within seconds
/// while the agent is starting, without a backoff step; later, the same failure backs off.
#[test]
fn an_unreachable_server_right_after_start_is_tried_again_within_seconds() {
    let mut env = Env::new();
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    env.config.server = Some(format!("http://127.0.0.1:{port}/v1/update/"));
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    let mut agent = env.agent(&mut installer, &mut host);
    let mut soon = Vec::new();
    for _ in 0..2 {
        step_until(&mut agent, "checking", 2);
        let Next::Wait(wait) = agent.step().unwrap() else {
            panic!("a failed check waits")
        };
        assert_eq!(state_name(agent.status()), "backoff");
        soon.push(wait.as_secs());
        host_advance(&mut agent, wait.as_secs());
    }
    assert_eq!(soon, [5, 5]);
    assert_eq!(
        agent.status().failures,
        0,
        "not counted as the server's failures"
    );
    // Past the start-up window it is an ordinary transient failure.
    host_advance(&mut agent, 200);
    step_until(&mut agent, "checking", 2);
    let Next::Wait(later) = agent.step().unwrap() else {
        panic!("a failed check waits")
    };
    assert!((30..=38).contains(&later.as_secs()), "{later:?}");
}

/// A server that announces more than the slot holds is refused before anything is downloaded.
#[test]
fn an_offer_larger_than_the_slot_is_refused_before_downloading() {
    let env = Env::new();
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    installer.room = Some(200_000);
    {
        let mut agent = env.agent(&mut installer, &mut host);
        agent.step().unwrap();
        agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "idle");
    }
    assert!(env.payload_gets().is_empty());
    assert_eq!(
        env.events(),
        [format!("3/0 code={}", errorcode::PAYLOAD_SIZE_MISMATCH)]
    );
    assert!(env
        .saved()
        .last_error
        .unwrap()
        .contains("refused before downloading"));
}

/// A server that announces more than it sends: each attempt resumes, and after the last one
/// the unverified partial payload is deleted instead of kept on /var for ever.
#[test]
fn a_download_that_keeps_failing_is_given_up_and_its_partial_file_deleted() {
    let env = Env::new();
    env.script().announced_size = Some(600_000);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 2);
    }
    for attempt in 1..=20 {
        {
            let mut agent = env.agent(&mut installer, &mut host);
            agent.step().unwrap();
            if state_name(agent.status()) == "idle" {
                break;
            }
            assert_eq!(state_name(agent.status()), "backoff", "attempt {attempt}");
        }
        host.now += 7200;
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 1);
    }
    assert_eq!(state_name(&env.saved()), "idle");
    assert_eq!(env.payload_gets().len(), 8);
    assert!(std::fs::read_dir(env.paths.download_dir())
        .unwrap()
        .next()
        .is_none());
    let events = env.events();
    assert_eq!(
        events.last().unwrap(),
        &format!("3/0 code={}", errorcode::DOWNLOAD_TRANSFER)
    );
    assert!(installer.payloads.is_empty());
}

/// A payload the download directory's filesystem has no room for is not started (and what
/// was there is deleted): /var stays usable.
#[test]
fn a_payload_without_room_on_var_is_not_downloaded() {
    let env = Env::new();
    env.script().announced_size = Some(1 << 50);
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "downloading", 2);
        agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "idle");
    }
    assert!(env.payload_gets().is_empty());
    assert_eq!(
        env.events().last().unwrap(),
        &format!("3/0 code={}", errorcode::DOWNLOAD_WRITE)
    );
    assert!(env
        .saved()
        .last_error
        .unwrap()
        .contains("free space on /var"));
}

/// Over HTTPS, with a certificate no public CA signed: with that CA pinned in `ca_file` the
/// agent checks, downloads and installs; with only the built-in roots it installs nothing,
/// says why, and tries again later (the server may be fixed, or the network stop lying).
#[test]
fn an_https_server_is_used_with_its_pinned_ca_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = kiln_updater::tls::testutil::make_ca(dir.path(), "agent");
    let tls = kiln_updater::tls::server_config(&ca.cert, &ca.key).unwrap();

    let env = Env::with_tls(Some(Arc::clone(&tls)));
    assert!(env.server.url.starts_with("https://"));
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "checking", 2);
        agent.step().unwrap();
        assert_eq!(state_name(agent.status()), "backoff");
        let e = agent.status().last_error.clone().unwrap();
        assert!(
            e.contains("UnknownIssuer") && e.contains("will retry"),
            "{e}"
        );
    }
    assert!(installer.payloads.is_empty());
    assert!(env.payload_gets().is_empty());

    let mut env = Env::with_tls(Some(tls));
    env.config.ca_file = Some(ca.ca.clone());
    let (mut installer, mut host) = (FakeInstaller::new(Slot::A), FakeHost::new());
    {
        let mut agent = env.agent(&mut installer, &mut host);
        step_until(&mut agent, "reboot-needed", 6);
    }
    assert_eq!(installer.payloads.len(), 1);
    assert_eq!(env.events(), ["13/1", "14/1", "3/1"]);
}
