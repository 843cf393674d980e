//! A minimal client for QEMU's machine protocol (QMP) on a Unix socket: enough to know QEMU is up
//! and to press the virtual power and reset buttons.
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
