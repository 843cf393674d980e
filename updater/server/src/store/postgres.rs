//! The PostgreSQL store, for a fleet that outgrows one machine: the same schema through the
//! same migrations as SQLite (recorded in a `schema_version` table instead of SQLite's
//! `user_version`). Several servers may share one database: one of them leads (it holds an
//! advisory lock and decides, see `shared`), the others forward to it and wait to take over.

use std::path::{Path, PathBuf};

use postgres::config::SslMode;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tables::{
    Statements, Value, APPS, CHANNELS, DISCOVERY_TOKENS, EVENTS, INSTANCES, PACKAGES, REGISTRATIONS,
};
use super::{Snapshot, Store, StoreError, Write, MIGRATIONS};
use crate::model::{
    AppRecord, ChannelRecord, DiscoveryToken, Instance, InstanceEvent, PackageRecord, Policy,
    Registration, Status,
};

/// A PostgreSQL database holding the server's state.
pub struct PostgresStore {
    client: Client,
    /// The connection string without its password, for messages.
    name: String,
    next_seq: i64,
    statements: Statements,
}

/// The advisory lock the leading server holds (an arbitrary key: "kiln" in ASCII, then 1).
const LEADER_LOCK: i64 = 0x6b69_6c6e_0000_0001;
/// The advisory lock a server holds while it migrates the schema.
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_0000_0002;

/// Why PostgreSQL failed; carried as text in [`StoreError::Backend`].
fn backend(name: &str, what: &'static str, err: postgres::Error) -> StoreError {
    // The client's own words are often only the outer layer ("error performing TLS
    // handshake"): the causes under it say what to fix.
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(e) = cause {
        message = format!("{message}: {e}");
        cause = e.source();
    }
    StoreError::Backend {
        path: name.to_owned(),
        what,
        message,
    }
}

/// How the connection to PostgreSQL is protected, from the connection string's `sslmode` and
/// the CA the operator pins. Whenever TLS is used, the server's certificate is checked (its
/// chain and its name, as libpq's `verify-full`): against the pinned CA, or the Mozilla roots
/// built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Neither `sslmode` nor a CA given: plain TCP, as before Kiln spoke TLS to PostgreSQL (the
    /// server says so when it starts).
    Plain,
    /// `sslmode=disable`: plain TCP, as asked.
    Disabled,
    /// `sslmode=prefer`: TLS when the database offers it.
    Preferred,
    /// `sslmode=require` (or `verify-ca`, `verify-full`), or a pinned CA: TLS or no connection.
    Required,
}

/// A PostgreSQL database to connect to: its connection string and how the connection is
/// protected, checked once before the first connection.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    config: postgres::Config,
    ca_file: Option<PathBuf>,
    protection: Protection,
    /// The connection string without its password, for messages.
    name: String,
}

