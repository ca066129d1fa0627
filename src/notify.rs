//! sd_notify(3) without libsystemd: datagrams to `NOTIFY_SOCKET`, for
//! `podman run --sdnotify=container` and Quadlet `Notify=true`.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends readiness and status to systemd (through conmon); a no-op when
/// `NOTIFY_SOCKET` is not set.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn new(socket: Option<&str>) -> Notifier {
        let target = socket.and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            } else {
                SocketAddr::from_pathname(path)
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = path, error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                    None
                }
            }
        });
        Notifier { target }
    }

    /// `READY=1`: PostgreSQL accepts connections.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str());
        n.ready("running as primary");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running as primary");
        n.stopping();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
        Notifier::new(None).ready("nothing happens");
    }
}
