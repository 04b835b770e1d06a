//! fanlink's integration tests, one binary (`autotests = false`): the CLI as a user runs it,
//! and the kernel-facing parts in network namespaces of their own.
mod bpf;
mod cli;
mod datapath;
mod import;
mod nat;
mod netlink;
mod topology;
