//! A decoder for the `pgoutput` messages of logical replication protocol version 1.
//!
//! The replication client hands Begin and Commit over already parsed; everything else arrives
//! as the raw payload of an XLogData message. Version 1 (no in-progress streaming) is all
//! pgevents asks for: the server sends a transaction only once it has committed, so an
//! aborted transaction never reaches us, and one that is larger than the server's
//! `logical_decoding_work_mem` is spilled to disk on the server, not held in our memory.
//! Column values are requested in text form — the form a type's input function reads back.

use crate::Error;

/// One column of a relation, as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Column {
    /// The column's name.
    pub name: String,
    /// Its type's OID (a domain's own OID for a domain column).
    pub type_oid: u32,
    /// Its type modifier (`numeric(40,20)`, `varchar(10)`), or -1.
    pub type_modifier: i32,
}

/// A Relation message: the shape of a table's rows at this point of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// The table's OID.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its replica identity setting: `d`efault, `n`othing, `f`ull or `i`ndex.
    pub replica_identity: u8,
    /// Its published columns, in table order.
    pub columns: Vec<Column>,
}

/// One column value of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the change left untouched; the server does not resend it.
    Unchanged,
    /// The value's text form.
    Text(String),
}

/// Which image an old row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OldKind {
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full,
    /// Only the replica identity's key columns (the others are NULL).
    Key,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// The shape of a relation, sent before its first change and after each schema change.
    Relation(Relation),
    /// A row was inserted.
    Insert { relation: u32, new: Vec<Value> },
    /// A row was updated; `old` is absent when the replica identity did not log it.
    Update {
        relation: u32,
        old: Option<(OldKind, Vec<Value>)>,
        new: Vec<Value>,
    },
    /// A row was deleted.
    Delete {
        relation: u32,
        old: (OldKind, Vec<Value>),
    },
    /// Tables were truncated together.
    Truncate { relations: Vec<u32> },
    /// Anything else (Type, Origin): nothing to capture.
    Other,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.data.len() < n {
            return Err(Error::Decode(format!("message ends inside {what}")));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, Error> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, Error> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(self.i32(what)? as u32)
    }

    fn cstring(&mut self, what: &str) -> Result<String, Error> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Error::Decode(format!("{what} is not NUL-terminated")))?;
        let text = utf8(&self.data[..end], what)?;
        self.data = &self.data[end + 1..];
        Ok(text)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, Error> {
        let n = self.i16("a tuple's column count")?;
        let n = usize::try_from(n).map_err(|_| Error::Decode("negative column count".into()))?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8("a column kind")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32("a value's length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| Error::Decode("negative value length".into()))?;
                    Value::Text(utf8(self.take(len, "a value")?, "a value")?)
                }
                other => {
                    return Err(Error::Decode(format!(
                        "column kind {:?} (binary values are never requested)",
                        other as char
                    )))
                }
            });
        }
        Ok(values)
    }

    fn old_tuple(&mut self, tag: u8) -> Result<(OldKind, Vec<Value>), Error> {
        let kind = match tag {
            b'O' => OldKind::Full,
            b'K' => OldKind::Key,
            other => {
                return Err(Error::Decode(format!(
                    "old tuple marker {:?}",
                    other as char
                )))
            }
        };
        Ok((kind, self.tuple()?))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<(), Error> {
        let got = self.u8(what)?;
        if got != tag {
            return Err(Error::Decode(format!(
                "expected {:?} before {what}, got {:?}",
                tag as char, got as char
            )));
        }
        Ok(())
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Decode(format!("{what} is not UTF-8 (client_encoding is UTF8)")))
}

/// Decodes one pgoutput message (the payload of an XLogData message).
pub(crate) fn decode(data: &[u8]) -> Result<Message, Error> {
    let mut r = Reader { data };
    let tag = r.u8("the message tag")?;
    Ok(match tag {
        b'R' => {
            let oid = r.u32("the relation id")?;
            let schema = r.cstring("the schema name")?;
            let name = r.cstring("the table name")?;
            let replica_identity = r.u8("the replica identity")?;
            let n = r.i16("the column count")?;
            let n =
                usize::try_from(n).map_err(|_| Error::Decode("negative column count".into()))?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _flags = r.u8("column flags")?;
                let name = r.cstring("a column name")?;
                let type_oid = r.u32("a column type")?;
                let type_modifier = r.i32("a column type modifier")?;
                columns.push(Column {
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            Message::Relation(Relation {
                oid,
                // pgoutput sends an empty namespace for pg_catalog.
                schema: if schema.is_empty() {
                    "pg_catalog".into()
                } else {
                    schema
                },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32("the relation id")?;
            r.expect(b'N', "the new tuple")?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32("the relation id")?;
            let mut marker = r.u8("the tuple marker")?;
            let old = if marker == b'O' || marker == b'K' {
                let old = r.old_tuple(marker)?;
                marker = r.u8("the new tuple marker")?;
                Some(old)
            } else {
                None
            };
            if marker != b'N' {
                return Err(Error::Decode(format!(
                    "update without a new tuple (marker {:?})",
                    marker as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("the relation id")?;
            let marker = r.u8("the old tuple marker")?;
            Message::Delete {
                relation,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = r.i32("the relation count")?;
            let _options = r.u8("the truncate options")?;
            let n = usize::try_from(n).map_err(|_| Error::Decode("negative count".into()))?;
            let mut relations = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relations.push(r.u32("a truncated relation id")?);
            }
            Message::Truncate { relations }
        }
        // Type, Origin, and (never requested) streaming or two-phase messages.
        _ => Message::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Vec<u8> {
        let mut out = vec![b't'];
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
        out
    }

    #[test]
    fn decodes_relations_and_changes() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.extend_from_slice(b"\0t\0f");
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(1);
        m.extend_from_slice(b"id\0");
        m.extend_from_slice(&20u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        m.extend_from_slice(b"x y\0");
        m.extend_from_slice(&1700u32.to_be_bytes());
        m.extend_from_slice(&((40 << 16 | 20) + 4i32).to_be_bytes());
        let Message::Relation(rel) = decode(&m).expect("relation") else {
            panic!("not a relation")
        };
        assert_eq!(rel.schema, "pg_catalog");
        assert_eq!(rel.columns[1].name, "x y");
        assert_eq!(rel.replica_identity, b'f');

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'O');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.extend(text("7"));
        u.extend(text("héllo"));
        u.push(b'N');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.extend(text("7"));
        u.push(b'u');
        assert_eq!(
            decode(&u).expect("update"),
            Message::Update {
                relation: 16384,
                old: Some((
                    OldKind::Full,
                    vec![Value::Text("7".into()), Value::Text("héllo".into())]
                )),
                new: vec![Value::Text("7".into()), Value::Unchanged],
            }
        );

        let mut t = vec![b'T'];
        t.extend_from_slice(&2i32.to_be_bytes());
        t.push(0);
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            decode(&t).expect("truncate"),
            Message::Truncate {
                relations: vec![1, 2]
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[b'I', 0, 0]).is_err());
        assert!(decode(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0, 0, 0, 9, b'x']).is_err());
        assert_eq!(decode(&[b'Y', 1]).expect("ignored"), Message::Other);
    }
}
