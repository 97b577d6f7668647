//! Every redb table of the store, in one place: each table's definition (name, key and
//! value types), the functions that create them when a file is opened, and the schema
//! version with the migrations between versions.
//!
//! The modules that read and write a table import its definition from here; this module
//! imports none of them, so the tables can be created (and a file upgraded) without the
//! code that uses them.
//!
//! Values are versioned encodings (`codec`, and each module's own records); the table
//! docs name the stored type.

use redb::{ReadableTable as _, TableDefinition, TableError, WriteTransaction};

use crate::error::StoreError;

// ---- meta ----------------------------------------------------------------------

pub(crate) const META_TABLE: &str = "meta";
/// Setting name → its encoding: [`SCHEMA_VERSION_KEY`], the admin key hash (`meta`) and
/// the device token key (`token_key`).
pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new(META_TABLE);

/// Key of the file's schema version in [`META`]: a little-endian `u32`.
pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Key of the built-in admin API key's hash in [`META`]: `codec::StoredCredential`.
pub(crate) const ADMIN_KEY_HASH_KEY: &str = "admin_key_hash";

/// Key in [`META`] present (empty value) once the built-in admin key was revoked through
/// the API, so a restart does not generate a new one (`api_keys`).
pub(crate) const ADMIN_KEY_REVOKED_KEY: &str = "admin_key_revoked";

// ---- named admin API keys and the audit log ------------------------------------------

pub(crate) const API_KEYS_TABLE: &str = "api_keys";
/// Key name → `api_keys::StoredApiKey`.
pub(crate) const API_KEYS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(API_KEYS_TABLE);

pub(crate) const AUDIT_TABLE: &str = "audit";
/// Sequence number (ascending with time) → `audit::StoredAuditEntry`.
pub(crate) const AUDIT: TableDefinition<'static, u64, &[u8]> = TableDefinition::new(AUDIT_TABLE);

// ---- devices, service clients, retained messages ---------------------------------

pub(crate) const DEVICES_TABLE: &str = "devices";
/// Device id → `codec::StoredDevice`.
pub(crate) const DEVICES: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(DEVICES_TABLE);

pub(crate) const SERVICE_CLIENTS_TABLE: &str = "service_clients";
/// Client name → `codec::StoredServiceClient`.
pub(crate) const SERVICE_CLIENTS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(SERVICE_CLIENTS_TABLE);

pub(crate) const RETAINED_TABLE: &str = "retained";
/// Topic name → `codec::StoredRetained`.
pub(crate) const RETAINED: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(RETAINED_TABLE);

// ---- device state and configuration ------------------------------------------------

pub(crate) const DEVICE_STATE_TABLE: &str = "device_state";
/// Device id → `device_state::StoredState`.
pub(crate) const DEVICE_STATE: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(DEVICE_STATE_TABLE);

pub(crate) const DEVICE_CONFIG_TABLE: &str = "device_config";
/// (device id, version) → `device_config::StoredConfig`.
pub(crate) const DEVICE_CONFIG: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new(DEVICE_CONFIG_TABLE);

// ---- sessions ----------------------------------------------------------------------

pub(crate) const SESSIONS_TABLE: &str = "sessions";
/// Session key → `sessions::records::StoredSession`.
pub(crate) const SESSIONS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(SESSIONS_TABLE);

pub(crate) const SESSION_QUEUE_TABLE: &str = "session_queue";
/// (session key, sequence) → `sessions::records::StoredQueued`.
pub(crate) const SESSION_QUEUE: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new(SESSION_QUEUE_TABLE);

// ---- commands (see `commands` for what each index is for) ---------------------------

pub(crate) const COMMANDS_TABLE: &str = "commands";
/// Command id → `commands::format::StoredCommand`.
pub(crate) const COMMANDS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(COMMANDS_TABLE);
/// Device id → id of its newest command.
pub(crate) const COMMAND_HEADS: TableDefinition<'static, &str, &str> =
    TableDefinition::new("command_heads");
/// Command id → id of the same device's previous command, `""` for its first.
pub(crate) const COMMAND_CHAIN: TableDefinition<'static, &str, &str> =
    TableDefinition::new("command_chain");
/// `(device id, seq)` → command id, non-terminal commands only.
pub(crate) const COMMANDS_OPEN: TableDefinition<'static, (&str, u64), &str> =
    TableDefinition::new("commands_open");
