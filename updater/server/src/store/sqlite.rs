//! The default store: one SQLite file, nothing to set up. WAL mode and `synchronous=NORMAL`
//! because the engine batches its writes into one transaction per flush; a power cut can lose
//! the last batch of check-ins, which the machines repeat at their next check anyway.

use std::path::Path;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, ToSql};

use super::tables::{
    Statements, Value, APPS, CHANNELS, DISCOVERY_TOKENS, EVENTS, INSTANCES, PACKAGES, REGISTRATIONS,
};
use super::{Snapshot, Store, StoreError, Write, MIGRATIONS};
use crate::model::{
    AppRecord, ChannelRecord, DiscoveryToken, Instance, InstanceEvent, PackageRecord, Policy,
    Registration, Status,
};

/// A SQLite database holding the server's state.
pub struct SqliteStore {
    conn: Connection,
    path: String,
    /// The next `instance_events.seq`; kept here so that inserts need no read.
    next_seq: i64,
    statements: Statements,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Opens (or creates) the database at `path`, readable by this user only (mode 0600, which
    /// SQLite gives its journal files too).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        private_file(path).map_err(|source| StoreError::Private {
            path: name.clone(),
            source,
        })?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: name.clone(),
            source,
        })?;
        Self::with_connection(conn, name)
    }

    /// A database in memory, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::with_connection(conn, ":memory:".into())
    }

    fn with_connection(conn: Connection, path: String) -> Result<Self, StoreError> {
        let mut store = Self {
            conn,
            path,
            next_seq: 0,
            statements: Statements::new(|n| format!("?{n}")),
        };
        store
            .conn
            // The writer thread inserts a row per event into two indexes: a 64 MiB page cache
            // and reads through mmap keep it from re-reading pages through the kernel.
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; \
                 PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456;",
            )
            .map_err(|e| store.query("setting pragmas", e))?;
        store.migrate()?;
        store.next_seq = store
            .conn
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM instance_events",
                [],
                |r| r.get(0),
            )
            .map_err(|e| store.query("reading the event sequence", e))?;
        Ok(store)
    }

    /// The schema version recorded in `PRAGMA user_version`.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.query("reading the schema version", e))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = index as i64 + 1;
            let tx = self
                .conn
                .transaction()
                .map_err(|e| query(&self.path, "starting a migration", e))?;
            tx.execute_batch(sql)
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {version}")))
                .and_then(|()| tx.commit())
                .map_err(|e| query(&self.path, "running a schema migration", e))?;
        }
        Ok(())
    }

    fn query(&self, what: &'static str, source: rusqlite::Error) -> StoreError {
        query(&self.path, what, source)
    }

    fn corrupt(&self, what: &'static str, value: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
            value,
        }
    }
}

fn query(path: &str, what: &'static str, source: rusqlite::Error) -> StoreError {
    StoreError::Query {
        path: path.to_owned(),
        what,
        source,
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let apps = self.select(
            "reading apps",
            &format!("{} ORDER BY id", APPS.select()),
            |r| {
                Ok(AppRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            },
        )?;
        let packages = self.select(
            "reading packages",
            &format!("{} ORDER BY app_id, created_at", PACKAGES.select()),
            package_from_row,
        )?;
        let channels = self.select(
            "reading channels",
            &format!("{} ORDER BY app_id, name", CHANNELS.select()),
            channel_from_row,
        )?;
        let rows = self.select(
            "reading instances",
            &format!("{} ORDER BY app_id, machine_id", INSTANCES.select()),
            instance_from_row,
        )?;
        let instances = rows
            .into_iter()
            .map(|(instance, status)| match Status::parse(&status) {
                Some(status) => Ok(Instance { status, ..instance }),
                None => Err(self.corrupt("instance status", status)),
            })
            .collect::<Result<_, _>>()?;
        let discovery_tokens = self.select(
            "reading discovery tokens",
            &format!("{} ORDER BY token", DISCOVERY_TOKENS.select()),
            discovery_token_from_row,
        )?;
        let registrations = self.select(
            "reading discovery registrations",
            &format!("{} ORDER BY token, etcd_index", REGISTRATIONS.select()),
            registration_from_row,
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
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| query(&path, "starting a transaction", e))?;
        let mut seq = self.next_seq;
        for write in writes {
            self.statements
                .run(write, &mut seq, |sql, values| {
                    tx.prepare_cached(sql)?
                        .execute(params_from_iter(values.iter().map(bind)))
                        .map(drop)
                })
                .map_err(|e| query(&path, "writing a batch", e))?;
        }
        tx.commit()
            .map_err(|e| query(&path, "committing a batch", e))?;
        self.next_seq = seq;
        Ok(())
    }

    fn events(
        &mut self,
        app_id: &str,
        machine_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{} WHERE app_id = ?1 AND machine_id = ?2 ORDER BY seq DESC LIMIT ?3",
                EVENTS.select()
            ))
            .map_err(|e| query(&self.path, "reading events", e))?;
        let rows = stmt
            .query_map(params![app_id, machine_id, limit], event_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| query(&self.path, "reading events", e))?;
        Ok(rows)
    }

    fn recent_errors(
        &mut self,
        app_id: &str,
        limit: u32,
    ) -> Result<Vec<InstanceEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{} WHERE app_id = ?1 AND event_result = 0 ORDER BY seq DESC LIMIT ?2",
                EVENTS.select()
            ))
            .map_err(|e| query(&self.path, "reading recent errors", e))?;
        let rows = stmt
            .query_map(params![app_id, limit], event_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| query(&self.path, "reading recent errors", e))?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!("SQLite database {}", self.path)
    }
}