impl PostgresTarget {
    /// `params` (`host=127.0.0.1 port=5432 user=kiln dbname=kiln`, or a `postgresql://` URL)
    /// with `ca_file`, the CA that signed the database's certificate (`--postgres-ca`).
    pub fn new(params: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let name = redact(params);
        // Kiln always checks the certificate fully, so libpq's two checking modes are TLS
        // required here (the rust client knows only disable, prefer and require).
        let known = params
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config: postgres::Config = known.parse().map_err(|e| StoreError::Backend {
            path: name.clone(),
            what: "reading the connection string",
            message: format!(
                "{e}; give `host=… port=… user=… dbname=…` (sslmode=disable|prefer|require|verify-full) \
                 or a postgresql:// URL, and the CA with --postgres-ca"
            ),
        })?;
        let said = params.contains("sslmode=");
        let protection = match (config.get_ssl_mode(), ca_file) {
            (SslMode::Disable, Some(ca)) => {
                return Err(StoreError::Backend {
                    path: name,
                    what: "reading the connection string",
                    message: format!(
                        "sslmode=disable with the CA {} (--postgres-ca): drop one of them",
                        ca.display()
                    ),
                })
            }
            (SslMode::Disable, None) => Protection::Disabled,
            (SslMode::Prefer, None) if !said => Protection::Plain,
            (SslMode::Prefer, None) => Protection::Preferred,
            _ => Protection::Required,
        };
        if protection == Protection::Required {
            config.ssl_mode(SslMode::Require);
        }
        if let Some(ca) = ca_file {
            // Read now, so that a bad file is a startup error rather than a retried connection.
            kiln_updater::tls::client_config(Some(ca)).map_err(|e| tls_error(&name, e))?;
        }
        Ok(Self {
            config,
            ca_file: ca_file.map(Path::to_owned),
            protection,
            name,
        })
    }

    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// The connection string without its password.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let connected = match self.protection {
            Protection::Plain | Protection::Disabled => self.config.connect(NoTls),
            Protection::Preferred | Protection::Required => {
                let tls = kiln_updater::tls::client_config(self.ca_file.as_deref())
                    .map_err(|e| tls_error(&self.name, e))?;
                self.config
                    .connect(MakeRustlsConnect::new(rustls::ClientConfig::clone(&tls)))
            }
        };
        connected.map_err(|e| {
            let mut err = backend(&self.name, "connecting", e);
            if let StoreError::Backend { message, .. } = &mut err {
                if message.contains("not valid for name") {
                    message.push_str(
                        "; give host= a name or address the database's certificate holds",
                    );
                } else if message.contains("invalid peer certificate") {
                    message.push_str(
                        "; give the CA that signed the database's certificate with --postgres-ca",
                    );
                }
            }
            err
        })
    }
}

fn tls_error(name: &str, err: kiln_updater::tls::TlsError) -> StoreError {
    StoreError::Backend {
        path: name.to_owned(),
        what: "reading the CA of --postgres-ca",
        message: err.to_string(),
    }
}

impl PostgresStore {
    /// Connects to `target` and brings the schema up to date.
    pub fn connect(target: &PostgresTarget) -> Result<Self, StoreError> {
        let name = target.name.clone();
        let client = target.connect()?;
        let mut store = Self {
            client,
            name,
            next_seq: 0,
            statements: Statements::new(|n| format!("${n}")),
        };
        store.migrate()?;
        store.next_seq = store.read_next_seq()?;
        Ok(store)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        self.client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .map_err(|e| backend(&self.name, "creating schema_version", e))?;
        let row = self
            .client
            .query_opt("SELECT MAX(version) FROM schema_version", &[])
            .map_err(|e| backend(&self.name, "reading the schema version", e))?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0))
    }

    /// Whether this connection is encrypted, as PostgreSQL itself reports it (`pg_stat_ssl`).
    pub fn encrypted(&mut self) -> Result<bool, StoreError> {
        self.client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map(|row| row.get(0))
            .map_err(|e| backend(&self.name, "asking whether the connection is encrypted", e))
    }

    /// Takes the leadership of the servers sharing this database if no other server holds it:
    /// a session-level advisory lock, held as long as this connection lives (a server that dies
    /// or loses the database gives it up with its connection, and cannot write without it). On
    /// success the leader row names `url` and the event sequence is read afresh, since the
    /// previous leader went on writing after this connection was opened.
    pub fn try_lead(&mut self, url: &str, now: i64) -> Result<bool, StoreError> {
        let got: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .map_err(|e| backend(&self.name, "asking for the leader lock", e))?
            .get(0);
        if !got {
            return Ok(false);
        }
        self.client
            .execute(
                "INSERT INTO leader (id, url, since) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, since = EXCLUDED.since",
                &[&url, &now],
            )
            .map_err(|e| backend(&self.name, "recording the leader", e))?;
        // A leader cut off from the database by the network (not closed) would otherwise keep
        // its session, and the lock, for as long as the kernel's keepalive default (hours):
        // the database drops it after about 11 s of silence instead.
        self.client
            .batch_execute(
                "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; \
                 SET tcp_keepalives_count = 3",
            )
            .map_err(|e| backend(&self.name, "setting the leader's keepalives", e))?;
        self.next_seq = self.read_next_seq()?;
        Ok(true)
    }

    /// The URL of the server that leads, as it recorded it when it took the lock.
    pub fn leader_url(&mut self) -> Result<Option<String>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT url FROM leader WHERE id = 1", &[])
            .map_err(|e| backend(&self.name, "reading the leader", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn read_next_seq(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .query_one("SELECT COALESCE(MAX(seq), 0) + 1 FROM instance_events", &[])
            .map_err(|e| backend(&self.name, "reading the event sequence", e))?
            .get(0))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        // Servers starting together migrate one after the other.
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| backend(&self.name, "waiting for the migration lock", e))?;
        let result = self.migrate_locked();
        let unlocked = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        result?;
        unlocked.map_err(|e| backend(&self.name, "releasing the migration lock", e))?;
        Ok(())
    }

    fn migrate_locked(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.name.clone(),
                found,
                known,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = index as i64 + 1;
            let name = self.name.clone();
            let mut tx = self
                .client
                .transaction()
                .map_err(|e| backend(&name, "starting a migration", e))?;
            tx.batch_execute(sql)
                .and_then(|()| tx.execute("INSERT INTO schema_version VALUES ($1)", &[&version]))
                .map_err(|e| backend(&name, "running a schema migration", e))?;
            tx.commit()
                .map_err(|e| backend(&name, "committing a schema migration", e))?;
        }
        Ok(())
    }

    fn select<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        map: impl Fn(&Row) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self
            .client
            .query(sql, &[])
            .map_err(|e| backend(&self.name, what, e))?;
        Ok(rows.iter().map(map).collect())
    }
}

