//! systemd's notify protocol, by hand: one datagram to `$NOTIFY_SOCKET` per state change
//! (READY=1, RELOADING=1, STOPPING=1, STATUS=...). No crate is worth a single `sendto`.

use std::os::unix::net::UnixDatagram;

/// Where systemd listens, if it does: a path, or an abstract socket written `@name`.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` once; without it every call is a no-op.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            use std::os::linux::net::SocketAddrExt;
            let bytes = path.as_encoded_bytes();
            let address = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name),
                None => std::os::unix::net::SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), address) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET is set but unusable: {e}");
                    None
                }
            }
        });
        Notifier { socket }
    }

    /// Whether systemd listens: callers skip building a status nobody reads.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `KEY=VALUE` lines; failures are logged, never fatal (systemd may be gone).
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::debug!("sd_notify {state:?}: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// RELOADING=1 wants MONOTONIC_USEC from systemd 253 on (Type=notify-reload); older
    /// versions ignore it.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// A status is one line: a newline would start a new assignment in the protocol.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("fanlink-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        notifier.ready("1 fan:\nfan-250 up");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=1 fan: fan-250 up");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