impl SqliteStore {
    fn select<T>(
        &self,
        what: &'static str,
        sql: &str,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.query(what, e))?;
        let rows = stmt
            .query_map([], map)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.query(what, e))?;
        Ok(rows)
    }

    /// Whether an instance row exists; for tests of expiry.
    pub fn has_instance(&self, app_id: &str, machine_id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM instances WHERE app_id = ?1 AND machine_id = ?2",
                params![app_id, machine_id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(|e| self.query("reading an instance", e))
    }
}

/// A value as SQLite binds it.
fn bind<'a>(value: &'a Value<'_>) -> &'a dyn ToSql {
    match value {
        Value::Text(text) => text,
        Value::Int(int) => int,
        Value::Real(real) => real,
    }
}

fn get_u64(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

fn package_from_row(r: &Row<'_>) -> rusqlite::Result<PackageRecord> {
    Ok(PackageRecord {
        app_id: r.get(0)?,
        version: r.get(1)?,
        file_name: r.get(2)?,
        path: r.get(3)?,
        url: r.get(4)?,
        size: get_u64(r, 5)?,
        sha256: r.get(6)?,
        min_from_version: r.get(7)?,
        manifest: r.get(8)?,
        created_at: get_u64(r, 9)?,
    })
}

fn channel_from_row(r: &Row<'_>) -> rusqlite::Result<ChannelRecord> {
    Ok(ChannelRecord {
        app_id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        paused: r.get(3)?,
        halted: r.get(4)?,
        policy: Policy {
            max_updates_per_period: r.get(5)?,
            period_secs: get_u64(r, 6)?,
            percent: r.get(7)?,
            update_timeout_secs: get_u64(r, 8)?,
            safe_mode: r.get(9)?,
            halt_error_rate: r.get(10)?,
            halt_min_errors: r.get(11)?,
        },
        updated_at: get_u64(r, 12)?,
    })
}

/// The instance with a placeholder status, and the status text (checked by the caller, so that
/// an unknown status becomes a store error naming the value).
fn instance_from_row(r: &Row<'_>) -> rusqlite::Result<(Instance, String)> {
    Ok((
        Instance {
            app_id: r.get(0)?,
            machine_id: r.get(1)?,
            version: r.get(2)?,
            channel: r.get(3)?,
            status: Status::Idle,
            target_version: r.get(5)?,
            granted_at: r
                .get::<_, Option<i64>>(6)?
                .map(|t| u64::try_from(t).unwrap_or(0)),
            last_check: get_u64(r, 7)?,
            last_error: r.get(8)?,
            boot_id: r.get(9)?,
            first_seen: get_u64(r, 10)?,
        },
        r.get(4)?,
    ))
}

fn discovery_token_from_row(r: &Row<'_>) -> rusqlite::Result<DiscoveryToken> {
    Ok(DiscoveryToken {
        token: r.get(0)?,
        size: r.get(1)?,
        index: get_u64(r, 2)?,
        last_delete_index: get_u64(r, 3)?,
        created_at: get_u64(r, 4)?,
    })
}

fn registration_from_row(r: &Row<'_>) -> rusqlite::Result<Registration> {
    Ok(Registration {
        token: r.get(0)?,
        id: r.get(1)?,
        value: r.get(2)?,
        index: get_u64(r, 3)?,
        created_at: get_u64(r, 4)?,
    })
}

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<InstanceEvent> {
    Ok(InstanceEvent {
        app_id: r.get(0)?,
        machine_id: r.get(1)?,
        at: get_u64(r, 2)?,
        event_type: r.get(3)?,
        event_result: r.get(4)?,
        error_code: r.get(5)?,
        description: r.get(6)?,
        version: r.get(7)?,
        previous_version: r.get(8)?,
    })
}

/// Creates `path` empty with mode 0600 if it is missing, or sets an existing one's mode to 0600.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_instance() -> Instance {
        Instance {
            machine_id: "m1".into(),
            app_id: "app".into(),
            version: "1.0.0".into(),
            channel: "stable".into(),
            status: Status::Granted,
            target_version: Some("1.1.0".into()),
            granted_at: Some(10),
            last_check: 10,
            last_error: None,
            boot_id: Some("b1".into()),
            first_seen: 5,
        }
    }

    #[test]
    fn round_trips_every_record_through_a_reopened_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let mut channel = ChannelRecord::new("app", "stable", 5);
        channel.policy.halt_error_rate = Some(0.25);
        channel.policy.safe_mode = true;
        channel.version = Some("1.1.0".into());
        let package = PackageRecord {
            app_id: "app".into(),
            version: "1.1.0".into(),
            file_name: "update.payload".into(),
            path: Some("/x".into()),
            url: None,
            size: 42,
            sha256: "ab".repeat(32),
            min_from_version: Some("1.0.0".into()),
            manifest: "{}".into(),
            created_at: 3,
        };
        let app = AppRecord {
            id: "app".into(),
            name: "Kiln".into(),
        };
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store
                .apply(&[
                    Write::App(app.clone()),
                    Write::Package(package.clone()),
                    Write::Channel(channel.clone()),
                    Write::Instance(sample_instance()),
                ])
                .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.apps, vec![app]);
        assert_eq!(snapshot.packages, vec![package]);
        assert_eq!(snapshot.channels, vec![channel]);
        assert_eq!(snapshot.instances, vec![sample_instance()]);
    }

    #[test]
    fn events_come_back_newest_first_and_go_with_their_instance() {
        let mut store = SqliteStore::in_memory().unwrap();
        let event = |at, result| InstanceEvent {
            machine_id: "m1".into(),
            app_id: "app".into(),
            at,
            event_type: 3,
            event_result: result,
            error_code: None,
            description: String::new(),
            version: "1.0.0".into(),
            previous_version: None,
        };
        store
            .apply(&[
                Write::Instance(sample_instance()),
                Write::Event(event(1, 1)),
                Write::Event(event(2, 0)),
            ])
            .unwrap();
        let got = store.events("app", "m1", 10).unwrap();
        assert_eq!(got.iter().map(|e| e.at).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(store.recent_errors("app", 10).unwrap().len(), 1);
        // Recent errors come from the errors-only index, not a scan of every event.
        let plan: Vec<String> = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq FROM instance_events \
                 WHERE app_id = 'app' AND event_result = 0 ORDER BY seq DESC LIMIT 5",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("instance_events_errors")),
            "{plan:?}"
        );
        store
            .apply(&[Write::DeleteInstance {
                app_id: "app".into(),
                machine_id: "m1".into(),
            }])
            .unwrap();
        assert!(store.events("app", "m1", 10).unwrap().is_empty());
        assert!(!store.has_instance("app", "m1").unwrap());
    }

    #[test]
    fn a_database_of_schema_1_is_migrated_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO instance_events VALUES ('app', 'm1', 1, 1, 3, 0, 7, 'e', '1', NULL); \
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            store.recent_errors("app", 10).unwrap()[0].error_code,
            Some(7)
        );
    }

    #[test]
    fn refuses_a_database_from_a_newer_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
