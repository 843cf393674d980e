//! Simulated machines for tests that need root: each is a thread in a network namespace of its
//! own, so nothing touches the host's network, and everything goes with the thread.

use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::kernel::Kernel;

/// The longest a step on a machine's thread, or a tool, may take.
pub const WAIT: Duration = Duration::from_secs(20);

type Step = Box<dyn FnOnce(&Kernel) + Send>;

/// A simulated machine: a thread in a fresh network namespace holding a [`Kernel`], running the
/// steps the test sends it. Its namespace ends with the thread, when the machine is dropped.
pub struct Machine {
    pub name: &'static str,
    steps: Option<mpsc::Sender<Step>>,
    /// `/proc/<pid>/task/<tid>/ns/net`, for `nsenter --net=`.
    pub netns: String,
    thread: Option<thread::JoinHandle<()>>,
}

fn netns_of(path: &str) -> String {
    std::fs::read_link(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .display()
        .to_string()
}

impl Machine {
    pub fn start(name: &'static str) -> Machine {
        // `/proc/self` is the process's main thread: the host's namespace.
        let host = netns_of("/proc/self/ns/net");
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (steps_tx, steps_rx) = mpsc::channel::<Step>();
        let host_seen = host.clone();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // SAFETY: unshare only changes this thread's namespace; no memory is involved.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = ready_tx.send(Err(format!("unshare(CLONE_NEWNET): {e} (run as root)")));
                    return;
                }
                if netns_of("/proc/thread-self/ns/net") == host_seen {
                    let _ = ready_tx.send(Err("still in the host's namespace".into()));
                    return;
                }
                let kernel = match Kernel::new() {
                    Ok(k) => k,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
                let _ = ready_tx.send(Ok(path));
                while let Ok(step) = steps_rx.recv() {
                    step(&kernel);
                }
            })
            .expect("spawning a machine's thread");
        let netns = ready_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("{name}: no namespace within {WAIT:?}: {e}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(
            netns_of(&netns),
            host,
            "{name} must not be in the host's namespace"
        );
        Machine {
            name,
            steps: Some(steps_tx),
            netns,
            thread: Some(thread),
        }
    }

    /// Runs `step` on the machine's thread and returns what it returned.
    pub fn run<R: Send + 'static>(&self, step: impl FnOnce(&Kernel) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let steps = self.steps.as_ref().expect("the machine is running");
        steps
            .send(Box::new(move |k: &Kernel| {
                let _ = tx.send(step(k));
            }))
            .unwrap_or_else(|_| panic!("{}: its thread is gone", self.name));
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("{}: step gave no answer within {WAIT:?}: {e}", self.name))
    }

    /// A reference tool run in the machine's namespace, under `timeout`.
    pub fn command(&self, args: &[&str]) -> (String, Output) {
        let netns = format!("--net={}", self.netns);
        let secs = WAIT.as_secs().to_string();
        let mut all = vec!["-k", "2", secs.as_str(), "nsenter", netns.as_str()];
        all.extend(args);
        let line = format!("timeout {}", all.join(" "));
        let out = Command::new("timeout")
            .args(&all)
            .output()
            .unwrap_or_else(|e| panic!("{}: running {line}: {e}", self.name));
        (line, out)
    }

    /// The tool's output; a failure panics with its command line and stderr.
    pub fn tool(&self, args: &[&str]) -> String {
        let (line, out) = self.command(args);
        assert!(
            out.status.success(),
            "{}: {line}: {}\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Machine::tool`] with its words written as one line (no quoting: split at spaces).
    pub fn tool_line(&self, line: &str) -> String {
        self.tool(&line.split(' ').collect::<Vec<_>>())
    }

    /// The JSON a tool printed with `-j`.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.tool(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {args:?} printed no JSON ({e}): {text}", self.name))
    }

    pub fn index(&self, name: &'static str) -> u32 {
        self.run(move |k| k.link_index(name))
            .unwrap()
            .unwrap_or_else(|| panic!("{}: no {name}", self.name))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; a panicking test skips the join.
        drop(self.steps.take());
        if let Some(thread) = self.thread.take() {
            if !thread::panicking() {
                let _ = thread.join();
            }
        }
    }
}

/// The wire between two machines: a veth pair made in `a` with one end moved into `b`'s
/// namespace, `v0` 10.9.0.1/24 on A and `v1` 10.9.0.2/24 on B, both up, with each loopback.
pub fn wire(a: &Machine, b: &Machine) {
    a.tool_line("ip link add v0 type veth peer name v1");
    a.tool(&["ip", "link", "set", "v1", "netns", &b.netns]);
    for (m, dev, addr) in [(a, "v0", "10.9.0.1/24"), (b, "v1", "10.9.0.2/24")] {
        m.tool_line("ip link set lo up");
        m.tool(&["ip", "addr", "add", addr, "dev", dev]);
        m.tool(&["ip", "link", "set", dev, "up"]);
    }
}

/// iputils' `ping` where it is installed, else busybox's (same options for what is used here).
pub fn ping_command() -> Vec<&'static str> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ping").is_file()));
    if on_path {
        vec!["ping"]
    } else {
        vec!["busybox", "ping"]
    }
}
