//! systemd's manager over D-Bus on its private socket (`/run/systemd/private`, root only, no
//! bus daemon in between): the one question the agent asks on every reconcile, the states of its
//! units (`org.freedesktop.systemd1.Manager.ListUnitsByNames`), on one connection kept open.
//!
//! fleet asked systemd over D-Bus too. A `systemctl show` a reconcile was a process started
//! every few seconds, and under emulation the machine's largest idle cost: in the cluster
//! scenario a member's QEMU spent about a quarter of a host core while nothing happened, and
//! stopping fleet's daemon took it to an eighth (the `systemctl` processes it started, and
//! systemd answering each new connection).
//!
//! Only what that call needs of the D-Bus specification's wire format is here: the `EXTERNAL`
//! authentication, a method call's header and a body of strings, and a reply's header and a
//! body of basic types and structs, either byte order.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where systemd listens for root's direct connections (what `systemctl` uses).
pub const SYSTEMD_PRIVATE: &str = "/run/systemd/private";

/// A call not answered in this long fails (the agent then asks `systemctl` for a while): the
/// daemon's loop, which keeps the machine's presence, waits for it.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A reply larger than this is not systemd's answer to us: the connection is dropped.
const MAX_MESSAGE: usize = 64 << 20;

// Message types and header fields (D-Bus specification, "Message Format").
const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SIGNATURE: u8 = 8;

/// One method call: where it goes and its arguments, all strings or string arrays.
pub struct Call<'a> {
    pub destination: Option<&'a str>,
    pub path: &'a str,
    pub interface: &'a str,
    pub member: &'a str,
    pub args: &'a [Arg<'a>],
}

pub enum Arg<'a> {
    Str(&'a str),
    Strs(&'a [String]),
}

/// A method's reply: its body's signature and bytes, in the message's byte order.
#[derive(Debug)]
pub struct Reply {
    pub signature: String,
    pub body: Vec<u8>,
    pub little_endian: bool,
}

/// A connection: authenticated, one call at a time.
pub struct Connection {
    stream: BufReader<UnixStream>,
    serial: u32,
}

impl Connection {
    /// Connects to `socket` and authenticates as this process's user (`EXTERNAL`).
    pub fn open(socket: &Path) -> Result<Connection, String> {
        let err = |e: std::io::Error| format!("D-Bus at {}: {e}", socket.display());
        let stream = UnixStream::connect(socket).map_err(err)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
        let mut stream = BufReader::new(stream);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex = kiln_contract::hex::encode(uid.as_bytes());
        // BEGIN goes with AUTH, before the server's OK, as sd-bus's own clients send it, so the
        // first call reaches the server only after it has left authentication. Sent after the
        // OK with the call right behind it, systemd 252 (Debian 12's, in the cluster scenario)
        // left the call unanswered: ten fresh connections out of ten on an idle machine, and
        // the first call of busy ones; with BEGIN sent along with AUTH, sixty out of sixty
        // were answered at once.
        stream
            .get_mut()
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").as_bytes())
            .map_err(err)?;
        let mut line = String::new();
        stream.read_line(&mut line).map_err(err)?;
        if !line.starts_with("OK ") {
            return Err(format!(
                "D-Bus at {}: authentication refused: {}",
                socket.display(),
                line.trim()
            ));
        }
        Ok(Connection { stream, serial: 0 })
    }

    /// Sends `call` and waits for its reply (messages in between, signals, are passed over).
    pub fn call(&mut self, call: &Call) -> Result<Reply, String> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        let message = method_call(serial, call);
        self.stream
            .get_mut()
            .write_all(&message)
            .map_err(|e| format!("D-Bus: sending {}: {e}", call.member))?;
        loop {
            let (kind, fields, reply) = self
                .read_message()
                .map_err(|e| format!("D-Bus: the reply to {}: {e}", call.member))?;
            if fields.reply_serial != Some(serial) {
                continue;
            }
            return match kind {
                METHOD_RETURN => Ok(reply),
                ERROR => {
                    let text = Reader::new(&reply.body, reply.little_endian)
                        .string()
                        .unwrap_or_default();
                    Err(format!(
                        "D-Bus: {} failed: {}: {text}",
                        call.member,
                        fields.error_name.unwrap_or_default()
                    ))
                }
                other => Err(format!(
                    "D-Bus: message type {other} in reply to {}",
                    call.member
                )),
            };
        }
    }

    fn read_message(&mut self) -> Result<(u8, Fields, Reply), String> {
        let mut fixed = [0u8; 16];
        self.stream
            .read_exact(&mut fixed)
            .map_err(|e| e.to_string())?;
        let little_endian = match fixed[0] {
            b'l' => true,
            b'B' => false,
            other => return Err(format!("not a D-Bus message (byte order {other:#04x})")),
        };
        let u32_at = |i: usize| {
            let b = [fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]];
            (if little_endian {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }) as usize
        };
        let (body_len, fields_len) = (u32_at(4), u32_at(12));
        let total = 16 + align(fields_len, 8) + body_len;
        if total > MAX_MESSAGE {
            return Err(format!("a message of {total} bytes"));
        }
        let mut rest = vec![0u8; total - 16];
        self.stream
            .read_exact(&mut rest)
            .map_err(|e| e.to_string())?;
        let mut whole = fixed.to_vec();
        whole.extend_from_slice(&rest);
        let fields = Fields::read(&whole, little_endian, fields_len)?;
        let body = whole[16 + align(fields_len, 8)..].to_vec();
        let signature = fields.signature.clone().unwrap_or_default();
        Ok((
            fixed[1],
            fields,
            Reply {
                signature,
                body,
                little_endian,
            },
        ))
    }
}

