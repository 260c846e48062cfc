//! The metrics endpoint's task, owned by the loop so that a reload can move it: the new address
//! is bound before the old task stops, so a reload that cannot bind changes nothing.

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

    /// Binds `listen` first (`None`: no endpoint); only then stops the old task.
    pub async fn rebind(&mut self, listen: Option<SocketAddr>) -> std::io::Result<()> {
        let listener = match listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        self.stop();
        match listener {
            Some(l) => self.serve(l),
            None => info!("metrics endpoint closed (metrics.listen unset)"),
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some((_, task)) = self.serving.take() {
            task.abort();
        }
    }
}
