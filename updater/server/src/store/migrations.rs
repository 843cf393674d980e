//! The schema, as an ordered list of migrations. Each backend runs the ones newer than the
//! database's recorded version, in one transaction each; the SQL sticks to what SQLite and
//! PostgreSQL both accept (TEXT, BIGINT, DOUBLE PRECISION, no AUTOINCREMENT).

/// Migration `i` (0-based) brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: apps, packages, channels with their policy, instances and their events.
    r#"
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE packages (
    app_id TEXT NOT NULL REFERENCES apps(id),
    version TEXT NOT NULL,
    file_name TEXT NOT NULL,
    path TEXT,
    url TEXT,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    min_from_version TEXT,
    manifest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, version)
);
CREATE TABLE channels (
    app_id TEXT NOT NULL REFERENCES apps(id),
    name TEXT NOT NULL,
    version TEXT,
    paused BIGINT NOT NULL,
    halted TEXT,
    max_updates_per_period BIGINT NOT NULL,
    period_secs BIGINT NOT NULL,
    percent BIGINT NOT NULL,
    update_timeout_secs BIGINT NOT NULL,
    safe_mode BIGINT NOT NULL,
    halt_error_rate DOUBLE PRECISION,
    halt_min_errors BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name)
);
CREATE TABLE instances (
    app_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    version TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    target_version TEXT,
    granted_at BIGINT,
    last_check BIGINT NOT NULL,
    last_error TEXT,
    boot_id TEXT,
    PRIMARY KEY (app_id, machine_id)
);
CREATE TABLE instance_events (
    app_id TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    event_type BIGINT NOT NULL,
    event_result BIGINT NOT NULL,
    error_code BIGINT,
    description TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_version TEXT
);
CREATE INDEX instance_events_by_instance ON instance_events (app_id, machine_id, seq);
CREATE INDEX instance_events_errors ON instance_events (app_id, event_result, seq);
"#,
    // 2: the errors index holds errors only. Nearly every event is a success, and each index
    // entry is a write on the hot path of check-ins.
    r#"
DROP INDEX instance_events_errors;
CREATE INDEX instance_events_errors ON instance_events (app_id, seq) WHERE event_result = 0;
"#,
    // 3: where the leading server of several sharing one database is reached (PostgreSQL;
    // a SQLite database has one server and leaves it empty).
    r#"
CREATE TABLE leader (
    id BIGINT PRIMARY KEY,
    url TEXT NOT NULL,
    since BIGINT NOT NULL
);
"#,
    // 4: etcd discovery tokens and the members registered under them (`discovery`). The
    // column is `etcd_index` because INDEX is a keyword of both dialects.
    r#"
CREATE TABLE discovery_tokens (
    token TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    etcd_index BIGINT NOT NULL,
    last_delete_index BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE discovery_registrations (
    token TEXT NOT NULL REFERENCES discovery_tokens(token),
    id TEXT NOT NULL,
    value TEXT NOT NULL,
    etcd_index BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (token, id)
);
"#,
    // 5: when each machine was first recorded; machines recorded before count as long known.
    r#"
ALTER TABLE instances ADD COLUMN first_seen BIGINT NOT NULL DEFAULT 0;
"#,
];
