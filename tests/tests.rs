//! fanlink's integration tests, one binary (`autotests = false`): the CLI as a user runs it,
//! and the kernel-facing parts in network namespaces of their own.
mod boot;
mod bpf;
mod busproxy;
mod byhand;
mod cli;
mod daemon;
mod datapath;
mod deps;
mod dhcp;
mod fanctl;
mod fans;
mod faults;
mod fuzz;
mod house;
mod import;
mod interop;
mod launch;
mod lossy;
mod nat;
mod netlink;
mod networkd;
mod scripts;
mod selftest;
mod topology;
mod util;
