//! Messages on the console: every step says what it does when `kiln.debug` is set, and
//! warnings and failures always show.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Always printed.
pub fn say(msg: &str) {
    // The console may be gone (a broken /dev): there is nowhere else to report that.
    let _ = writeln!(std::io::stdout().lock(), "kiln-init: {msg}");
}

/// Printed with `kiln.debug`.
pub fn debug(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        say(msg);
    }
}
