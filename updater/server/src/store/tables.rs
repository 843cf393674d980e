//! The tables as both stores write them, described once: for each kind of record its table, the
//! columns of its key, and the value a record gives each column, in order. A store renders the
//! statements once in its own placeholders (`?1` or `$1`) and binds the values as its driver
//! wants them; the SQL is otherwise the same for SQLite and PostgreSQL. Adding a column is a line
//! here, a migration, and the line that reads it back in each store.

use super::Write;
use crate::model::{
    AppRecord, ChannelRecord, DiscoveryToken, Instance, InstanceEvent, PackageRecord, Registration,
};

/// A value bound to a statement, in its column's type (TEXT, BIGINT or DOUBLE PRECISION);
/// `None` is NULL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Real(Option<f64>),
}

fn text(value: &str) -> Value<'_> {
    Value::Text(Some(value))
}

fn optional(value: &Option<String>) -> Value<'_> {
    Value::Text(value.as_deref())
}

fn int(value: impl Into<i64>) -> Value<'static> {
    Value::Int(Some(value.into()))
}

fn unsigned(value: u64) -> Value<'static> {
    Value::Int(Some(signed(value)))
}

/// Neither database has unsigned integers: sizes and timestamps are stored as BIGINT. Values
/// beyond `i64::MAX` do not occur, and clamping keeps a hostile one from failing a whole batch.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A column, and the value a record gives it.
struct Column<R> {
    name: &'static str,
    value: fn(&R) -> Value<'_>,
}

const fn column<R>(name: &'static str, value: fn(&R) -> Value<'_>) -> Column<R> {
    Column { name, value }
}

/// A record's table: its first `key` columns are its primary key, on which a write of the record
/// replaces the row it finds; a table without a key only ever gets rows added.
pub struct Table<R: 'static> {
    name: &'static str,
    key: usize,
    columns: &'static [Column<R>],
}

// One column a line, as a table: rustfmt would spread each over four.
#[rustfmt::skip]
pub const APPS: Table<AppRecord> = Table {
    name: "apps",
    key: 1,
    columns: &[
        column("id",   |a| text(&a.id)),
        column("name", |a| text(&a.name)),
    ],
};

#[rustfmt::skip]
pub const PACKAGES: Table<PackageRecord> = Table {
    name: "packages",
    key: 2,
    columns: &[
        column("app_id",           |p| text(&p.app_id)),
        column("version",          |p| text(&p.version)),
        column("file_name",        |p| text(&p.file_name)),
        column("path",             |p| optional(&p.path)),
        column("url",              |p| optional(&p.url)),
        column("size",             |p| unsigned(p.size)),
        column("sha256",           |p| text(&p.sha256)),
        column("min_from_version", |p| optional(&p.min_from_version)),
        column("manifest",         |p| text(&p.manifest)),
        column("created_at",       |p| unsigned(p.created_at)),
    ],
};

#[rustfmt::skip]
pub const CHANNELS: Table<ChannelRecord> = Table {
    name: "channels",
    key: 2,
    columns: &[
        column("app_id",                 |c| text(&c.app_id)),
        column("name",                   |c| text(&c.name)),
        column("version",                |c| optional(&c.version)),
        column("paused",                 |c| int(c.paused)),
        column("halted",                 |c| optional(&c.halted)),
        column("max_updates_per_period", |c| int(c.policy.max_updates_per_period)),
        column("period_secs",            |c| unsigned(c.policy.period_secs)),
        column("percent",                |c| int(c.policy.percent)),
        column("update_timeout_secs",    |c| unsigned(c.policy.update_timeout_secs)),
        column("safe_mode",              |c| int(c.policy.safe_mode)),
        column("halt_error_rate",        |c| Value::Real(c.policy.halt_error_rate)),
        column("halt_min_errors",        |c| int(c.policy.halt_min_errors)),
        column("updated_at",             |c| unsigned(c.updated_at)),
    ],
};

#[rustfmt::skip]
pub const INSTANCES: Table<Instance> = Table {
    name: "instances",
    key: 2,
    columns: &[
        column("app_id",         |i| text(&i.app_id)),
        column("machine_id",     |i| text(&i.machine_id)),
        column("version",        |i| text(&i.version)),
        column("channel",        |i| text(&i.channel)),
        column("status",         |i| text(i.status.as_str())),
        column("target_version", |i| optional(&i.target_version)),
        column("granted_at",     |i| Value::Int(i.granted_at.map(signed))),
        column("last_check",     |i| unsigned(i.last_check)),
        column("last_error",     |i| optional(&i.last_error)),
        column("boot_id",        |i| optional(&i.boot_id)),
        column("first_seen",     |i| unsigned(i.first_seen)),
    ],
};

