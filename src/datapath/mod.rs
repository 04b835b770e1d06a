//! The fan's kernel datapath beyond plain links: the tc-BPF program that does the fan
//! arithmetic per frame, the nftables NAT table, and the sysctls.

pub mod firewall;
pub mod nft;
pub mod sysctl;
