//! The agent's own sockets to the server, so that a connection's slot is given back only
//! when its backend is gone: the server closes its end of the socket when the backend
//! process ends, and a second descriptor of the socket, kept after the driver is done
//! with it, sees that close. A backend that cannot end (stopped, stuck in the kernel)
//! keeps its slot, so the agent never has more backends than its cap, however slow the
//! server is to end them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A socket to the server: TCP, or the Unix socket in a directory.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket.
    Unix(UnixStream),
}

/// Connects to `host` (a socket directory when it starts with `/`) on `port`; returns
/// the stream and a second descriptor of the same socket for [`backend_gone`].
pub async fn connect(host: &str, port: u16) -> io::Result<(Stream, OwnedFd)> {
    let stream = if host.starts_with('/') {
        let path = std::path::Path::new(host).join(format!(".s.PGSQL.{port}"));
        Stream::Unix(
            UnixStream::connect(&path)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        )
    } else {
        let s = TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        keepalive(s.as_raw_fd())?;
        Stream::Tcp(s)
    };
    let fd = match &stream {
        Stream::Tcp(s) => s.as_raw_fd(),
        Stream::Unix(s) => s.as_raw_fd(),
    };
    Ok((stream, dup(fd)?))
}

/// TCP keepalive on, as libpq and tokio-postgres have it: a server that vanished from
/// the network is noticed.
fn keepalive(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` (an int of the size given) for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (owned by nobody else) or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor that only this OwnedFd will close.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Tells the server this side will send nothing more (a FIN on TCP, end of file on a
/// Unix socket), while `fd` — a second descriptor of the socket — still holds it open
/// to see the server close its end: a backend waiting for the rest of a startup that
/// will never come ends instead of waiting for its authentication timeout.
pub fn end_writes(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor this OwnedFd keeps open; an error (already
    // closed by the peer) leaves nothing to do.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR);
    }
}

/// Waits until the server has closed its end of the socket `fd` (its backend ended),
/// reading and dropping whatever it still sends, for at most `limit`. True when it did.
pub async fn backend_gone(fd: OwnedFd, limit: Duration) -> bool {
    // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, the same descriptor,
    // until the AsyncFd is dropped.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
    else {
        return false;
    };
    let wait = async {
        let mut buf = [0u8; 512];
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`; MSG_DONTWAIT keeps
            // it from blocking whatever the descriptor's flags are.
            let n = unsafe {
                libc::recv(
                    fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                // The server closed (or reset) its end: the backend is gone.
                0 => return,
                n if n > 0 => continue,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        ready.clear_ready();
                    } else if e.kind() != io::ErrorKind::Interrupted {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(limit, wait).await.is_ok()
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_waits_for_the_peer_to_close_not_for_our_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let listener =
                tokio::net::UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("bind");
            let host = dir.path().to_str().expect("utf8").to_string();
            let (connected, accepted) = tokio::join!(connect(&host, 5432), listener.accept());
            let (stream, watch) = connected.expect("connect");
            let (server, _) = accepted.expect("accept");
            // Our end closed, the server's still open (a stopped backend): not gone.
            drop(stream);
            let watch2 = dup(watch.as_raw_fd()).expect("dup");
            assert!(!backend_gone(watch, Duration::from_millis(200)).await);
            // The server's end closes (the backend ended): gone at once.
            drop(server);
            assert!(backend_gone(watch2, Duration::from_secs(5)).await);
        });
    }

    #[test]
    fn a_missing_socket_names_its_path() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let e = rt
            .block_on(connect("/nonexistent-dir", 5433))
            .expect_err("no socket");
        assert!(
            e.to_string()
                .starts_with("/nonexistent-dir/.s.PGSQL.5433: "),
            "{e}"
        );
    }
}
