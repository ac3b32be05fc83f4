#![allow(clippy::unwrap_used)]
//! walhook's integration tests: one binary, one PostgreSQL cluster shared by
//! the tests (a fresh database, slot and publication per test), real HTTP
//! receivers on 127.0.0.1, and the real walhook binary where a test needs to
//! kill it or read its exit code.

mod admin;
mod auth;
mod batching;
mod bigdata;
mod cli;
mod crash;
mod deploy;
mod docs;
mod faults;
mod formats;
mod harness;
mod lanes;
mod network;
mod pgtls;
mod pipeline;
mod redaction;
mod reload;
mod runner;
mod schema;
mod signatures;
mod slots;
mod support;
mod tls;
mod values;
