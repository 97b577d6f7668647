//! The accept loop: one hyper HTTP/1 connection task per socket, drained on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::BrokerHandle;
use fleetmq_storage::Store;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::audit::Audit;
use crate::auth::AdminKey;
use crate::config::AdminConfig;

/// How long open connections get to finish their requests after shutdown is signalled.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// A client that has not sent its request headers within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything a request handler needs.
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) broker: BrokerHandle,
    pub(crate) access: Arc<Access>,
    pub(crate) audit: Audit,
    pub(crate) config: AdminConfig,
    /// Cancelled when the server begins to shut down: open event streams end on it, so
    /// the drain does not wait for them.
    pub(crate) shutdown: CancellationToken,
}

impl AppState {
    /// Bundles the running pieces the admin API works with.
    pub fn new(store: Store, broker: BrokerHandle, key: AdminKey, config: AdminConfig) -> Self {
        let access = Arc::new(Access::new(key, store.token_key().clone()));
        AppState {
            store,
            broker,
            access,
            audit: Audit::new(),
            config,
            shutdown: CancellationToken::new(),
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` is cancelled, then stops
/// accepting, ends open event streams, lets open requests finish for up to
/// [`DRAIN_DEADLINE`], writes the audit entries still queued, and returns.
///
/// A failed `accept` (a client that hung up, out of file descriptors) is logged and
/// retried, never fatal: the error in the signature is reserved for setup failures.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(AppState {
        shutdown: shutdown.clone(),
        ..state
    });
    let stop_audit = CancellationToken::new();
    let audit_writer = state.audit.take_receiver().map(|rx| {
        let (state, stop) = (Arc::clone(&state), stop_audit.clone());
        tokio::spawn(async move {
            crate::audit::run_writer(state.store.clone(), &state.audit, rx, stop).await;
        })
    });
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin api listening");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = graceful.watch(connection(stream, Arc::clone(&state)));
                    connections.spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(%peer, error = %err, "admin api connection failed");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "admin api accept failed; retrying");
                    // Typically out of file descriptors: give open connections a moment.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    drain(graceful, connections).await;
    stop_audit.cancel();
    if let Some(writer) = audit_writer {
        let _ = writer.await;
    }
    Ok(())
}

/// One HTTP/1 connection; `TCP_NODELAY` so small JSON answers are not delayed.
fn connection(
    stream: TcpStream,
    state: Arc<AppState>,
) -> impl GracefulConnection<Error = hyper::Error> + Send {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(crate::router::handle(&state, req).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
}

/// Signals every connection to finish after its current request, waits up to the
/// deadline, then cuts whatever is left.
async fn drain(graceful: GracefulShutdown, mut connections: JoinSet<()>) {
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "admin api connections still open after the drain deadline; closing them"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