/// `(deadline unix ms, command id)`, one per non-terminal command.
pub(crate) const COMMAND_DEADLINES: TableDefinition<'static, (u64, &str), ()> =
    TableDefinition::new("command_deadlines");
/// `(device id, idempotency key)` → command id.
pub(crate) const COMMAND_IDEMPOTENCY: TableDefinition<'static, (&str, &str), &str> =
    TableDefinition::new("command_idempotency");
/// The next `seq` and `status/<status>` → count.
pub(crate) const COMMAND_COUNTERS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("command_counters");
/// Terminal commands whose event is not known to be emitted.
pub(crate) const COMMAND_UNANNOUNCED: TableDefinition<'static, &str, ()> =
    TableDefinition::new("command_unannounced");
/// The table schema 1 kept instead of [`COMMAND_HEADS`] and [`COMMAND_CHAIN`]:
/// `(device id, seq)` → command id, every command. Only [`upgrade`] opens it.
const V1_COMMANDS_BY_DEVICE: TableDefinition<'static, (&str, u64), &str> =
    TableDefinition::new("commands_by_device");

// ---- telemetry (see `telemetry` for the key layouts) ---------------------------------

pub(crate) const TELEMETRY_BLOCKS_TABLE: &str = "telemetry_blocks";
/// Block key (device, NUL, max_ts BE, id BE) → `telemetry::block::StoredBlock`.
pub(crate) const TELEMETRY_BLOCKS: TableDefinition<'static, &[u8], &[u8]> =
    TableDefinition::new(TELEMETRY_BLOCKS_TABLE);

pub(crate) const TELEMETRY_POINTS_TABLE: &str = "telemetry_points";
/// The format before blocks: point key (device, NUL, ts_ms BE, seq BE) →
/// `telemetry::StoredPoint`. Read and emptied, never created or written.
pub(crate) const TELEMETRY_POINTS: TableDefinition<'static, &[u8], &[u8]> =
    TableDefinition::new(TELEMETRY_POINTS_TABLE);

pub(crate) const TELEMETRY_LATEST_TABLE: &str = "telemetry_latest";
/// Device → `telemetry::summary::StoredSummary`.
pub(crate) const TELEMETRY_LATEST: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(TELEMETRY_LATEST_TABLE);

/// Counter name → value.
pub(crate) const TELEMETRY_META: TableDefinition<'static, &str, u64> =
    TableDefinition::new("telemetry_meta");

// ---- device events (see `device_events`) ---------------------------------------------

pub(crate) const DEVICE_EVENTS_TABLE: &str = "device_events";
/// `(device, at_ms, seq)` → `device_events::StoredEvent`.
pub(crate) const DEVICE_EVENTS: TableDefinition<'static, (&str, u64, u64), &[u8]> =
    TableDefinition::new(DEVICE_EVENTS_TABLE);
/// `(at_ms, seq)` → device, for retention by age.
pub(crate) const DEVICE_EVENTS_BY_AGE: TableDefinition<'static, (u64, u64), &str> =
    TableDefinition::new("device_events_by_age");
/// Device → how many events it has stored.
pub(crate) const DEVICE_EVENT_COUNTS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("device_event_counts");
/// Counter name → value; only the next `seq` so far.
pub(crate) const DEVICE_EVENTS_META: TableDefinition<'static, &str, u64> =
    TableDefinition::new("device_events_meta");

// ---- webhook outbox (see `outbox`) ---------------------------------------------------

pub(crate) const OUTBOX_DELIVERIES_TABLE: &str = "outbox_deliveries";
/// Delivery id → `outbox::records::StoredDelivery`.
pub const OUTBOX_DELIVERIES: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new(OUTBOX_DELIVERIES_TABLE);
/// `(url, delivery id)` of every owed delivery.
pub const OUTBOX_QUEUE: TableDefinition<'static, (&str, u64), ()> =
    TableDefinition::new("outbox_queue");
/// Delivery ids of given-up deliveries.
pub const OUTBOX_DEAD: TableDefinition<'static, u64, ()> = TableDefinition::new("outbox_dead");

pub(crate) const OUTBOX_URLS_TABLE: &str = "outbox_urls";
/// URL → `outbox::records::StoredUrlState`.
pub const OUTBOX_URLS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(OUTBOX_URLS_TABLE);
/// Counters; only the next delivery id so far.
pub const OUTBOX_META: TableDefinition<'static, &str, u64> = TableDefinition::new("outbox_meta");

