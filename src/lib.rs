//! fanlink: brings Fan overlay networks up and down as systemd-networkd reports the underlay.
//!
//! The data flows from the edges to a pure core and back: rules (`config`) and the kernel
//! (`observe`) become a desired and an observed state, `plan` turns the two into `Op`s, and
//! `apply` performs them through `netlink`, `datapath` (BPF, nftables, sysctl).

pub mod addrplan;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod dhcp;
pub mod docker_args;
pub mod error;
pub mod fan;
pub mod generate;
pub mod ifname;
pub mod import;
pub mod model;
pub mod netlink;
pub mod networkd;
pub mod notify;
pub mod oneshot;
pub mod plan;
pub mod port;
pub mod selftest;
pub mod snapshot;
pub mod status;
pub mod system;
pub mod underlay;
