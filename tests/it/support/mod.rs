//! Shared test support: a throwaway PostgreSQL with a fresh database per test ([`db`]) and
//! a scriptable HTTP receiver on 127.0.0.1 that records every request ([`receiver`]), and
//! the oracle that judges a fault scenario ([`oracle`]).

// Each scenario file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod db;
pub mod oracle;
pub mod receiver;
