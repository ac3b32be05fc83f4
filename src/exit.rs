//! Process exit codes, defined once (DESIGN.md "CLI").

/// Success, or a clean stop on SIGTERM/SIGINT.
pub const OK: u8 = 0;
/// An unexpected failure: a bug, or an error no other code covers.
pub const UNEXPECTED: u8 = 1;
/// Configuration or usage error.
pub const CONFIG: u8 = 2;
/// The database cannot serve us (unreachable, authentication, wal_level,
/// privileges, unknown table, table without a key).
pub const DATABASE: u8 = 3;
/// The replication slot is lost while the store shows earlier progress.
pub const SLOT_LOST: u8 = 4;
/// The local store cannot be written or read.
pub const STORE: u8 = 5;
