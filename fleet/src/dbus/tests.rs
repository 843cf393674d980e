//! The wire format against a reference: Debian's `dbus-daemon`, which checks every message it
//! is given against the specification (a malformed one closes the sender's connection) before
//! routing it. systemd's own answer is checked in the cluster scenario, on the machines.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A bus of our own on a socket in a temporary directory, stopped when dropped.
struct Bus {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bus {
    fn start() -> Bus {
        let daemon = kiln_image::testutil::require_tool("dbus-daemon", "dbus-daemon");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\"/><allow receive_sender=\"*\"/><allow own=\"*\"/></policy></busconfig>",
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new(daemon)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting dbus-daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Bus {
            child,
            socket,
            _dir: dir,
        }
    }

    /// A connection with its unique name (`Hello`, which a bus wants first).
    fn connect(&self) -> (Connection, String) {
        let mut c = Connection::open(&self.socket).expect("authenticated");
        let reply = c.call(&bus_call("Hello", &[])).expect("Hello answered");
        assert_eq!(reply.signature, "s");
        let name = Reader::new(&reply.body, reply.little_endian)
            .string()
            .unwrap();
        assert!(name.starts_with(':'), "{name}");
        (c, name)
    }
}

fn bus_call<'a>(member: &'a str, args: &'a [Arg<'a>]) -> Call<'a> {
    Call {
        destination: Some("org.freedesktop.DBus"),
        path: "/org/freedesktop/DBus",
        interface: "org.freedesktop.DBus",
        member,
        args,
    }
}

#[test]
fn the_bus_answers_a_call_with_an_array_of_strings() {
    let bus = Bus::start();
    let (mut c, name) = bus.connect();
    let reply = c.call(&bus_call("ListNames", &[])).unwrap();
    assert_eq!(reply.signature, "as");
    let names = Reader::new(&reply.body, reply.little_endian)
        .array(4, |r| r.string())
        .unwrap();
    assert!(
        names.contains(&"org.freedesktop.DBus".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&name), "{names:?}");
    // One string argument, and the bus's error as an error, the connection still usable.
    let owner = c
        .call(&bus_call("GetNameOwner", &[Arg::Str("org.kiln.nobody")]))
        .unwrap_err();
    assert!(
        owner.contains("org.freedesktop.DBus.Error.NameHasNoOwner"),
        "{owner}"
    );
    let owner = c
        .call(&bus_call("GetNameOwner", &[Arg::Str(&name)]))
        .unwrap();
    assert_eq!(
        Reader::new(&owner.body, owner.little_endian)
            .string()
            .unwrap(),
        name
    );
}

/// A call with an array of strings, as `ListUnitsByNames` takes, passed by the bus (which
/// checks it) from one connection to another, and read there as it was sent.
#[test]
fn an_array_of_strings_arrives_as_sent() {
    let bus = Bus::start();
    let (mut caller, _) = bus.connect();
    let (mut callee, callee_name) = bus.connect();
    let units: Vec<String> = ["a.service", "web@1.service", "", "é.timer"]
        .map(String::from)
        .to_vec();
    let sent = std::thread::spawn(move || {
        // The callee never answers: the bus says so after the call's own timeout, or the
        // connection closes at the end of the test.
        let _ = caller.call(&Call {
            destination: Some(&callee_name),
            path: "/org/freedesktop/systemd1",
            interface: "org.freedesktop.systemd1.Manager",
            member: "ListUnitsByNames",
            args: &[Arg::Strs(&units), Arg::Str("last")],
        });
    });
    let (kind, message) = loop {
        let (kind, _, message) = callee.read_message().expect("a message");
        if kind == METHOD_CALL {
            break (kind, message);
        }
    };
    assert_eq!(kind, METHOD_CALL);
    assert_eq!(message.signature, "ass");
    let mut r = Reader::new(&message.body, message.little_endian);
    let got = r.array(4, |r| r.string()).unwrap();
    assert_eq!(got, ["a.service", "web@1.service", "", "é.timer"]);
    assert_eq!(r.string().unwrap(), "last");
    drop(callee);
    drop(bus);
    sent.join().unwrap();
}

/// `ListUnitsByNames`' reply, marshalled by hand as the specification lays it out: an array of
/// structs (8-aligned) of strings, object paths and a uint32.
fn unit_info_body(units: &[[&str; 10]]) -> Vec<u8> {
    let mut w = Writer::default();
    w.array(8, |w| {
        for u in units {
            w.align(8);
            for (i, field) in u.iter().enumerate() {
                if i == 7 {
                    w.u32(field.parse().unwrap());
                } else {
                    w.string(field);
                }
            }
        }
    });
    w.buf
}

#[test]
fn unit_states_are_read_in_the_order_asked() {
    let body = unit_info_body(&[
        [
            "web@1.service",
            "web",
            "loaded",
            "active",
            "running",
            "",
            "/org/freedesktop/systemd1/unit/web_401_2eservice",
            "0",
            "",
            "/",
        ],
        [
            "gone.service",
            "gone.service",
            "not-found",
            "inactive",
            "dead",
            "",
            "/org/freedesktop/systemd1/unit/gone_2eservice",
            "17",
            "start",
            "/org/freedesktop/systemd1/job/17",
        ],
    ]);
    let reply = Reply {
        signature: "a(ssssssouso)".into(),
        body,
        little_endian: true,
    };
    let names = vec!["web@1.service".to_owned(), "gone.service".to_owned()];
    let states = unit_states(&reply, &names).unwrap();
    let states: Vec<(&str, &str, &str)> = states
        .iter()
        .map(|(l, a, s)| (l.as_str(), a.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("loaded", "active", "running"),
            ("not-found", "inactive", "dead")
        ]
    );
    // Fewer answers than names, another signature, a cut body: errors, not guesses.
    assert!(unit_states(&reply, &names[..1]).is_err());
    let other = Reply {
        signature: "a(ss)".into(),
        ..reply
    };
    assert!(unit_states(&other, &names).is_err());
    let mut cut = unit_info_body(&[["a", "b", "c", "d", "e", "f", "/", "0", "", "/"]]);
    cut.truncate(cut.len() - 3);
    let cut = Reply {
        signature: "a(ssssssouso)".into(),
        body: cut,
        little_endian: true,
    };
    assert!(unit_states(&cut, &names[..1]).is_err());
}

#[test]
fn a_socket_nobody_listens_on_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = Manager::new(dir.path().join("private"));
    let e = manager.states(&["a.service".to_owned()]).unwrap_err();
    assert!(e.contains("private"), "{e}");
}
