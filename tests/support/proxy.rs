//! A TCP proxy on loopback that a test can cut like a network partition: while cut, bytes
//! stop flowing both ways and new connections are accepted but never answered, so the
//! client sees time-outs, as it would when packets are dropped.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(handle(client, upstream, rx.clone()));
            }
        });
        CutProxy { addr, cut, task }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>, want: bool) {
    while *rx.borrow_and_update() != want {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, cut: watch::Receiver<bool>) {
    if *cut.borrow() {
        // Hold the connection silently until healed, then close it.
        wait_for(cut, false).await;
        let _ = client.shutdown().await;
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut sw) => {}
        _ = tokio::io::copy(&mut sr, &mut cw) => {}
        _ = wait_for(cut.clone(), true) => {
            // Partitioned: keep both sockets open and silent until healed.
            wait_for(cut, false).await;
        }
    }
}
