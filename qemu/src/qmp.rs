//! A minimal client for QEMU's machine protocol (QMP) on a Unix socket: enough to know QEMU is up,
//! to press the virtual power and reset buttons, and to hear that a machine asked to be reset.
//!
//! QMP sends one JSON object per line. Replies to commands begin with `{"return"` or `{"error"`;
//! everything else (the greeting, events, which begin with `{"timestamp"`) is skipped. That prefix
//! check avoids a JSON library for the few commands used here, none of which return data we parse.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long one QMP exchange may take before the monitor is declared stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open, negotiated QMP connection.
#[derive(Debug)]
pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode. QEMU answers the greeting only once its
    /// start-up is complete, so a successful connect also means the machine exists.
    pub(crate) fn connect(socket: &Path) -> Result<Qmp, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_line()?;
        if !greeting.starts_with("{\"QMP\"") {
            return Err(format!("unexpected greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Runs a command without arguments; returns the reply line.
    pub(crate) fn execute(&mut self, command: &str) -> Result<String, String> {
        let request = format!("{{\"execute\": \"{command}\"}}\n");
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending: {e}"))?;
        loop {
            let line = self.read_line()?;
            if line.starts_with("{\"return\"") {
                return Ok(line);
            }
            if line.starts_with("{\"error\"") {
                return Err(line);
            }
        }
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QEMU closed the monitor connection".to_string()),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("reading the reply: {e}")),
        }
    }
}

/// How long one read of the events monitor waits, so its reader can notice it should stop.
const EVENT_POLL: Duration = Duration::from_secs(1);

/// QEMU's events, read from a monitor of their own (commands go through [`Qmp`]).
#[derive(Debug)]
pub(crate) struct Events {
    reader: BufReader<UnixStream>,
    /// A line read in part when a poll ran out.
    partial: String,
}

impl Events {
    pub(crate) fn connect(socket: &Path) -> Result<Events, String> {
        let qmp = Qmp::connect(socket)?;
        qmp.writer
            .set_read_timeout(Some(EVENT_POLL))
            .map_err(|e| e.to_string())?;
        Ok(Events {
            reader: qmp.reader,
            partial: String::new(),
        })
    }

    /// The next event line; `Ok(None)` when none came within a poll; an error once QEMU closed
    /// the monitor (it is exiting).
    pub(crate) fn next(&mut self) -> Result<Option<String>, String> {
        match self.reader.read_line(&mut self.partial) {
            Ok(0) => Err("QEMU closed the monitor connection".to_string()),
            Ok(_) if self.partial.ends_with('\n') => {
                let line = self.partial.trim_end().to_string();
                self.partial.clear();
                Ok(Some(line))
            }
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("reading an event: {e}")),
        }
    }
}

/// Whether an event line says the machine was asked to reset: with `-no-reboot`, QEMU turns a
/// reset (by the guest, or by `system_reset`) into a SHUTDOWN event with that reason, and exits.
pub(crate) fn is_reset(event: &str) -> bool {
    event.contains("\"SHUTDOWN\"")
        && (event.contains("\"guest-reset\"") || event.contains("\"host-qmp-system-reset\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reset_events_are_told_from_power_offs() {
        let event = |reason: &str| {
            format!(
                r#"{{"timestamp": {{"seconds": 1, "microseconds": 2}}, "event": "SHUTDOWN", "data": {{"guest": true, "reason": "{reason}"}}}}"#
            )
        };
        assert!(super::is_reset(&event("guest-reset")));
        assert!(super::is_reset(&event("host-qmp-system-reset")));
        assert!(!super::is_reset(&event("guest-shutdown")));
        assert!(!super::is_reset(&event("host-signal")));
        assert!(!super::is_reset(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}"#
        ));
    }
}
