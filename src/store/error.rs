//! `StoreError`: everything that can go wrong in the local store. Every
//! variant maps to exit code 5 ("the local store cannot be written or read").

use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

/// An error from the embedded store; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store directory's lock file.
    #[error("another walhook is using {}; stop it or use another store.path", .path.display())]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The database file could not be opened or configured.
    #[error("cannot open the store database {}: {}", .path.display(), sqlite_hint(.source))]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement on an open database failed.
    #[error("store {context} failed on {}: {}", .path.display(), sqlite_hint(.source))]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What the store was doing ("append events", "advance cursor", ...).
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A filesystem operation on the store directory failed.
    #[error("cannot {context} {}: {}", .path.display(), io_hint(.source))]
    Io {
        /// What the store was doing ("create the store directory", ...).
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The database was written by a newer walhook with an unknown schema.
    #[error("the store database {} has schema version {found}, but this walhook supports at most {supported}; upgrade walhook or use another store.path", .path.display())]
    Version {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// The database predates this walhook's schema and has not been upgraded yet.
    #[error("the store database {} has schema version {found} (this walhook writes {current}); start `walhook run` with this version once to upgrade it", .path.display())]
    Outdated {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The version this build writes.
        current: i64,
    },
    /// A delivery-state call named a subscription that has no cursor row.
    #[error("subscription '{name}' is not in the store; call ensure_subscription first")]
    UnknownSubscription {
        /// The subscription name.
        name: String,
    },
}

impl StoreError {
    /// True when the disk (or SQLite's size limit) is full: SQLITE_FULL or ENOSPC.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Sqlite { source, .. } => {
                sqlite_code(source) == Some(ErrorCode::DiskFull)
            }
            StoreError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    /// The error SQLite gives when the disk is full (SQLITE_FULL), for the
    /// `store_append`/`store_state_write` failpoints (`crate::failpoint`).
    pub(super) fn simulated_full(path: &std::path::Path, context: &'static str) -> StoreError {
        StoreError::Sqlite {
            path: path.to_path_buf(),
            context,
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full (simulated by a failpoint)".into()),
            ),
        }
    }

    /// Wraps a SQLite error with the file and what the store was doing.
    pub(super) fn sqlite<'a>(
        path: &'a std::path::Path,
        context: &'static str,
    ) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
        move |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            context,
            source,
        }
    }
}

fn sqlite_code(err: &rusqlite::Error) -> Option<ErrorCode> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
        _ => None,
    }
}

/// One sentence naming the fix for the SQLite failures an operator can act on.
fn sqlite_hint(err: &rusqlite::Error) -> &'static str {
    match sqlite_code(err) {
        Some(ErrorCode::DiskFull) => {
            "the disk is full; free space on the filesystem that holds store.path (walhook keeps Postgres un-acknowledged until it can write again)"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "the file cannot be written; check that store.path exists, is writable by this user and is not on a read-only filesystem"
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            "the file is corrupt or not a walhook store; restore it from a backup or move it away (undelivered events in it are then lost and need a resync)"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database stayed busy; make sure no other program opens this file"
        }
        Some(ErrorCode::SystemIoFailure) => {
            "the operating system reported an I/O error; check the disk and the kernel log"
        }
        _ => "unexpected SQLite error (see the cause)",
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::StorageFull => {
            "the disk is full; free space on the filesystem that holds store.path"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied; make store.path writable by this user"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "read-only filesystem; point store.path at a writable directory"
        }
        io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists => {
            "a file is in the way; point store.path at a directory"
        }
        _ => "unexpected I/O error (see the cause)",
    }
}