/// The header fields a reply is read by.
#[derive(Default)]
struct Fields {
    reply_serial: Option<u32>,
    error_name: Option<String>,
    signature: Option<String>,
}

impl Fields {
    /// The header's `a(yv)` array, from byte 16 of `message`.
    fn read(message: &[u8], little_endian: bool, len: usize) -> Result<Fields, String> {
        let mut r = Reader::new(message, little_endian);
        r.pos = 16;
        let end = 16 + len;
        let mut fields = Fields::default();
        while r.pos < end {
            r.align(8)?;
            let code = r.byte()?;
            let signature = r.signature()?;
            match (code, signature.as_str()) {
                (FIELD_REPLY_SERIAL, "u") => fields.reply_serial = Some(r.u32()?),
                (FIELD_ERROR_NAME, "s") => fields.error_name = Some(r.string()?),
                (FIELD_SIGNATURE, "g") => fields.signature = Some(r.signature()?),
                (_, "s" | "o") => drop(r.string()?),
                (_, "g") => drop(r.signature()?),
                (_, "u") => drop(r.u32()?),
                (_, other) => return Err(format!("header field {code} of type {other}")),
            }
        }
        Ok(fields)
    }
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// A method call's bytes, little-endian: the header, then the body.
fn method_call(serial: u32, call: &Call) -> Vec<u8> {
    let mut body = Writer::default();
    let mut signature = String::new();
    for arg in call.args {
        match arg {
            Arg::Str(s) => {
                signature.push('s');
                body.string(s);
            }
            Arg::Strs(items) => {
                signature.push_str("as");
                body.array(4, |w| items.iter().for_each(|item| w.string(item)));
            }
        }
    }
    let mut m = Writer::default();
    m.buf.extend_from_slice(&[b'l', METHOD_CALL, 0, 1]);
    m.u32(body.buf.len() as u32);
    m.u32(serial);
    m.array(8, |m| {
        let field = |m: &mut Writer, code: u8, kind: &str, value: &str| {
            m.align(8);
            m.buf.push(code);
            m.signature(kind);
            if kind == "g" {
                m.signature(value);
            } else {
                m.string(value);
            }
        };
        field(m, FIELD_PATH, "o", call.path);
        field(m, FIELD_INTERFACE, "s", call.interface);
        field(m, FIELD_MEMBER, "s", call.member);
        if let Some(destination) = call.destination {
            field(m, FIELD_DESTINATION, "s", destination);
        }
        if !signature.is_empty() {
            field(m, FIELD_SIGNATURE, "g", &signature);
        }
    });
    m.align(8);
    m.buf.extend_from_slice(&body.buf);
    m.buf
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, to: usize) {
        self.buf.resize(align(self.buf.len(), to), 0);
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// An array whose elements (`align_to`: their type's alignment) `elements` writes: its
    /// length in bytes first, which leaves out the padding between it and the first element.
    fn array(&mut self, align_to: usize, elements: impl FnOnce(&mut Self)) {
        self.u32(0);
        let at = self.buf.len() - 4;
        self.align(align_to);
        let start = self.buf.len();
        elements(self);
        let len = (self.buf.len() - start) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads marshalled values; alignment is from the start of `buf` (a message, or a body: both
/// start 8-aligned in the message).
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    little_endian: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], little_endian: bool) -> Self {
        Reader {
            buf,
            pos: 0,
            little_endian,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos += n;
        Ok(bytes)
    }
    fn align(&mut self, to: usize) -> Result<(), String> {
        let to = align(self.pos, to);
        self.take(to - self.pos).map(drop)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        self.align(4)?;
        let b: [u8; 4] = self.take(4)?.try_into().expect("four bytes");
        Ok(if self.little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    /// A string or an object path.
    pub fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let text = self.take(len)?;
        self.take(1)?;
        String::from_utf8(text.to_vec()).map_err(|_| "a string that is not UTF-8".to_owned())
    }
    fn signature(&mut self) -> Result<String, String> {
        let len = self.byte()? as usize;
        let text = self.take(len)?;
        self.take(1)?;
        String::from_utf8(text.to_vec()).map_err(|_| "a signature that is not ASCII".to_owned())
    }
    /// An array's elements, each read by `each` (`align_to`: the element type's alignment).
    pub fn array<T>(
        &mut self,
        align_to: usize,
        mut each: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let len = self.u32()? as usize;
        self.align(align_to)?;
        let end = self.pos + len;
        let mut items = Vec::new();
        while self.pos < end {
            self.align(align_to)?;
            items.push(each(self)?);
        }
        if self.pos != end {
            return Err("an array's elements overran its length".to_owned());
        }
        Ok(items)
    }
}

/// `ListUnitsByNames`' reply signature: per unit its name, description, load, active and sub
/// state, the unit it follows, its object path, and its job's id, type and path.
const UNIT_INFO: &str = "a(ssssssouso)";

/// A unit's load, active and sub state, as systemd names them (`loaded`, `active`, `running`).
pub type UnitStates = (String, String, String);

/// The states of `names` from systemd's reply (in the order asked; systemd answers every name,
/// `not-found` for a unit it has no file for).
pub fn unit_states(reply: &Reply, names: &[String]) -> Result<Vec<UnitStates>, String> {
    if reply.signature != UNIT_INFO {
        return Err(format!(
            "ListUnitsByNames answered {:?}, not {UNIT_INFO}",
            reply.signature
        ));
    }
    let mut r = Reader::new(&reply.body, reply.little_endian);
    let states = r.array(8, |r| {
        let _name = r.string()?;
        let _description = r.string()?;
        let state = (r.string()?, r.string()?, r.string()?);
        let _following = r.string()?;
        let _path = r.string()?;
        let _job_id = r.u32()?;
        let _job_type = r.string()?;
        let _job_path = r.string()?;
        Ok(state)
    })?;
    if states.len() != names.len() {
        return Err(format!(
            "ListUnitsByNames answered {} units for {} names",
            states.len(),
            names.len()
        ));
    }
    Ok(states)
}

/// systemd's manager, on a connection opened when first needed and opened again after a
/// failure.
pub struct Manager {
    socket: std::path::PathBuf,
    connection: Option<Connection>,
}

impl Manager {
    pub fn new(socket: impl Into<std::path::PathBuf>) -> Self {
        Manager {
            socket: socket.into(),
            connection: None,
        }
    }

    /// The states of `names`, in their order.
    pub fn states(&mut self, names: &[String]) -> Result<Vec<UnitStates>, String> {
        let connection = match &mut self.connection {
            Some(c) => c,
            None => self.connection.insert(Connection::open(&self.socket)?),
        };
        let reply = connection.call(&Call {
            destination: None,
            path: "/org/freedesktop/systemd1",
            interface: "org.freedesktop.systemd1.Manager",
            member: "ListUnitsByNames",
            args: &[Arg::Strs(names)],
        });
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.connection = None;
                return Err(e);
            }
        };
        unit_states(&reply, names)
    }
}

#[cfg(test)]
mod tests;
