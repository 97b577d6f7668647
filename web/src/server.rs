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
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::audit::Audit;
use crate::auth::AdminKey;
use crate::config::AdminConfig;
use crate::error::WebError;
use crate::history::History;

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
    /// The overview's trend samples.
    pub(crate) history: History,
    pub(crate) config: AdminConfig,
    /// Cancelled when the server begins to shut down: open event streams end on it, so
    /// the drain does not wait for them.
    pub(crate) shutdown: CancellationToken,
    /// `admin.tls`, loaded ([`AppState::load_tls`]).
    tls: Option<tokio_rustls::TlsAcceptor>,
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
            history: History::default(),
            config,
            shutdown: CancellationToken::new(),
            tls: None,
        }
    }

    /// Reads the certificate and key of `admin.tls`, if configured, so a bad file stops
    /// the start with an error naming it. [`serve`] calls it when the caller did not.
    pub fn load_tls(mut self) -> Result<Self, WebError> {
        if let (Some(tls), None) = (&self.config.tls, &self.tls) {
            self.tls = Some(crate::tls::acceptor(tls)?);
        }
        Ok(self)
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
    let state = state.load_tls().map_err(std::io::Error::other)?;
    let state = Arc::new(AppState {
        shutdown: shutdown.clone(),
        ..state
    });
    (state.store)
        .call(crate::routes::backup::remove_leftovers)
        .await;
    let stop_audit = CancellationToken::new();
    let audit_writer = state.audit.take_receiver().map(|rx| {
        let (state, stop) = (Arc::clone(&state), stop_audit.clone());
        tokio::spawn(async move {
            crate::audit::run_writer(state.store.clone(), &state.audit, rx, stop).await;
        })
    });
    let sampler = {
        let (state, stop) = (Arc::clone(&state), shutdown.clone());
        tokio::spawn(async move {
            crate::history::run_sampler(&state.broker, &state.store, &state.history, stop).await;
        })
    };
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        let scheme = if state.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "admin api listening");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (state, watcher) = (Arc::clone(&state), graceful.watcher());
                    connections.spawn(async move {
                        if let Err(err) = accept(stream, state, watcher).await {
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
    let _ = sampler.await;
    stop_audit.cancel();
    if let Some(writer) = audit_writer {
        let _ = writer.await;
    }
    Ok(())
}

/// One accepted socket: `TCP_NODELAY` so small JSON answers are not delayed, the TLS
/// handshake when `admin.tls` is set (within the header read timeout), then HTTP/1.
async fn accept(
    stream: TcpStream,
    state: Arc<AppState>,
    watcher: Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    match state.tls.clone() {
        None => watcher.watch(connection(stream, state)).await?,
        Some(acceptor) => {
            let tls = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| "TLS handshake timed out")??;
            watcher.watch(connection(tls, state)).await?;
        }
    }
    Ok(())
}

/// One HTTP/1 connection over `io`.
fn connection<IO>(
    io: IO,
    state: Arc<AppState>,
) -> impl GracefulConnection<Error = hyper::Error> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(crate::router::handle(&state, req).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
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
