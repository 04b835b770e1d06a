//! nfnetlink, the netfilter side of netlink: a NETLINK_NETFILTER socket, nf_tables dumps and
//! batch transactions. What goes into the messages (tables, chains, rules) is built in
//! `datapath::nftnl`; this file only frames and sends them.
//!
//! A transaction is `NFNL_MSG_BATCH_BEGIN`, the changes, `NFNL_MSG_BATCH_END` in one
//! datagram: the kernel applies all of it or none of it, as `nft -f` does (nft sends the same
//! framing). Each change asks for an ack; the kernel processes the whole batch and then
//! answers every change, so an error names the change that failed. A whole-batch refusal
//! (no CAP_NET_ADMIN, a commit that failed) is one error on the BEGIN message.

use std::os::fd::AsRawFd;
use std::time::Duration;

use log::{debug, trace};
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, SockProtocol};

use super::msg::{self, MsgBuilder, NLMSG_ERROR, NLM_F_ACK};
use super::{hex, malformed, Error, Netlink};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// A kernel that never answers must not hang the daemon.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// An nf_tables request of type `msg` (`NFT_MSG_*`) for address `family` (`NFPROTO_*`), its
/// `nfgenmsg` header written; attributes follow.
pub fn nft_msg(msg: u16, flags: u16, family: u8) -> MsgBuilder {
    nfgen(NFNL_SUBSYS_NFTABLES << 8 | msg, flags, family, 0)
}

/// `struct nfgenmsg { u8 family; u8 version (NFNETLINK_V0); be16 res_id; }`.
fn nfgen(ty: u16, flags: u16, family: u8, res_id: u16) -> MsgBuilder {
    let [r0, r1] = res_id.to_be_bytes();
    MsgBuilder::new(ty, flags).header(&[family, 0, r0, r1])
}

/// `NFT_MSG_NEWGEN`: sent to the NFNLGRP_NFTABLES group once after each transaction's own
/// messages, naming the process that made it.
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;

/// Whether one datagram of the NFNLGRP_NFTABLES group ends a transaction, and whose:
/// `Some(pid)` for NFT_MSG_NEWGEN (0 if the kernel did not say), `None` for the messages about
/// the objects it changed (or anything else). The kernel sends NEWGEN after every transaction,
/// so a watcher can wait for it and skip its own.
pub fn transaction_by(datagram: &[u8]) -> Option<u32> {
    let m = msg::messages(datagram).next()?.ok()?;
    if m.ty != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN {
        return None;
    }
    let attrs = m.payload.get(4..).unwrap_or_default();
    let pid = msg::attrs(attrs).flatten().find(|a| a.ty == NFTA_GEN_PROC_PID).and_then(|a| a.be32());
    Some(pid.unwrap_or(0))
}

/// The bytes of one batch: BEGIN with sequence `seq`, each change (with `NLM_F_ACK`) with
/// the next numbers, END last.
pub fn batch(changes: Vec<MsgBuilder>, seq: u32) -> Vec<u8> {
    let mut out = nfgen(NFNL_MSG_BATCH_BEGIN, 0, 0, NFNL_SUBSYS_NFTABLES).finish(seq, 0);
    let mut n = seq;
    for mut m in changes {
        n = n.wrapping_add(1);
        m.add_flags(NLM_F_ACK);
        out.extend(m.finish(n, 0));
    }
    n = n.wrapping_add(1);
    out.extend(nfgen(NFNL_MSG_BATCH_END, 0, 0, NFNL_SUBSYS_NFTABLES).finish(n, 0));
    out
}

impl Netlink {
    /// A NETLINK_NETFILTER socket for nf_tables dumps and transactions.
    pub fn netfilter() -> Result<Self, Error> {
        let nl = Self::open(SockProtocol::NetlinkNetFilter, 0)?;
        let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as i64, 0);
        socket::setsockopt(&nl.fd, socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| Error::new("open netfilter socket", e))?;
        Ok(nl)
    }

    /// Applies `changes` (each named for errors) as one transaction: all or nothing.
    pub fn transaction(&mut self, changes: Vec<(String, MsgBuilder)>) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let begin = self.seq.wrapping_add(1);
        let (names, msgs): (Vec<String>, Vec<MsgBuilder>) = changes.into_iter().unzip();
        let bytes = batch(msgs, begin);
        self.seq = begin.wrapping_add(names.len() as u32 + 1);
        trace!("nfnetlink send batch: {}", hex(&bytes));
        let op = "nftables transaction";
        super::count_request();
        socket::send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty()).map_err(|e| Error::new(op, e))?;

        let mut pending = names.len();
        let mut first_error: Option<(u32, Error)> = None;
        while pending > 0 {
            let n = self.recv().map_err(|e| Error::new(op, e))?;
            for m in msg::messages(&self.buf[..n]) {
                let m = m.map_err(|e| malformed(op, e))?;
                let index = m.seq.wrapping_sub(begin) as usize;
                if m.pid != self.pid || index > names.len() || m.ty != NLMSG_ERROR {
                    trace!("skipping stale nfnetlink reply seq {}", m.seq);
                    continue;
                }
                let status = msg::parse_error(&m).map_err(|e| malformed(op, e))?;
                let failed = |name: &str| {
                    let mut e = Error::new(name, Errno::from_raw(status.errno));
                    e.ext_ack = status.ext_ack.clone();
                    e
                };
                if index == 0 {
                    // The batch as a whole was refused; no per-change answers follow.
                    return Err(failed(op));
                }
                pending -= 1;
                if status.errno != 0 && first_error.as_ref().is_none_or(|(i, _)| m.seq < *i) {
                    first_error = Some((m.seq, failed(&names[index - 1])));
                } else if let Some(warning) = &status.ext_ack {
                    debug!("{}: kernel says: {warning}", names[index - 1]);
                }
            }
        }
        match first_error {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn a_transactions_end_names_its_process() {
        let mut gen = nft_msg(NFT_MSG_NEWGEN, 0, 0);
        gen.be32(1, 42).be32(NFTA_GEN_PROC_PID, 4321).str(3, "nft");
        assert_eq!(transaction_by(&gen.finish(0, 0)), Some(4321));
        let mut anonymous = nft_msg(NFT_MSG_NEWGEN, 0, 0);
        anonymous.be32(1, 42);
        assert_eq!(transaction_by(&anonymous.finish(0, 0)), Some(0));
        // NFT_MSG_NEWTABLE: one of the objects; the transaction's end is still to come.
        assert_eq!(transaction_by(&nft_msg(0, 0, 2).finish(0, 0)), None);
        assert_eq!(transaction_by(&[1, 2, 3]), None);
    }

    #[test]
    fn batch_framing_matches_iptables_nft() {
        // strace of `iptables-nft -I FORWARD ...`: BEGIN (res_id 10), NEWRULE, END; we add
        // NLM_F_ACK to the change and leave out the optional generation id.
        let rule = nft_msg(6, 0x400, 2);
        let b = batch(vec![rule], 1);
        #[rustfmt::skip]
        assert_eq!(b, [
            20, 0, 0, 0, 0x10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10,
            20, 0, 0, 0, 6, 10, 5, 4, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
            20, 0, 0, 0, 0x11, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10,
        ]);
    }
}
