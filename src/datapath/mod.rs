//! The fan's kernel datapath beyond plain links: the tc-BPF program that does the fan
//! arithmetic per frame, the nftables NAT table, the accept rules for hosts whose firewall
//! drops forwarded traffic, and the sysctls.

pub mod bpf;
pub mod firewall;
pub mod legacy;
pub mod nft;
pub mod nftnl;
pub mod sysctl;
