//! A TCP proxy between one pod and Redis, to cut that link alone: it
//! forwards, blackholes (stops forwarding in both directions without
//! closing anything, as a partition that drops packets does: the bytes wait
//! and flow again on restore unless an end gave up first), or resets (every
//! connection through it is aborted with RST, and new ones are, until
//! restored).
//!
//! It only moves bytes; it must not look at them.

use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Forward,
    Blackhole,
    Reset,
}

/// The proxy: listens on 127.0.0.1, forwards to `upstream`; stops on drop.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Forward);
        let accept = tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(Proxy { addr, mode, accept })
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Mode::Reset);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((down, _)) = listener.accept().await else {
            continue;
        };
        // Zero linger: dropping a socket aborts it with RST.
        let _ = down.set_zero_linger();
        if *mode.borrow() == Mode::Reset {
            drop(down);
            continue;
        }
        tokio::spawn(link(down, upstream, mode.clone()));
    }
}

/// One proxied connection, until either end closes or the link is reset.
async fn link(down: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_zero_linger();
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    tokio::select! {
        _ = pump(down_r, up_w, mode.clone()) => {}
        _ = pump(up_r, down_w, mode) => {}
    }
    // Both halves of both sockets drop here: RST both ways.
}

/// Copies `from` to `to` while the mode allows; holds still while
/// blackholed; returns on EOF, an error or a reset.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            c = mode.changed() => {
                if c.is_err() {
                    return;
                }
                continue;
            }
        };
        if !passable(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while blackholed; false once the link is reset (or the proxy gone).
async fn passable(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|m| *m != Mode::Blackhole).await {
        Ok(m) => *m == Mode::Forward,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(c: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        c.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, c.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_holds_while_blackholed_and_resets() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let s = Duration::from_secs(5);
        assert_eq!(roundtrip(&mut c, s).await.unwrap(), b"ping");

        proxy.set(Mode::Blackhole);
        assert!(roundtrip(&mut c, Duration::from_millis(300))
            .await
            .is_none());
        proxy.set(Mode::Forward);
        // The held bytes arrive after the restore.
        let mut buf = [0u8; 4];
        tokio::time::timeout(s, c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");

        proxy.set(Mode::Reset);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(s, c.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let mut again = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(roundtrip(&mut again, Duration::from_millis(500))
            .await
            .is_none());
        proxy.set(Mode::Forward);
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(roundtrip(&mut fresh, s).await.unwrap(), b"ping");
    }
}
