//! Shared test support: a throwaway PostgreSQL with a fresh database per test ([`db`]) and
//! a scriptable HTTP receiver on 127.0.0.1 that records every request ([`receiver`]), a
//! TCP fault proxy to put between walhook and either of them ([`proxy`]), an independent
//! Standard Webhooks verifier ([`standard_webhooks`]), the oracle that judges a fault
//! scenario ([`oracle`]), a child process's CPU time and peak memory ([`process`]), and
//! certificates from a test CA ([`pki`]).

// Each scenario file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod db;
pub mod oracle;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod standard_webhooks;
