//! Shared test support: a throwaway PostgreSQL with a fresh database per test ([`db`]), a
//! scriptable HTTP receiver on 127.0.0.1 that records every request ([`receiver`]), the
//! oracle that judges a fault scenario ([`oracle`]), and a child process's CPU time and
//! peak memory ([`process`]).

// Each scenario file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod db;
pub mod oracle;
pub mod process;
pub mod receiver;