// ---- webhook endpoints (see `webhook_endpoints`) -----------------------------------

pub(crate) const WEBHOOK_ENDPOINTS_TABLE: &str = "webhook_endpoints";
/// Endpoint id → `webhook_endpoints::StoredEndpoint`: the endpoints created through the
/// admin API.
pub(crate) const WEBHOOK_ENDPOINTS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(WEBHOOK_ENDPOINTS_TABLE);

// ---- jobs (see `jobs`) ---------------------------------------------------------------

pub(crate) const JOBS_TABLE: &str = "jobs";
/// Job id → `jobs::StoredJob`.
pub(crate) const JOBS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new(JOBS_TABLE);
/// (job id, index) → device id: a job's target set.
pub(crate) const JOB_TARGETS: TableDefinition<'static, (&str, u32), &str> =
    TableDefinition::new("job_targets");
/// (job id, index) → command id of that target (`""`: skipped).
pub(crate) const JOB_COMMANDS: TableDefinition<'static, (&str, u32), &str> =
    TableDefinition::new("job_commands");

// ---- alarms (see `alarms`) ------------------------------------------------------------

pub(crate) const ALARM_RULES_TABLE: &str = "alarm_rules";
/// Rule id → `alarms::records::StoredRule`.
pub(crate) const ALARM_RULES: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(ALARM_RULES_TABLE);

pub(crate) const ALARMS_TABLE: &str = "alarms";
/// Alarm sequence number → `alarms::records::StoredAlarm`.
pub(crate) const ALARMS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new(ALARMS_TABLE);

pub(crate) const ALARM_STATE_TABLE: &str = "alarm_state";
/// `(source key, device)` → `alarms::records::StoredState`.
pub(crate) const ALARM_STATE: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new(ALARM_STATE_TABLE);

/// Counter name → value; only the next alarm sequence number so far.
pub(crate) const ALARMS_META: TableDefinition<'static, &str, u64> =
    TableDefinition::new("alarms_meta");

// ---- the overview's trend (see `stats_history`) ------------------------------------------

pub(crate) const STATS_HISTORY_TABLE: &str = "stats_history";
/// Sample time (unix ms) → `stats_history` encoding of the counters then.
pub(crate) const STATS_HISTORY: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new(STATS_HISTORY_TABLE);

// ---- creating the tables ---------------------------------------------------------------

/// Creates every table a reader expects (all but [`TELEMETRY_POINTS`], which only an
/// older file has), records the schema version of a new file and upgrades an older one,
/// in `txn`; returns the version the file had (newer ones are left alone for the caller
/// to refuse).
pub(crate) fn prepare(txn: &WriteTransaction) -> Result<u32, StoreError> {
    txn.open_table(DEVICES)?;
    txn.open_table(SERVICE_CLIENTS)?;
    txn.open_table(RETAINED)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(SESSION_QUEUE)?;
    txn.open_table(DEVICE_STATE)?;
    txn.open_table(DEVICE_CONFIG)?;
    txn.open_table(API_KEYS)?;
    txn.open_table(AUDIT)?;
    create_command_tables(txn)?;
    create_telemetry_tables(txn)?;
    create_outbox_tables(txn)?;
    create_device_event_tables(txn)?;
    txn.open_table(WEBHOOK_ENDPOINTS)?;
    // New tables need no schema version: an older build never opens them.
    txn.open_table(JOBS)?;
    txn.open_table(JOB_TARGETS)?;
    txn.open_table(JOB_COMMANDS)?;
    create_alarm_tables(txn)?;
    txn.open_table(STATS_HISTORY)?;
    let found = init_version(txn)?;
    upgrade(txn, found)?;
    Ok(found)
}

/// Creates every command table.
pub(crate) fn create_command_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(COMMANDS)?;
    txn.open_table(COMMAND_HEADS)?;
    txn.open_table(COMMAND_CHAIN)?;
    txn.open_table(COMMANDS_OPEN)?;
    txn.open_table(COMMAND_DEADLINES)?;
    txn.open_table(COMMAND_IDEMPOTENCY)?;
    txn.open_table(COMMAND_COUNTERS)?;
    txn.open_table(COMMAND_UNANNOUNCED)?;
    Ok(())
}