/// Events are only ever added (no key); each is written with the next number of the store's
/// sequence in [`EVENT_SEQ`], which orders an instance's history.
#[rustfmt::skip]
pub const EVENTS: Table<InstanceEvent> = Table {
    name: "instance_events",
    key: 0,
    columns: &[
        column("app_id",           |e| text(&e.app_id)),
        column("machine_id",       |e| text(&e.machine_id)),
        column("at",               |e| unsigned(e.at)),
        column("event_type",       |e| int(e.event_type)),
        column("event_result",     |e| int(e.event_result)),
        column("error_code",       |e| Value::Int(e.error_code)),
        column("description",      |e| text(&e.description)),
        column("version",          |e| text(&e.version)),
        column("previous_version", |e| optional(&e.previous_version)),
    ],
};

#[rustfmt::skip]
pub const DISCOVERY_TOKENS: Table<DiscoveryToken> = Table {
    name: "discovery_tokens",
    key: 1,
    columns: &[
        column("token",             |t| text(&t.token)),
        column("size",              |t| int(t.size)),
        column("etcd_index",        |t| unsigned(t.index)),
        column("last_delete_index", |t| unsigned(t.last_delete_index)),
        column("created_at",        |t| unsigned(t.created_at)),
    ],
};

#[rustfmt::skip]
pub const REGISTRATIONS: Table<Registration> = Table {
    name: "discovery_registrations",
    key: 2,
    columns: &[
        column("token",      |r| text(&r.token)),
        column("id",         |r| text(&r.id)),
        column("value",      |r| text(&r.value)),
        column("etcd_index", |r| unsigned(r.index)),
        column("created_at", |r| unsigned(r.created_at)),
    ],
};

/// The column of `instance_events` that numbers the events in the order they were written.
const EVENT_SEQ: &str = "seq";

impl<R: 'static> Table<R> {
    /// `SELECT` of every column, in order, so that a store reads a row by the same positions
    /// it was written with.
    pub fn select(&self) -> String {
        format!("SELECT {} FROM {}", self.column_list(), self.name)
    }

    fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        names.join(", ")
    }

    fn values<'a>(&self, record: &'a R) -> Vec<Value<'a>> {
        self.columns.iter().map(|c| (c.value)(record)).collect()
    }

    /// Inserts a record (followed by `extra` columns); where the table has a key, a row with
    /// the same key gets every other column replaced instead.
    fn insert(&self, extra: &[&str], placeholder: fn(usize) -> String) -> String {
        let mut names = self.column_list();
        for name in extra {
            names.push_str(", ");
            names.push_str(name);
        }
        let count = self.columns.len() + extra.len();
        let placeholders: Vec<String> = (1..=count).map(placeholder).collect();
        let mut sql = format!(
            "INSERT INTO {} ({names}) VALUES ({})",
            self.name,
            placeholders.join(", ")
        );
        if self.key > 0 {
            let (key, rest) = self.columns.split_at(self.key);
            let key: Vec<&str> = key.iter().map(|c| c.name).collect();
            let set: Vec<String> = rest
                .iter()
                .map(|c| format!("{0} = excluded.{0}", c.name))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                set.join(", ")
            ));
        }
        sql
    }
}

/// The columns that name one instance, in `instances` and in `instance_events`.
const INSTANCE_KEY: &[&str] = &["app_id", "machine_id"];

/// The columns that name one registration; the first also names its token's rows.
const REGISTRATION_KEY: &[&str] = &["token", "id"];

/// Deletes the rows of `table` whose `columns` equal the values bound in that order.
fn delete_rows(table: &str, columns: &[&str], placeholder: fn(usize) -> String) -> String {
    let conditions: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(index, name)| format!("{name} = {}", placeholder(index + 1)))
        .collect();
    format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "))
}

/// Every statement a [`Write`] runs, rendered once in one database's placeholders.
pub struct Statements {
    app: String,
    package: String,
    channel: String,
    instance: String,
    event: String,
    delete_events: String,
    delete_instance: String,
    discovery_token: String,
    registration: String,
    delete_registration: String,
    delete_registrations: String,
    delete_discovery_token: String,
}

