//! `POST /api/v1/backup`: a consistent copy of the whole store, streamed as a redb file.
//!
//! The copy is written next to the live file (same disk, so no surprise about space
//! on another one), opened, unlinked at once, and streamed from the open handle: nothing
//! is left behind once the answer is sent, and two backups at once do not meet.
//! `Content-Length` is set, so a client sees a cut-off transfer as an error.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fleetmq_storage::{now_ms, BackupSummary, Store};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt as _;

use crate::error::ApiError;
use crate::response::ApiResponse;
use crate::AppState;

/// Bytes per body frame.
const CHUNK: usize = 256 * 1024;

/// Makes each temporary file's name unique within the process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// `POST /api/v1/backup`.
pub(crate) async fn create(state: &AppState) -> Result<ApiResponse, ApiError> {
    let (file, len, summary) = state.store.call(snapshot).await?;
    tracing::info!(
        bytes = len,
        tables = summary.tables,
        entries = summary.entries,
        "backup taken"
    );
    let file = tokio::fs::File::from_std(file);
    let frames = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
            }
            Err(err) => {
                // The client sees fewer bytes than Content-Length: a failed transfer.
                tracing::error!(error = %err, "reading the backup copy failed");
                None
            }
        }
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    let value = |v: String| HeaderValue::from_str(&v).map_err(ApiError::internal);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, value(len.to_string())?);
    let name = format!("attachment; filename=\"fleetmq-{}.redb\"", now_ms());
    h.insert(header::CONTENT_DISPOSITION, value(name)?);
    h.insert("x-backup-tables", value(summary.tables.to_string())?);
    h.insert("x-backup-entries", value(summary.entries.to_string())?);
    Ok(response)
}

/// Removes copies a broker stopped mid-backup (SIGKILL, power loss) left beside the live
/// file; blocking. Called as the server starts, before any backup can run.
pub(crate) fn remove_leftovers(store: &Store) {
    let Some(dir) = store.path().parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".backup-") && name.ends_with(".redb.tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed an unfinished backup copy"),
                Err(err) => {
                    tracing::warn!(file = %name, error = %err, "cannot remove an unfinished backup copy")
                }
            }
        }
    }
}

/// Writes the copy beside the live file, opens it and unlinks it; blocking.
fn snapshot(store: &Store) -> Result<(File, u64, BackupSummary), ApiError> {
    let dir = store.path().parent().map(PathBuf::from).unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        ".backup-{}-{}-{n}.redb.tmp",
        std::process::id(),
        now_ms()
    ));
    let summary = store.backup_to(&temp).map_err(ApiError::internal)?;
    let opened = File::open(&temp).and_then(|f| Ok((f.metadata()?.len(), f)));
    if let Err(err) = std::fs::remove_file(&temp) {
        tracing::warn!(path = %temp.display(), error = %err, "cannot remove the backup copy");
    }
    let (len, file) = opened.map_err(ApiError::internal)?;
    Ok((file, len, summary))
}
