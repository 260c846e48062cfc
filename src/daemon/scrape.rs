//! The metrics endpoint's task, owned by the loop so that a reload can move it: the new address
//! is bound before the old task stops, so a reload that cannot bind changes nothing.

use std::io::ErrorKind;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use crate::control::Incoming;

pub(super) struct Scrape {
    /// The loop's control channel, which each scrape asks for the role snapshot.
    to_loop: mpsc::Sender<Incoming>,
    serving: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Scrape {
    /// Starts serving on `listener` (bound at start-up, so a taken port stops the daemon there).
    pub fn start(listener: Option<TcpListener>, to_loop: mpsc::Sender<Incoming>) -> Scrape {
        let mut s = Scrape {
            to_loop,
            serving: None,
        };
        if let Some(l) = listener {
            s.serve(l);
        }
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        info!(listen = %addr, "serving metrics at /metrics");
        let task = tokio::spawn(crate::metrics::http::serve(
            listener,
            crate::metrics::init(),
            self.to_loop.clone(),
        ));
        self.serving = Some((addr, task));
    }

    /// Binds `listen` first (`None`: no endpoint); only then stops the old task. The one case
    /// that cannot bind first, the same port on another address (loopback to all interfaces),
    /// stops the old endpoint, binds, and restores the old one if that fails.
    pub async fn rebind(&mut self, listen: Option<SocketAddr>) -> std::io::Result<()> {
        let Some(addr) = listen else {
            self.stop_and_wait().await;
            info!("metrics endpoint closed (metrics.listen unset)");
            return Ok(());
        };
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::AddrInUse && self.port() == Some(addr.port()) => {
                let old = self.stop_and_wait().await;
                match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        if let Some(Ok(l)) = old.map(std::net::TcpListener::bind) {
                            if l.set_nonblocking(true).is_ok() {
                                if let Ok(l) = TcpListener::from_std(l) {
                                    self.serve(l);
                                }
                            }
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        self.stop_and_wait().await;
        self.serve(listener);
        Ok(())
    }

    fn port(&self) -> Option<u16> {
        self.serving.as_ref().map(|(a, _)| a.port())
    }

    /// Stops the endpoint and waits until its socket is closed; the address it had.
    async fn stop_and_wait(&mut self) -> Option<SocketAddr> {
        let (addr, task) = self.serving.take()?;
        task.abort();
        // Resolves once the task is dropped, and with it the listener.
        let _ = task.await;
        Some(addr)
    }

    pub fn stop(&mut self) {
        if let Some((_, task)) = self.serving.take() {
            task.abort();
        }
    }
}
