//! Events: the JSON contract delivered to endpoints, and the table → form
//! mapping that produces them ([`mapping`]).
//!
//! An [`Event`] serializes (serde_json with `preserve_order`) to exactly the
//! shape DESIGN.md documents, keys in this order:
//!
//! ```json
//! {"id": "00000000016B3748-0003", "op": "data_update", "form": "orders",
//!  "data": {...}, "old": {...}, "changed": [...], "unchanged_toast": [...],
//!  "source": {"schema": "public", "table": "orders", "lsn": "0/16B3748",
//!             "xid": 731, "commit_time": "2026-11-22T04:20:00.123456Z"}}
//! ```
//!
//! `old`, `changed` and `unchanged_toast` are omitted when absent (never
//! `null`), so receivers can tell "not known" from "empty".
//!
//! Ids are `<16 upper-hex digits of the commit LSN>-<index, at least 4
//! digits>`: the same change always gets the same id (redeliveries can be
//! deduplicated) and ids sort in commit order within 10 000 events per
//! transaction (beyond that the index grows to 5+ digits and only the LSN
//! part still sorts lexically).

pub mod mapping;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::config::Op;

/// One event as delivered with `format = "walhook"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: [`event_id`] of the commit LSN and the position in the transaction.
    pub id: String,
    /// What happened.
    pub op: Op,
    /// The form (configured name of the table).
    pub form: String,
    /// The row (new row for create/update, deleted row for remove;
    /// `{"cascade", "restart_identity"}` for truncate).
    pub data: Map<String, Value>,
    /// For updates: what Postgres sent of the previous row (key columns or all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Map<String, Value>>,
    /// For updates with a fully known old row: the fields whose values changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// Fields left out of `data` because Postgres did not send their (TOASTed,
    /// unchanged) value and it could not be filled from `old`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged_toast: Option<Vec<String>>,
    /// Where the change came from.
    pub source: EventSource,
}

/// The origin of an event in the database and the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    /// Schema of the table.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Commit LSN as Postgres prints it ([`lsn_text`]).
    pub lsn: String,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, RFC 3339 UTC.
    pub commit_time: String,
}

/// The id of the `index`-th event (from 0) of the transaction committed at `commit_lsn`.
///
/// ```
/// assert_eq!(walhook::event::event_id(0x16B3748, 3), "00000000016B3748-0003");
/// ```
pub fn event_id(commit_lsn: u64, index: u32) -> String {
    format!("{commit_lsn:016X}-{index:04}")
}

/// An LSN as Postgres prints it: `"0/16B3748"`.
///
/// ```
/// assert_eq!(walhook::event::lsn_text(0x1_0000_00A0), "1/A0");
/// ```
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_lsn_hex_and_padded_index() {
        assert_eq!(event_id(0x16B3748, 3), "00000000016B3748-0003");
        assert_eq!(event_id(0x16B3748, 12345), "00000000016B3748-12345");
        assert_eq!(event_id(u64::MAX, 0), "FFFFFFFFFFFFFFFF-0000");
        assert!(event_id(0x100, 9) < event_id(0x100, 10));
        assert!(event_id(0xFF, 9999) < event_id(0x100, 0));
    }

    #[test]
    fn lsn_text_matches_postgres() {
        assert_eq!(lsn_text(0x16B3748), "0/16B3748");
        assert_eq!(lsn_text(0x1_0000_00AB), "1/AB");
        assert_eq!(lsn_text(0), "0/0");
    }

    #[test]
    fn event_serializes_in_contract_order_and_round_trips() {
        let json = r#"{"id":"00000000016B3748-0003","op":"data_update","form":"orders","data":{"id":42,"status":"paid","total":120.50,"tags":["a"],"meta":{"k":1}},"old":{"id":42,"status":"new"},"changed":["status"],"source":{"schema":"public","table":"orders","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.op, Op::DataUpdate);
        assert_eq!(event.unchanged_toast, None);
        assert_eq!(serde_json::to_string(&event).unwrap(), json);
    }

    #[test]
    fn absent_optional_fields_are_omitted_not_null() {
        let event = Event {
            id: event_id(1, 0),
            op: Op::DataCreate,
            form: "f".into(),
            data: Map::new(),
            old: None,
            changed: None,
            unchanged_toast: None,
            source: EventSource {
                schema: "public".into(),
                table: "t".into(),
                lsn: lsn_text(1),
                xid: 1,
                commit_time: "2026-01-01T00:00:00.000000Z".into(),
            },
        };
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&event).unwrap()).unwrap(),
            r#"{"id":"0000000000000001-0000","op":"data_create","form":"f","data":{},"source":{"schema":"public","table":"t","lsn":"0/1","xid":1,"commit_time":"2026-01-01T00:00:00.000000Z"}}"#
        );
    }
}
