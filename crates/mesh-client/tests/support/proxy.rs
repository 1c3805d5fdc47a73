//! A TCP proxy whose link can be cut: the network of one device going down
//! and coming back, while the server stays up.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection to `upstream` until [`CutProxy::cut`]; while
/// cut, open links are dropped and new ones are closed at once.
pub struct CutProxy {
    /// `ws://` URL of the proxy.
    pub url: String,
    up: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy in front of `upstream`, forwarding.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let up = Arc::new(watch::Sender::new(true));
        let accept = tokio::spawn({
            let up = up.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut link = up.subscribe();
                    if !*link.borrow_and_update() {
                        continue; // dropped: the client sees the link fail
                    }
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = copy_bidirectional(&mut client, &mut server) => {}
                            _ = link.wait_for(|up| !*up) => {}
                        }
                    });
                }
            }
        });
        CutProxy { url, up, accept }
    }

    /// Drops every open link and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