/// `password=…` and `user:password@` removed, so messages never carry a secret.
fn redact(params: &str) -> String {
    if let Some((scheme, rest)) = params.split_once("://") {
        return match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => params.to_owned(),
        };
    }
    params
        .split_whitespace()
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let apps = self.select(
            "reading apps",
            &format!("{} ORDER BY id", APPS.select()),
            |r| AppRecord {
                id: r.get(0),
                name: r.get(1),
            },
        )?;
        let packages = self.select(
            "reading packages",
            &format!("{} ORDER BY app_id, created_at", PACKAGES.select()),
            |r| PackageRecord {
                app_id: r.get(0),
                version: r.get(1),
                file_name: r.get(2),
                path: r.get(3),
                url: r.get(4),
                size: unsigned(r.get(5)),
                sha256: r.get(6),
                min_from_version: r.get(7),
                manifest: r.get(8),
                created_at: unsigned(r.get(9)),
            },
        )?;
        let channels = self.select(
            "reading channels",
            &format!("{} ORDER BY app_id, name", CHANNELS.select()),
            |r| ChannelRecord {
                app_id: r.get(0),
                name: r.get(1),
                version: r.get(2),
                paused: r.get::<_, i64>(3) != 0,
                halted: r.get(4),
                policy: Policy {
                    max_updates_per_period: u32::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                    period_secs: unsigned(r.get(6)),
                    percent: u8::try_from(r.get::<_, i64>(7)).unwrap_or(100),
                    update_timeout_secs: unsigned(r.get(8)),
                    safe_mode: r.get::<_, i64>(9) != 0,
                    halt_error_rate: r.get(10),
                    halt_min_errors: u32::try_from(r.get::<_, i64>(11)).unwrap_or(1),
                },
                updated_at: unsigned(r.get(12)),
            },
        )?;
        let rows = self.select(
            "reading instances",
            &format!("{} ORDER BY app_id, machine_id", INSTANCES.select()),
            |r| {
                let instance = Instance {
                    app_id: r.get(0),
                    machine_id: r.get(1),
                    version: r.get(2),
                    channel: r.get(3),
                    status: Status::Idle,
                    target_version: r.get(5),
                    granted_at: r.get::<_, Option<i64>>(6).map(unsigned),
                    last_check: unsigned(r.get(7)),
                    last_error: r.get(8),
                    boot_id: r.get(9),
                    first_seen: unsigned(r.get(10)),
                };
                (instance, r.get::<_, String>(4))
            },
        )?;
        let instances = rows
            .into_iter()
            .map(|(instance, status)| match Status::parse(&status) {
                Some(status) => Ok(Instance { status, ..instance }),
                None => Err(StoreError::Corrupt {
                    path: self.name.clone(),
                    what: "instance status",
                    value: status,
                }),
            })
            .collect::<Result<_, _>>()?;
        let discovery_tokens = self.select(
            "reading discovery tokens",
            &format!("{} ORDER BY token", DISCOVERY_TOKENS.select()),
            |r| DiscoveryToken {
                token: r.get(0),
                size: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                index: unsigned(r.get(2)),
                last_delete_index: unsigned(r.get(3)),
                created_at: unsigned(r.get(4)),
            },
        )?;
        let registrations = self.select(
            "reading discovery registrations",
            &format!("{} ORDER BY token, etcd_index", REGISTRATIONS.select()),
            |r| Registration {
                token: r.get(0),
                id: r.get(1),
                value: r.get(2),
                index: unsigned(r.get(3)),
                created_at: unsigned(r.get(4)),
            },
        )?;
        Ok(Snapshot {
            apps,
            packages,
            channels,
            instances,
            discovery_tokens,
            registrations,
        })
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        let name = self.name.clone();
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| backend(&name, "starting a transaction", e))?;
        let mut seq = self.next_seq;
        for write in writes {
            self.statements
                .run(write, &mut seq, |sql, values| {
                    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(bind).collect();
                    tx.execute(sql, &params).map(drop)
                })
                .map_err(|e| backend(&name, "writing a batch", e))?;
        }
        tx.commit()
            .map_err(|e| backend(&name, "committing a batch", e))?;
        self.next_seq = seq;
        Ok(())
    }

    fn events(
        &mut self,
        app_id: &str,
        machine_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, StoreError> {
        let sql = format!(
            "{} WHERE app_id = $1 AND machine_id = $2 ORDER BY seq DESC LIMIT $3",
            EVENTS.select()
        );
        let rows = self
            .client
            .query(&sql, &[&app_id, &machine_id, &i64::from(limit)])
            .map_err(|e| backend(&self.name, "reading events", e))?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn recent_errors(
        &mut self,
        app_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, StoreError> {
        let sql = format!(
            "{} WHERE app_id = $1 AND event_result = 0 ORDER BY seq DESC LIMIT $2",
            EVENTS.select()
        );
        let rows = self
            .client
            .query(&sql, &[&app_id, &i64::from(limit)])
            .map_err(|e| backend(&self.name, "reading recent errors", e))?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.client
            .is_valid(std::time::Duration::from_secs(2))
            .map_err(|e| backend(&self.name, "checking the connection", e))
    }

    fn describe(&self) -> String {
        format!("PostgreSQL database {}", self.name)
    }
}

/// PostgreSQL has no unsigned integers; the schema stores them as BIGINT.
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A value as PostgreSQL binds it.
fn bind<'a>(value: &'a Value<'_>) -> &'a (dyn ToSql + Sync) {
    match value {
        Value::Text(text) => text,
        Value::Int(int) => int,
        Value::Real(real) => real,
    }
}

fn event_from_row(r: &Row) -> InstanceEvent {
    InstanceEvent {
        app_id: r.get(0),
        machine_id: r.get(1),
        at: unsigned(r.get(2)),
        event_type: u32::try_from(r.get::<_, i64>(3)).unwrap_or(0),
        event_result: u32::try_from(r.get::<_, i64>(4)).unwrap_or(0),
        error_code: r.get(5),
        description: r.get(6),
        version: r.get(7),
        previous_version: r.get(8),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn connection_strings_lose_their_passwords() {
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u dbname=d"
        );
        assert_eq!(
            redact("postgresql://u:secret@h:5432/d"),
            "postgresql://…@h:5432/d"
        );
    }
}
