//! A pure decoder for pgoutput logical replication messages (protocol version 1).
//!
//! Input is the payload of one XLogData (`'w'`) frame: a one-byte tag followed by
//! the message body, all integers big-endian, strings NUL-terminated UTF-8
//! (<https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>).
//!
//! | tag | message  | body |
//! |-----|----------|------|
//! | `B` | Begin    | final LSN i64, commit time i64 (µs since 2000-01-01), xid i32 |
//! | `C` | Commit   | flags i8, commit LSN i64, end LSN i64, commit time i64 |
//! | `O` | Origin   | LSN i64, name string |
//! | `R` | Relation | oid i32, schema string, name string, replica identity i8, ncols i16, then per column: flags i8, name string, type oid i32, typmod i32 |
//! | `Y` | Type     | oid i32, schema string, name string |
//! | `I` | Insert   | oid i32, `N`, tuple |
//! | `U` | Update   | oid i32, optional (`K` or `O`, tuple), `N`, tuple |
//! | `D` | Delete   | oid i32, `K` or `O`, tuple |
//! | `T` | Truncate | nrels i32, options i8, nrels × oid i32 |
//! | `M` | Message  | flags i8 (1 = transactional), LSN i64, prefix string, length i32, content |
//!
//! A tuple is ncols i16, then per column a kind byte: `n` (NULL), `u` (unchanged
//! TOASTed value, not sent), `t` (text: length i32 + bytes) or `b` (binary: same).
//!
//! Invariants:
//! - [`decode`] never panics and never allocates more than the input can justify:
//!   every read is bounds-checked, negative lengths are errors, and counts are
//!   checked against the bytes left before anything is reserved.
//! - A message must be consumed exactly; trailing bytes are an error, because they
//!   mean we and the server disagree about the protocol (e.g. a v2 streaming xid).
//! - Cell values are zero-copy slices of the input [`Bytes`].
//! - Tags of later protocol versions (streaming, two-phase) are reported as
//!   [`DecodeError::UnknownTag`]: walhook requests version 1 only, so seeing them
//!   is a bug to fail loudly on, not something to skip.

use bytes::Bytes;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction (`B`).
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction (`C`).
    Commit {
        /// Currently always 0 (unused by Postgres).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record: what to acknowledge once durable.
        end_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
    },
    /// Replication origin of the following changes (`O`).
    Origin {
        /// LSN of the commit on the origin server.
        lsn: u64,
        /// Origin name.
        name: String,
    },
    /// Table description, sent before the first change of a table and after DDL (`R`).
    Relation(Relation),
    /// Description of a non-builtin type used by a following Relation (`Y`).
    Type {
        /// Type OID.
        id: u32,
        /// Schema (namespace) of the type; empty for `pg_catalog`.
        schema: String,
        /// Type name.
        name: String,
    },
    /// A row insert (`I`).
    Insert {
        /// OID of the table, as announced by a previous Relation.
        relation_id: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row update (`U`).
    Update {
        /// OID of the table.
        relation_id: u32,
        /// Old key or old row; absent when the key did not change under REPLICA IDENTITY DEFAULT/INDEX.
        old: Option<OldTuple>,
        /// The new row; unchanged TOASTed columns are [`Cell::UnchangedToast`].
        new: Tuple,
    },
    /// A row delete (`D`).
    Delete {
        /// OID of the table.
        relation_id: u32,
        /// The old key or, with REPLICA IDENTITY FULL, the old row.
        old: OldTuple,
    },
    /// A TRUNCATE of one or more tables (`T`).
    Truncate {
        /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
        options: u8,
        /// OIDs of the truncated tables.
        relation_ids: Vec<u32>,
    },
    /// A logical decoding message from `pg_logical_emit_message` (`M`).
    Message {
        /// Whether it was emitted inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Prefix given by the emitter.
        prefix: String,
        /// Raw content.
        content: Bytes,
    },
}

