//! ICMP echo for `fanlink test`: a raw socket (root only, as the command is), an echo of a
//! chosen size, optionally with DF set, and the answer or its absence. The only packets
//! fanlink itself sends; the tests send them between namespaces they made.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const IP_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;

/// What became of one echo request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// The reply, and how long it took.
    Answered(Duration),
    /// Nothing came back in time.
    Silent,
    /// A router (or this host) said the destination is unreachable, with the ICMP code
    /// (4: fragmentation needed and DF set, the path is narrower than the packet).
    Unreachable(u8),
    /// This host refused to send it: EMSGSIZE for a DF packet wider than the route's MTU.
    TooBig,
}

/// A raw ICMP socket with its own echo identifier.
pub struct Pinger {
    fd: OwnedFd,
    id: u16,
    seq: u16,
}

impl Pinger {
    pub fn new() -> io::Result<Pinger> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Pinger { fd, id: (std::process::id() & 0xffff) as u16, seq: 0 })
    }

    /// Sends one echo request of `size` bytes of IP packet (at least 28) to `to`, with DF
    /// set when `dont_fragment`, and waits up to `wait` for what comes of it.
    pub fn echo(
        &mut self,
        to: Ipv4Addr,
        size: usize,
        dont_fragment: bool,
        wait: Duration,
    ) -> io::Result<Echo> {
        self.seq = self.seq.wrapping_add(1);
        let pmtu = if dont_fragment { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_DONT };
        self.set_int(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, pmtu)?;
        let packet = echo_request(self.id, self.seq, size.max(IP_HEADER + ICMP_HEADER) - IP_HEADER);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(to).to_be() },
            sin_zero: [0; 8],
        };
        let start = Instant::now();
        // SAFETY: the buffer and address outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EMSGSIZE) => Ok(Echo::TooBig),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; 65536];
        loop {
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() || !self.readable(left)? {
                return Ok(Echo::Silent);
            }
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match answer(&buf[..n as usize], to, self.id, self.seq) {
                Some(Answer::Reply) => return Ok(Echo::Answered(start.elapsed())),
                Some(Answer::Unreachable(code)) => return Ok(Echo::Unreachable(code)),
                None => continue, // someone else's ICMP: a raw socket sees it all
            }
        }
    }

    fn readable(&self, wait: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n < 0 => Err(io::Error::last_os_error()),
            n => Ok(n > 0),
        }
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: an int option with its own size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An ICMP echo request with `len` bytes in all (header and zeroed payload).
fn echo_request(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(ICMP_HEADER)];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Reply,
    Unreachable(u8),
}

/// Whether an IP packet read from the raw socket answers our request `id`/`seq` to `to`:
/// its echo reply, or an unreachable error quoting it.
fn answer(packet: &[u8], to: Ipv4Addr, id: u16, seq: u16) -> Option<Answer> {
    let icmp = packet.get(ip_header_len(packet)?..)?;
    let ours = |id_seq: &[u8]| id_seq.get(..4) == Some(&[id.to_be_bytes(), seq.to_be_bytes()].concat()[..]);
    match *icmp.first()? {
        ECHO_REPLY if source(packet)? == to && ours(icmp.get(4..)?) => Some(Answer::Reply),
        DEST_UNREACHABLE => {
            // The error quotes our packet: its IP header, then the first 8 bytes of our ICMP.
            let quoted = icmp.get(ICMP_HEADER..)?;
            let inner = quoted.get(ip_header_len(quoted)?..)?;
            let for_us =
                destination(quoted)? == to && *inner.first()? == ECHO_REQUEST && ours(inner.get(4..)?);
            for_us.then(|| Answer::Unreachable(icmp[1]))
        }
        _ => None,
    }
}

fn ip_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= IP_HEADER && packet.len() >= len).then_some(len)
}

fn source(packet: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?))
}

fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(payload);
        p
    }

    #[test]
    fn a_request_checksums_to_zero_and_carries_id_and_seq() {
        let p = echo_request(0x1234, 7, 1422);
        assert_eq!(p.len(), 1422);
        assert_eq!((p[0], &p[4..8]), (ECHO_REQUEST, &[0x12, 0x34, 0, 7][..]));
        assert_eq!(checksum(&p), 0, "a packet with its checksum in place sums to zero");
        assert_eq!(checksum(&[0x45, 0x00, 0x00, 0x1c]), !(0x4500u16 + 0x001c));
    }

    #[test]
    fn only_our_reply_from_the_target_counts() {
        let to = Ipv4Addr::new(250, 2, 2, 1);
        let reply = |id: u16, seq: u16, from: [u8; 4]| {
            let mut icmp = echo_request(id, seq, 8);
            icmp[0] = ECHO_REPLY;
            ip(from, [250, 1, 1, 1], &icmp)
        };
        assert_eq!(answer(&reply(9, 3, [250, 2, 2, 1]), to, 9, 3), Some(Answer::Reply));
        assert_eq!(answer(&reply(9, 2, [250, 2, 2, 1]), to, 9, 3), None, "an older request's reply");
        assert_eq!(answer(&reply(8, 3, [250, 2, 2, 1]), to, 9, 3), None, "another pinger's");
        assert_eq!(answer(&reply(9, 3, [250, 2, 2, 9]), to, 9, 3), None, "from another host");
        assert_eq!(answer(&[0x45, 0, 0], to, 9, 3), None, "truncated");
        // Our own request, looped back to a raw socket on the sending host, is not a reply.
        assert_eq!(answer(&ip([250, 1, 1, 1], [250, 2, 2, 1], &echo_request(9, 3, 8)), to, 9, 3), None);
    }

    #[test]
    fn an_unreachable_quoting_our_request_is_its_answer() {
        let to = Ipv4Addr::new(250, 2, 2, 1);
        let ours = ip([250, 1, 1, 1], [250, 2, 2, 1], &echo_request(9, 3, 8));
        let mut icmp = vec![DEST_UNREACHABLE, 4, 0, 0, 0, 0, 5, 0x96];
        icmp.extend(&ours);
        assert_eq!(answer(&ip([10, 0, 0, 1], [250, 1, 1, 1], &icmp), to, 9, 3), Some(Answer::Unreachable(4)));
        let theirs = ip([250, 1, 1, 1], [250, 2, 2, 1], &echo_request(8, 3, 8));
        let mut other = icmp[..8].to_vec();
        other.extend(&theirs);
        assert_eq!(answer(&ip([10, 0, 0, 1], [250, 1, 1, 1], &other), to, 9, 3), None);
    }
}
