//! A small rtnetlink client: the message codec, requests with acks, and dumps.

pub mod msg;
