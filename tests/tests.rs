//! fanlink's integration tests, one binary (`autotests = false`): the CLI as a user runs it,
//! and the kernel-facing parts in network namespaces of their own.

mod networkd;
mod util;
