//! fanlink's integration tests, one binary (`autotests = false`): the CLI as a user runs it,
//! and the kernel-facing parts in network namespaces of their own.
mod bpf;
mod cli;
mod daemon;
mod datapath;
mod dhcp;
mod fans;
mod faults;
mod fuzz;
mod import;
mod interop;
mod nat;
mod netlink;
mod networkd;
mod topology;
mod util;
