//! deskpulse: real-time monitoring of e-commerce chat desks.
//!
//! Events flow `ingest → log → engine → publish`; see ARCHITECTURE.md.

pub mod allocator;
pub mod config;
pub mod engine;
pub mod http;
pub mod ingest;
pub mod log;
pub mod node;
pub mod protocol;
pub mod publish;
pub mod replay;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::App;
use crate::http::auth::Tokens;
use crate::node::{Node, NodeOptions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No tokens configured and a non-loopback address.
    #[error("refusing to listen on {0} without tokens: add [[tokens]] to the config, or listen on 127.0.0.1")]
    OpenOnNetwork(SocketAddr),
    /// Recovery or thread start failed.
    #[error("cannot start the node: {0}")]
    Io(#[from] std::io::Error),
}

/// A node ready to serve: recovered, threads started, not yet listening.
#[derive(Debug)]
pub struct Server {
    node: Node,
    config: Arc<Config>,
    started: Instant,
}

impl Server {
    /// Recovers from the data dir and starts the node (blocking).
    pub fn start(config: Arc<Config>, options: NodeOptions) -> Result<Self, StartError> {
        let started = Instant::now();
        let node = Node::start(config.clone(), options)?;
        Ok(Self { node, config, started })
    }

    /// The node handle.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Serves on `listener` until `shutdown` completes, then closes sockets
    /// with a close frame, drains the log and stops the threads.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = listener.local_addr()?;
        let tokens = Tokens::from_config(&self.config);
        let open = tokens.is_empty();
        if open && !addr.ip().is_loopback() {
            return Err(StartError::OpenOnNetwork(addr));
        }
        let cancel = CancellationToken::new();
        let app = Arc::new(App {
            node: self.node.clone(),
            tokens,
            open,
            shutdown: cancel.clone(),
            allowed_origins: self.config.server.allowed_origins.clone(),
            started: self.started,
        });
        // The read model is full before the first subscriber can connect.
        self.node.publish_now().await;
        self.node
            .query(|_| ())
            .await
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        self.node.spawn_timers(cancel.clone());
        let router = http::router(app.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let graceful = cancel.clone();
        // Acks and pushes are small writes: without TCP_NODELAY one that
        // follows another waits for the peer's delayed ACK (up to 40 ms).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
            }
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { graceful.cancelled().await })
            .await?;
        // axum does not wait for upgraded sockets: give them time to send
        // their close frames and last acks.
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = self.node.counters();
        while Instant::now() < deadline
            && (c.ws_ingest.load(std::sync::atomic::Ordering::Relaxed) > 0
                || c.ws_stream.load(std::sync::atomic::Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(app);
        let node = self.node;
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        Ok(())
    }
}