/// Creates the telemetry tables that are written ([`TELEMETRY_POINTS`] is not).
pub(crate) fn create_telemetry_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TELEMETRY_BLOCKS)?;
    txn.open_table(TELEMETRY_LATEST)?;
    txn.open_table(TELEMETRY_META)?;
    Ok(())
}

/// Creates every device event table. New tables need no schema version: an older
/// build never opens them.
pub(crate) fn create_device_event_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(DEVICE_EVENTS)?;
    txn.open_table(DEVICE_EVENTS_BY_AGE)?;
    txn.open_table(DEVICE_EVENT_COUNTS)?;
    txn.open_table(DEVICE_EVENTS_META)?;
    Ok(())
}

/// Creates every alarm table. New tables need no schema version: an older build
/// never opens them.
pub(crate) fn create_alarm_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ALARM_RULES)?;
    txn.open_table(ALARMS)?;
    txn.open_table(ALARM_STATE)?;
    txn.open_table(ALARMS_META)?;
    Ok(())
}

/// Creates every outbox table.
pub(crate) fn create_outbox_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(OUTBOX_DELIVERIES)?;
    txn.open_table(OUTBOX_QUEUE)?;
    txn.open_table(OUTBOX_DEAD)?;
    txn.open_table(OUTBOX_URLS)?;
    txn.open_table(OUTBOX_META)?;
    Ok(())
}

// ---- schema version and migrations -----------------------------------------------------

/// The layout (set of tables and record versions) this build writes. Bump it
/// only when an older build could misread the file; new record versions alone
/// do not need it, since old builds report them as corrupt instead.
///
/// - 1: the first layout.
/// - 2: a device's command history is a chain ([`COMMAND_HEADS`], [`COMMAND_CHAIN`])
///   instead of the `commands_by_device` index ([`migrate_v1_command_index`]).
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// Creates [`META`] and records the schema version of a new file; returns the
/// version found in the file.
fn init_version(txn: &WriteTransaction) -> Result<u32, StoreError> {
    let mut table = txn.open_table(META)?;
    let found = match table.get(SCHEMA_VERSION_KEY)? {
        Some(v) => Some(decode_version(v.value())?),
        None => None,
    };
    match found {
        Some(version) => Ok(version),
        None => {
            table.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
            Ok(SCHEMA_VERSION)
        }
    }
}

/// Brings a file of an older schema to [`SCHEMA_VERSION`] inside `txn` and records
/// the new version; `found` is what [`init_version`] returned. Newer files are left alone
/// (the caller refuses them).
fn upgrade(txn: &WriteTransaction, found: u32) -> Result<(), StoreError> {
    if found >= SCHEMA_VERSION {
        return Ok(());
    }
    tracing::info!(
        from = found,
        to = SCHEMA_VERSION,
        "upgrading the store's schema (one transaction; a large command history takes a while)"
    );
    if found < 2 {
        migrate_v1_command_index(txn)?;
    }
    txn.open_table(META)?
        .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
    tracing::info!(from = found, to = SCHEMA_VERSION, "store schema upgraded");
    Ok(())
}

/// Decodes the schema version stored under [`SCHEMA_VERSION_KEY`].
pub(crate) fn decode_version(bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: META_TABLE,
        key: SCHEMA_VERSION_KEY.to_owned(),
        reason: format!("expected 4 bytes, found {}", bytes.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}

/// Schema 1 → 2: builds [`COMMAND_HEADS`] and [`COMMAND_CHAIN`] from schema 1's
/// `commands_by_device` index (`(device, seq)` → command id, so each device's entries
/// are in creation order) and deletes it. Part of opening a schema-1 file, in the same
/// transaction that records schema 2, so a crash leaves either layout whole.
fn migrate_v1_command_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut heads = txn.open_table(COMMAND_HEADS)?;
    let mut chain = txn.open_table(COMMAND_CHAIN)?;
    {
        let old = match txn.open_table(V1_COMMANDS_BY_DEVICE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut last: Option<(String, String)> = None;
        for entry in old.iter()? {
            let (key, id) = entry?;
            let (device, id) = (key.value().0, id.value());
            let prev = match &last {
                Some((d, prev)) if d == device => prev.as_str(),
                _ => "",
            };
            chain.insert(id, prev)?;
            heads.insert(device, id)?;
            last = Some((device.to_owned(), id.to_owned()));
        }
    }
    txn.delete_table(V1_COMMANDS_BY_DEVICE)?;
    Ok(())
}
