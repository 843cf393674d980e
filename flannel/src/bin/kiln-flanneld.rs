//! `kiln-flanneld`: flannel's daemon for one machine (see `kiln_flannel::daemon`). Its settings
//! are flanneld's `FLANNELD_*` variables, which `kiln-flanneld.service` reads from the file the
//! cloud-config's `flannel:` section becomes; without that file, it sets the machine up only
//! where etcd holds a network config.

use std::sync::atomic::{AtomicBool, Ordering};

use kiln_contract::flannel_conf::OPTIONS_ENV;
use kiln_flannel::daemon::{self, Options};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    if std::env::args().nth(1).is_some() {
        eprintln!("kiln-flanneld takes no arguments: its settings are FLANNELD_* variables (flannel: in the cloud-config)");
        std::process::exit(2);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let opts = match Options::from_env(|name| std::env::var(name).ok()) {
        Ok(o) => Options {
            required: std::path::Path::new(OPTIONS_ENV).exists(),
            ..o
        },
        Err(e) => {
            eprintln!("kiln-flanneld: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = daemon::run(&opts, &STOP) {
        eprintln!("kiln-flanneld: {e}");
        std::process::exit(1);
    }
}