impl Statements {
    /// `placeholder(n)` is the database's spelling of the `n`th parameter, from 1.
    pub fn new(placeholder: fn(usize) -> String) -> Self {
        Self {
            app: APPS.insert(&[], placeholder),
            package: PACKAGES.insert(&[], placeholder),
            channel: CHANNELS.insert(&[], placeholder),
            instance: INSTANCES.insert(&[], placeholder),
            event: EVENTS.insert(&[EVENT_SEQ], placeholder),
            delete_events: delete_rows(EVENTS.name, INSTANCE_KEY, placeholder),
            delete_instance: delete_rows(INSTANCES.name, INSTANCE_KEY, placeholder),
            discovery_token: DISCOVERY_TOKENS.insert(&[], placeholder),
            registration: REGISTRATIONS.insert(&[], placeholder),
            delete_registration: delete_rows(REGISTRATIONS.name, REGISTRATION_KEY, placeholder),
            delete_registrations: delete_rows(
                REGISTRATIONS.name,
                &REGISTRATION_KEY[..1],
                placeholder,
            ),
            delete_discovery_token: delete_rows(
                DISCOVERY_TOKENS.name,
                &REGISTRATION_KEY[..1],
                placeholder,
            ),
        }
    }

    /// Runs the statements of one write, in order, each with its values. An event takes the
    /// number `seq` holds, which then moves on.
    pub fn run<E>(
        &self,
        write: &Write,
        seq: &mut i64,
        mut execute: impl FnMut(&str, &[Value<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        match write {
            Write::App(app) => execute(&self.app, &APPS.values(app)),
            Write::Package(package) => execute(&self.package, &PACKAGES.values(package)),
            Write::Channel(channel) => execute(&self.channel, &CHANNELS.values(channel)),
            Write::Instance(instance) => execute(&self.instance, &INSTANCES.values(instance)),
            Write::Event(event) => {
                let mut values = EVENTS.values(event);
                values.push(Value::Int(Some(*seq)));
                execute(&self.event, &values)?;
                *seq += 1;
                Ok(())
            }
            Write::DeleteInstance { app_id, machine_id } => {
                let key = [text(app_id), text(machine_id)];
                execute(&self.delete_events, &key)?;
                execute(&self.delete_instance, &key)
            }
            Write::DiscoveryToken(token) => {
                execute(&self.discovery_token, &DISCOVERY_TOKENS.values(token))
            }
            Write::Registration(registration) => {
                execute(&self.registration, &REGISTRATIONS.values(registration))
            }
            Write::DeleteRegistration { token, id } => {
                execute(&self.delete_registration, &[text(token), text(id)])
            }
            Write::DeleteDiscoveryToken { token } => {
                execute(&self.delete_registrations, &[text(token)])?;
                execute(&self.delete_discovery_token, &[text(token)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_replace_every_column_but_the_key() {
        let sql = Statements::new(|n| format!("${n}"));
        assert_eq!(
            sql.instance,
            "INSERT INTO instances (app_id, machine_id, version, channel, status, target_version, \
             granted_at, last_check, last_error, boot_id, first_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (app_id, machine_id) DO UPDATE SET version = excluded.version, \
             channel = excluded.channel, status = excluded.status, \
             target_version = excluded.target_version, granted_at = excluded.granted_at, \
             last_check = excluded.last_check, last_error = excluded.last_error, \
             boot_id = excluded.boot_id, first_seen = excluded.first_seen"
        );
    }

    #[test]
    fn events_are_appended_with_their_number_and_deleted_with_their_instance() {
        let sql = Statements::new(|n| format!("?{n}"));
        assert_eq!(
            sql.event,
            "INSERT INTO instance_events (app_id, machine_id, at, event_type, event_result, \
             error_code, description, version, previous_version, seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        );
        assert_eq!(
            sql.delete_events,
            "DELETE FROM instance_events WHERE app_id = ?1 AND machine_id = ?2"
        );
    }

    #[test]
    fn a_discovery_token_goes_with_its_registrations() {
        let sql = Statements::new(|n| format!("?{n}"));
        assert_eq!(
            sql.delete_registrations,
            "DELETE FROM discovery_registrations WHERE token = ?1"
        );
        assert_eq!(
            sql.delete_discovery_token,
            "DELETE FROM discovery_tokens WHERE token = ?1"
        );
        assert_eq!(
            sql.delete_registration,
            "DELETE FROM discovery_registrations WHERE token = ?1 AND id = ?2"
        );
    }
}