/// A table as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Table OID; changes refer to it.
    pub id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Replica identity: `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    /// Published columns, in tuple order.
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity key (flag bit 1).
    pub is_key: bool,
}

/// The old side of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns carry values; others are NULL.
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

/// The cells of one row, in the column order of the relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Cell>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that Postgres did not send.
    UnchangedToast,
    /// `t`: the value in Postgres text output format.
    Text(Bytes),
    /// `b`: the value in binary format (only with the `binary` option).
    Binary(Bytes),
}

/// Why a pgoutput message could not be decoded; offsets count from the tag byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload had no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a pgoutput v1 message tag.
    #[error("unknown pgoutput message tag {} (0x{tag:02X}); walhook speaks protocol version 1 without streaming or two-phase", show_tag(*.tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// The message ended before a field was complete.
    #[error("truncated {} message: {field} at offset {offset} needs {needed} bytes, {available} left", show_tag(*.tag))]
    Truncated {
        /// Tag of the message being decoded.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        available: usize,
    },
    /// A string had no NUL terminator before the end of the message.
    #[error("{} message: {field} at offset {offset} is not NUL-terminated", show_tag(*.tag))]
    UnterminatedString {
        /// Tag of the message being decoded.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Offset of the string.
        offset: usize,
    },
    /// A string was not valid UTF-8.
    #[error("{} message: {field} at offset {offset} is not valid UTF-8", show_tag(*.tag))]
    InvalidUtf8 {
        /// Tag of the message being decoded.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Offset of the string.
        offset: usize,
    },
    /// A length or count field was negative.
    #[error("{} message: {field} at offset {offset} is negative ({value})", show_tag(*.tag))]
    NegativeLength {
        /// Tag of the message being decoded.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// The value found.
        value: i64,
    },
    /// A one-byte marker (tuple kind, cell kind) had an unexpected value.
    #[error("{} message: {field} at offset {offset} is {}, expected one of {expected}", show_tag(*.tag), show_tag(*.found))]
    UnexpectedMarker {
        /// Tag of the message being decoded.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Offset of the marker.
        offset: usize,
        /// The byte found.
        found: u8,
        /// The accepted bytes, for the message.
        expected: &'static str,
    },
    /// Bytes were left after a complete message.
    #[error("{} message: {count} unexpected bytes after the end at offset {offset}", show_tag(*.tag))]
    TrailingBytes {
        /// Tag of the message being decoded.
        tag: u8,
        /// Offset where the message should have ended.
        offset: usize,
        /// Number of extra bytes.
        count: usize,
    },
}

/// Renders a tag as `'B'` when printable, else as its hex value, for error messages.
fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02X}")
    }
}

/// Decodes one pgoutput message; cell values and message content share `buf`'s memory.
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { buf, pos: 1, tag };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => Message::Origin {
            lsn: r.u64("origin LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            id: r.u32("type OID")?,
            schema: r.string("type schema")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation OID")?;
            r.marker("new tuple marker", b"N", "'N'")?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation OID")?;
            let marker = r.marker("tuple marker", b"KON", "'K', 'O', 'N'")?;
            let old = match marker {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                _ => None,
            };
            if old.is_some() {
                r.marker("new tuple marker", b"N", "'N'")?;
            }
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation OID")?;
            let old = match r.marker("old tuple marker", b"KO", "'K', 'O'")? {
                b'K' => OldTuple::Key(r.tuple()?),
                _ => OldTuple::Full(r.tuple()?),
            };
            Message::Delete { relation_id, old }
        }
        b'T' => {
            let count = r.count_i32("relation count")?;
            let options = r.u8("options")?;
            // Check the whole list fits before reserving, so a bogus count
            // cannot make us allocate gigabytes.
            r.ensure("relation OIDs", count.saturating_mul(4))?;
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(r.u32("relation OID")?);
            }
            Message::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.string("message prefix")?;
            let len = r.count_i32("content length")?;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes("content", len)?,
            }
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(message)
}

/// A bounds-checked cursor over one message.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Fails unless `needed` more bytes are available.
    fn ensure(&self, field: &'static str, needed: usize) -> Result<(), DecodeError> {
        let available = self.remaining();
        if needed > available {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                field,
                offset: self.pos,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.ensure(field, N)?;
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn negative(&self, field: &'static str, offset: usize, value: i64) -> DecodeError {
        DecodeError::NegativeLength {
            tag: self.tag,
            field,
            offset,
            value,
        }
    }

    /// Reads an Int16 count; negative counts are errors.
    fn count_i16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| self.negative(field, offset, i64::from(n)))
    }

    /// Reads an Int32 count or length; negative values are errors.
    fn count_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i32(field)?;
        usize::try_from(n).map_err(|_| self.negative(field, offset, i64::from(n)))
    }

    /// Takes `len` bytes as a zero-copy slice of the input.
    fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        self.ensure(field, len)?;
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                tag: self.tag,
                field,
                offset,
            });
        };
        let text = rest.get(..nul).unwrap_or_default();
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            field,
            offset,
        })?;
        self.pos = offset + nul + 1;
        Ok(text.to_owned())
    }

    /// Reads a one-byte marker and checks it is one of `allowed`.
    fn marker(
        &mut self,
        field: &'static str,
        allowed: &[u8],
        expected: &'static str,
    ) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let found = self.u8(field)?;
        if allowed.contains(&found) {
            Ok(found)
        } else {
            Err(DecodeError::UnexpectedMarker {
                tag: self.tag,
                field,
                offset,
                found,
                expected,
            })
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation OID")?;
        let schema = self.string("schema name")?;
        let name = self.string("table name")?;
        let replica_identity = self.marker("replica identity", b"dnfi", "'d', 'n', 'f', 'i'")?;
        let count = self.count_i16("column count")?;
        // Each column takes at least 10 bytes (flags, empty name, oid, typmod);
        // cap the reservation by what the input can hold.
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(Column {
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
                is_key: flags & 1 == 1,
            });
        }
        Ok(Relation {
            id,
            schema,
            name,
            replica_identity,
            columns,
        })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count_i16("tuple column count")?;
        // Each cell takes at least one byte.
        let mut cells = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let kind = self.marker("cell kind", b"nutb", "'n', 'u', 't', 'b'")?;
            let cell = match kind {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.count_i32("text cell length")?;
                    Cell::Text(self.bytes("text cell value", len)?)
                }
                _ => {
                    let len = self.count_i32("binary cell length")?;
                    Cell::Binary(self.bytes("binary cell value", len)?)
                }
            };
            cells.push(cell);
        }
        Ok(Tuple(cells))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                tag: self.tag,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds pgoutput messages the way the server's `logicalrep_write_*` does.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn new(tag: u8) -> Self {
            Writer(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn str(self, s: &str) -> Self {
            self.raw(s.as_bytes()).u8(0)
        }
        fn tuple(mut self, cells: &[TestCell]) -> Self {
            self = self.i16(cells.len() as i16);
            for c in cells {
                self = match c {
                    TestCell::Null => self.u8(b'n'),
                    TestCell::Toast => self.u8(b'u'),
                    TestCell::Text(t) => self.u8(b't').i32(t.len() as i32).raw(t.as_bytes()),
                    TestCell::Bin(b) => self.u8(b'b').i32(b.len() as i32).raw(b),
                };
            }
            self
        }
        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    enum TestCell {
        Null,
        Toast,
        Text(&'static str),
        Bin(&'static [u8]),
    }
    use TestCell::{Bin, Null as N, Text as T, Toast};

    fn text(s: &str) -> Cell {
        Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn begin() -> Bytes {
        Writer::new(b'B')
            .u64(0x16B_3748)
            .i64(848_636_400_123_456)
            .u32(731)
            .build()
    }
    fn commit() -> Bytes {
        Writer::new(b'C')
            .u8(0)
            .u64(0x16B_3748)
            .u64(0x16B_3780)
            .i64(848_636_400_123_456)
            .build()
    }
    fn origin() -> Bytes {
        Writer::new(b'O').u64(0xABCD).str("node_a").build()
    }
    fn relation() -> Bytes {
        Writer::new(b'R')
            .u32(16_385)
            .str("public")
            .str("orders")
            .u8(b'f')
            .i16(3)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("note")
            .u32(25)
            .i32(-1)
            .u8(0)
            .str("total")
            .u32(1700)
            .i32(655_366)
            .build()
    }
    fn type_msg() -> Bytes {
        Writer::new(b'Y')
            .u32(16_400)
            .str("public")
            .str("mood")
            .build()
    }
    fn insert() -> Bytes {
        Writer::new(b'I')
            .u32(16_385)
            .u8(b'N')
            .tuple(&[T("42"), N, T("120.50")])
            .build()
    }
    fn update_plain() -> Bytes {
        Writer::new(b'U')
            .u32(16_385)
            .u8(b'N')
            .tuple(&[T("42"), Toast, T("1.5")])
            .build()
    }
    fn update_key() -> Bytes {
        Writer::new(b'U')
            .u32(16_385)
            .u8(b'K')
            .tuple(&[T("41"), N, N])
            .u8(b'N')
            .tuple(&[T("42"), Toast, T("1.5")])
            .build()
    }
    fn update_full() -> Bytes {
        Writer::new(b'U')
            .u32(16_385)
            .u8(b'O')
            .tuple(&[T("42"), T("old note"), T("1.0")])
            .u8(b'N')
            .tuple(&[T("42"), Toast, Bin(&[0, 1, 2])])
            .build()
    }
    fn delete_key() -> Bytes {
        Writer::new(b'D')
            .u32(16_385)
            .u8(b'K')
            .tuple(&[T("42"), N, N])
            .build()
    }
    fn delete_full() -> Bytes {
        Writer::new(b'D')
            .u32(16_385)
            .u8(b'O')
            .tuple(&[T("42"), T("ünïcödé 🦀"), N])
            .build()
    }
    fn truncate() -> Bytes {
        Writer::new(b'T')
            .i32(2)
            .u8(3)
            .u32(16_385)
            .u32(16_390)
            .build()
    }
    fn logical_message() -> Bytes {
        Writer::new(b'M')
            .u8(1)
            .u64(0x100)
            .str("walhook")
            .i32(5)
            .raw(b"hello")
            .build()
    }

    fn fixtures() -> Vec<Bytes> {
        vec![
            begin(),
            commit(),
            origin(),
            relation(),
            type_msg(),
            insert(),
            update_plain(),
            update_key(),
            update_full(),
            delete_key(),
            delete_full(),
            truncate(),
            logical_message(),
        ]
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode(&begin()).unwrap(),
            Message::Begin {
                final_lsn: 0x16B_3748,
                commit_time: 848_636_400_123_456,
                xid: 731
            }
        );
        assert_eq!(
            decode(&commit()).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 0x16B_3748,
                end_lsn: 0x16B_3780,
                commit_time: 848_636_400_123_456
            }
        );
    }

    #[test]
    fn origin_and_type() {
        assert_eq!(
            decode(&origin()).unwrap(),
            Message::Origin {
                lsn: 0xABCD,
                name: "node_a".into()
            }
        );
        assert_eq!(
            decode(&type_msg()).unwrap(),
            Message::Type {
                id: 16_400,
                schema: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn relation_with_replica_identity_full() {
        let Message::Relation(rel) = decode(&relation()).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.id, 16_385);
        assert_eq!(rel.schema, "public");
        assert_eq!(rel.name, "orders");
        assert_eq!(rel.replica_identity, b'f');
        assert_eq!(
            rel.columns,
            vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                    is_key: true
                },
                Column {
                    name: "note".into(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: false
                },
                Column {
                    name: "total".into(),
                    type_oid: 1700,
                    type_modifier: 655_366,
                    is_key: false
                },
            ]
        );
    }

    #[test]
    fn relation_with_no_columns_and_pg_catalog_schema() {
        let buf = Writer::new(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'n')
            .i16(0)
            .build();
        let Message::Relation(rel) = decode(&buf).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.schema, "");
        assert!(rel.columns.is_empty());
        assert_eq!(rel.replica_identity, b'n');
    }

    #[test]
    fn insert_tuple() {
        assert_eq!(
            decode(&insert()).unwrap(),
            Message::Insert {
                relation_id: 16_385,
                new: Tuple(vec![text("42"), Cell::Null, text("120.50")])
            }
        );
    }

    #[test]
    fn update_without_old_tuple() {
        assert_eq!(
            decode(&update_plain()).unwrap(),
            Message::Update {
                relation_id: 16_385,
                old: None,
                new: Tuple(vec![text("42"), Cell::UnchangedToast, text("1.5")])
            }
        );
    }

    #[test]
    fn update_with_key_old_tuple() {
        assert_eq!(
            decode(&update_key()).unwrap(),
            Message::Update {
                relation_id: 16_385,
                old: Some(OldTuple::Key(Tuple(vec![
                    text("41"),
                    Cell::Null,
                    Cell::Null
                ]))),
                new: Tuple(vec![text("42"), Cell::UnchangedToast, text("1.5")])
            }
        );
    }

    #[test]
    fn update_with_full_old_tuple_and_binary_cell() {
        assert_eq!(
            decode(&update_full()).unwrap(),
            Message::Update {
                relation_id: 16_385,
                old: Some(OldTuple::Full(Tuple(vec![
                    text("42"),
                    text("old note"),
                    text("1.0")
                ]))),
                new: Tuple(vec![
                    text("42"),
                    Cell::UnchangedToast,
                    Cell::Binary(Bytes::from_static(&[0, 1, 2]))
                ])
            }
        );
    }

    #[test]
    fn deletes() {
        assert_eq!(
            decode(&delete_key()).unwrap(),
            Message::Delete {
                relation_id: 16_385,
                old: OldTuple::Key(Tuple(vec![text("42"), Cell::Null, Cell::Null]))
            }
        );
        assert_eq!(
            decode(&delete_full()).unwrap(),
            Message::Delete {
                relation_id: 16_385,
                old: OldTuple::Full(Tuple(vec![text("42"), text("ünïcödé 🦀"), Cell::Null]))
            }
        );
    }

    #[test]
    fn truncate_two_relations_with_options() {
        assert_eq!(
            decode(&truncate()).unwrap(),
            Message::Truncate {
                options: 3,
                relation_ids: vec![16_385, 16_390]
            }
        );
    }

    #[test]
    fn logical_decoding_message() {
        assert_eq!(
            decode(&logical_message()).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 0x100,
                prefix: "walhook".into(),
                content: Bytes::from_static(b"hello")
            }
        );
        let empty = Writer::new(b'M').u8(0).u64(1).str("p").i32(0).build();
        assert!(matches!(
            decode(&empty).unwrap(),
            Message::Message { transactional: false, content, .. } if content.is_empty()
        ));
    }

    #[test]
    fn cells_are_zero_copy_slices() {
        let buf = insert();
        let Message::Insert { new, .. } = decode(&buf).unwrap() else {
            panic!("not an insert");
        };
        let Cell::Text(v) = &new.0[0] else {
            panic!("not text");
        };
        let start = buf.as_ptr() as usize;
        let p = v.as_ptr() as usize;
        assert!(p >= start && p < start + buf.len());
    }

    #[test]
    fn empty_and_unknown_tag() {
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
        // 'S' is Stream Start (protocol v2), not something v1 may send.
        let err = decode(&Bytes::from_static(b"S\0\0\0\x01")).unwrap_err();
        assert_eq!(err, DecodeError::UnknownTag { tag: b'S' });
        assert!(err.to_string().contains("'S'"), "{err}");
        assert!(decode(&Bytes::from_static(&[0xFF]))
            .unwrap_err()
            .to_string()
            .contains("0xFF"));
    }

    #[test]
    fn truncation_names_field_and_offset() {
        let full = begin();
        let err = decode(&full.slice(..15)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                tag: b'B',
                field: "commit time",
                offset: 9,
                needed: 8,
                available: 6
            }
        );
        assert_eq!(
            err.to_string(),
            "truncated 'B' message: commit time at offset 9 needs 8 bytes, 6 left"
        );
    }

    #[test]
    fn negative_lengths_are_errors() {
        let buf = Writer::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-1)
            .build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::NegativeLength {
                field: "text cell length",
                offset: 9,
                value: -1,
                ..
            })
        ));
        let buf = Writer::new(b'I').u32(1).u8(b'N').i16(-3).build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::NegativeLength { value: -3, .. })
        ));
        let buf = Writer::new(b'T').i32(i32::MIN).u8(0).build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::NegativeLength { .. })
        ));
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        let buf = Writer::new(b'T').i32(i32::MAX).u8(0).u32(1).build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::Truncated {
                field: "relation OIDs",
                ..
            })
        ));
        let buf = Writer::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(i32::MAX)
            .build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::Truncated {
                field: "text cell value",
                ..
            })
        ));
    }

    #[test]
    fn bad_markers_strings_and_trailing_bytes() {
        let buf = Writer::new(b'I').u32(1).u8(b'X').build();
        let err = decode(&buf).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnexpectedMarker {
                found: b'X',
                offset: 5,
                ..
            }
        ));
        assert!(err.to_string().contains("expected one of 'N'"), "{err}");

        let buf = Writer::new(b'I').u32(1).u8(b'N').i16(1).u8(b'z').build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::UnexpectedMarker {
                field: "cell kind",
                ..
            })
        ));

        let buf = Writer::new(b'O').u64(1).raw(b"no-nul").build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::UnterminatedString {
                field: "origin name",
                offset: 9,
                ..
            })
        ));

        let buf = Writer::new(b'O').u64(1).raw(&[0xC3, 0x28, 0]).build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::InvalidUtf8 { offset: 9, .. })
        ));

        let mut bytes = begin().to_vec();
        bytes.push(7);
        assert_eq!(
            decode(&Bytes::from(bytes)),
            Err(DecodeError::TrailingBytes {
                tag: b'B',
                offset: 21,
                count: 1
            })
        );

        let buf = Writer::new(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'x')
            .i16(0)
            .build();
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::UnexpectedMarker {
                field: "replica identity",
                ..
            })
        ));
    }

    #[test]
    fn every_strict_prefix_of_every_fixture_is_an_error() {
        for f in fixtures() {
            assert!(decode(&f).is_ok());
            for n in 0..f.len() {
                assert!(decode(&f.slice(..n)).is_err(), "prefix {n} of {f:?}");
            }
        }
    }

    /// Deterministic xorshift64 so the fuzz test needs no extra dependency and
    /// any failure reproduces.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn fuzz_random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let tags = b"BCORYIUDTM";
        let fixtures = fixtures();
        for i in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias half the inputs towards valid tags so the decoder gets
            // past the first byte and exercises the body parsers.
            if i % 2 == 0 {
                if let Some(first) = buf.first_mut() {
                    *first = tags[(rng.next() % tags.len() as u64) as usize];
                }
            }
            let _ = decode(&Bytes::from(buf));

            // Flip a few bytes of a valid fixture: lengths and counts go wild.
            let f = &fixtures[(rng.next() % fixtures.len() as u64) as usize];
            let mut m = f.to_vec();
            for _ in 0..=(rng.next() % 3) {
                let at = (rng.next() % m.len() as u64) as usize;
                m[at] = rng.next() as u8;
            }
            let _ = decode(&Bytes::from(m));
        }
    }
}
