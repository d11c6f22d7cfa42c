//! Rendering events in the process, byte for byte as PostgreSQL renders them.
//!
//! The writer's statement has the server cast each decoded text value to its column's type
//! and call `to_json` on the row (see [`crate::writer`]). For rows whose columns are all of
//! common built-in types, the same bytes follow from the text forms themselves, so a
//! [`Plan`] renders them here and the server only stores the result — no statement, no
//! casts, no second pass over every value in the database:
//!
//! - numbers (`smallint`, `integer`, `bigint`, `numeric`, and `real`/`double
//!   precision` when the log connection prints floats shortest-exact, as the stream does):
//!   the text as is when it is a JSON number, else a JSON string (`"NaN"`, `"Infinity"`),
//!   as `to_json` decides;
//! - `boolean`: `true`/`false`; `json`, `jsonb`: the text as is (the server's own output);
//! - strings (`text`, `varchar`, `char(n)`, `name`, `oid`, `uuid`, `date`, and `bytea` when the log
//!   connection prints it as hex, as the stream does): escaped as PostgreSQL's `escape_json`
//!   escapes;
//! - `timestamp`: `T` between date and time; `timestamp with time zone` when the log
//!   connection's `TimeZone` is UTC (the stream's): also the offset as `+00:00`.
//!
//! Ordering keys are `hashtextextended` of the key's text ([`hash_text`]), computed here
//! for keys of numbers, `uuid` and strings (whose text the server's statement hashes under
//! the database's default collation too), in a `ROW(...)`'s text form for several columns
//! ([`record_text`]); the log connection's server is asked once whether both agree with
//! it (a server of another byte order, or a C library counting other bytes as white
//! space, would not). Anything else — another type (arrays,
//! composites, enums, domains, intervals), a `where` condition, stored generated columns,
//! a database not in UTF-8 — keeps the server's statement: a row shape has a plan only when
//! every part of its events can be rendered exactly.

use std::sync::Arc;

use pgevents_log::inline::Unwritten;
use pgevents_trigger::image::in_table_order;
use tokio_postgres::Client;

use crate::writer::{Projection, Row, Shape};
use crate::Error;

/// Settings of the log connection that decide how PostgreSQL prints values there.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Session {
    /// The database's encoding is UTF-8 (the stream's text is then the server's bytes).
    utf8: bool,
    /// `TimeZone` is UTC: timestamps with time zone print as the stream sends them.
    utc: bool,
    /// `bytea_output` is `hex`, as on the stream.
    hex_bytea: bool,
    /// `extra_float_digits` > 0: floats print shortest-exact, as on the stream.
    shortest_floats: bool,
    /// The server's `ROW(...)` text and `hashtextextended` are [`record_text`]'s and
    /// [`hash_text`]'s.
    same_keys: bool,
}

/// Names PostgreSQL gives the UTC zone.
const UTC_NAMES: &[&str] = &[
    "UTC",
    "Etc/UTC",
    "UCT",
    "Etc/UCT",
    "GMT",
    "Etc/GMT",
    "GMT0",
    "Etc/GMT0",
    "GMT+0",
    "GMT-0",
    "Etc/GMT+0",
    "Etc/GMT-0",
    "Greenwich",
    "Etc/Greenwich",
    "Universal",
    "Etc/Universal",
    "Zulu",
    "Etc/Zulu",
];

impl Session {
    /// Reads the settings of `client`'s session.
    pub async fn of(client: &Client) -> Result<Session, Error> {
        // Bytes 0x85 and 0xA0 (inside "Å" and "à") are white space to some C libraries.
        let sample = [Some("àÅ b"), Some("1"), Some(""), None];
        let row = client
            .query_one(
                "SELECT current_setting('server_encoding'), current_setting('TimeZone'),
                        current_setting('bytea_output'),
                        current_setting('extra_float_digits')::int4,
                        ROW($1::text, $2::int4, $3::text, $4::text)::text,
                        hashtextextended(ROW($1::text, $2::int4, $3::text, $4::text)::text, 7),
                        hashtextextended('abcdefghijklm', 4294967297)",
                &[&sample[0], &1_i32, &sample[2], &sample[3]],
            )
            .await
            .map_err(|e| Error::query("reading the log connection's settings", e))?;
        let zone: String = row.get(1);
        let record = record_text(sample.into_iter());
        let same_keys = row.get::<_, Option<String>>(4).as_deref() == Some(record.as_str())
            && row.get::<_, Option<i64>>(5) == Some(hash_text(record.as_bytes(), 7))
            && row.get::<_, Option<i64>>(6) == Some(hash_text(b"abcdefghijklm", 4_294_967_297));
        Ok(Session {
            utf8: row.get::<_, String>(0) == "UTF8",
            utc: UTC_NAMES.iter().any(|n| n.eq_ignore_ascii_case(&zone)),
            hex_bytea: row.get::<_, String>(2) == "hex",
            shortest_floats: row.get::<_, i32>(3) > 0,
            same_keys,
        })
    }
}

/// How a column's text becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The text when it is a JSON number, else a JSON string.
    Number,
    /// `t`/`f` as `true`/`false`.
    Bool,
    /// The text as a JSON string.
    Text,
    /// The text as is (`json`, `jsonb`).
    Json,
    /// A `timestamp`: `T` between date and time.
    Timestamp,
    /// A `timestamp with time zone` printed in UTC: also `+00:00`.
    TimestampTz,
}

impl Kind {
    /// The kind of a column of type `oid`, when its values render exactly in `session`.
    fn of(oid: u32, session: &Session) -> Option<Kind> {
        Some(match oid {
            20 | 21 | 23 | 1700 => Kind::Number,
            700 | 701 if session.shortest_floats => Kind::Number,
            16 => Kind::Bool,
            25 | 1043 | 1042 | 19 | 26 | 2950 | 1082 => Kind::Text,
            17 if session.hex_bytea => Kind::Text,
            114 | 3802 => Kind::Json,
            1114 => Kind::Timestamp,
            1184 if session.utc => Kind::TimestampTz,
            _ => return None,
        })
    }

    /// Appends `text` as `to_json` renders the value; `None` when the text is not of the
    /// form the stream sends for the type.
    fn render(self, text: &str, out: &mut String) -> Option<()> {
        match self {
            Kind::Number if is_json_number(text.as_bytes()) => out.push_str(text),
            Kind::Number | Kind::Text => escape_json(text, out),
            Kind::Bool => out.push_str(match text {
                "t" => "true",
                "f" => "false",
                _ => return None,
            }),
            Kind::Json => out.push_str(text),
            Kind::Timestamp | Kind::TimestampTz => {
                if !text.starts_with(|c: char| c.is_ascii_digit()) {
                    // infinity, -infinity
                    escape_json(text, out);
                    return Some(());
                }
                let (stamp, era) = match text.strip_suffix(" BC") {
                    Some(stamp) => (stamp, " BC"),
                    None => (text, ""),
                };
                let (date, time) = stamp.split_once(' ')?;
                out.push('"');
                out.push_str(date);
                out.push('T');
                if self == Kind::TimestampTz {
                    out.push_str(time.strip_suffix("+00")?);
                    out.push_str("+00:00");
                } else {
                    out.push_str(time);
                }
                out.push_str(era);
                out.push('"');
            }
        }
        Some(())
    }

    /// Whether a key of this type hashes as its text (its `::text` and its `ROW(...)`
    /// output are the text the stream sends).
    fn hashes_as_text(oid: u32) -> bool {
        matches!(oid, 20 | 21 | 23 | 26 | 1700 | 25 | 1043 | 19 | 2950)
    }
}

/// Whether `s` is a JSON number by PostgreSQL's JSON lexer (`IsValidJsonNumber`).
fn is_json_number(s: &[u8]) -> bool {
    let digits = |mut i: usize| {
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i + 1),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        if !s.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        i = digits(i + 1);
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !s.get(i).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        i = digits(i);
    }
    i == s.len()
}

/// Appends `text` as a JSON string, escaped as PostgreSQL's `escape_json` escapes it.
fn escape_json(text: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'\x08' => "\\b",
            b'\x0c' => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        if escaped.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// The text form of `ROW(values...)` (`record_out`): NULL as nothing, a value quoted when
/// empty or holding `"`, `\`, `(`, `)`, `,` or white space, with `"` and `\` doubled.
pub(crate) fn record_text<'a>(values: impl Iterator<Item = Option<&'a str>>) -> String {
    let mut out = String::from("(");
    for (n, value) in values.enumerate() {
        if n > 0 {
            out.push(',');
        }
        let Some(value) = value else { continue };
        let quoted = value.is_empty()
            || value.bytes().any(|b| {
                matches!(
                    b,
                    b'"' | b'\\'
                        | b'('
                        | b')'
                        | b','
                        | b' '
                        | b'\t'
                        | b'\n'
                        | b'\x0b'
                        | b'\x0c'
                        | b'\r'
                )
            });
        if quoted {
            out.push('"');
        }
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push(c);
            }
            out.push(c);
        }
        if quoted {
            out.push('"');
        }
    }
    out.push(')');
    out
}

/// PostgreSQL's `hashtextextended` of text under a deterministic collation: Bob Jenkins'
/// lookup3 as `hash_bytes_extended` computes it (on a little-endian server, which the
/// 64-bit platforms PostgreSQL runs on are, but for s390x), `seed` perturbing its state.
pub(crate) fn hash_text(key: &[u8], seed: i64) -> i64 {
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }
    fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
    }
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    // The length taken as PostgreSQL's uint32 (a text is under 1 GB).
    let start = 0x9e37_79b9_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (start, start, start);
    if seed != 0 {
        a = a.wrapping_add((seed as u64 >> 32) as u32);
        b = b.wrapping_add(seed as u64 as u32);
        mix(&mut a, &mut b, &mut c);
    }
    let mut k = key;
    while k.len() >= 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    // The last 11 bytes; the lowest byte of c is reserved for the length.
    let byte = |i: usize, shift: u32| u32::from(k[i]) << shift;
    let n = k.len();
    for i in 8..n {
        c = c.wrapping_add(byte(i, 8 * (i as u32 - 7)));
    }
    for i in 4..n.min(8) {
        b = b.wrapping_add(byte(i, 8 * (i as u32 - 4)));
    }
    for i in 0..n.min(4) {
        a = a.wrapping_add(byte(i, 8 * i as u32));
    }
    finish(&mut a, &mut b, &mut c);
    ((u64::from(b) << 32) | u64::from(c)) as i64
}

/// Which columns make an event's ordering key.
#[derive(Debug)]
enum Key {
    /// No key (`none`, or a row ordering of a table without a key).
    None,
    /// The trigger's constant key (`table`).
    Table,
    /// One column's text (`row` on a one-column key).
    Column(usize),
    /// The text of `ROW(...)` of these columns (`row` on several, `columns`).
    Record(Vec<usize>),
}

impl Key {
    /// The key of an image (all NULL when the change has none), `None` for NULL.
    fn of(&self, image: Option<&[Option<String>]>, seed: i64) -> Option<i64> {
        let value = |i: usize| image.and_then(|v| v.get(i)).and_then(|v| v.as_deref());
        match self {
            Key::None => None,
            Key::Table => Some(hash_text(b"", seed)),
            Key::Column(i) => value(*i).map(|v| hash_text(v.as_bytes(), seed)),
            Key::Record(columns) => Some(hash_text(
                record_text(columns.iter().map(|&i| value(i))).as_bytes(),
                seed,
            )),
        }
    }
}

/// How the events of one row shape and projection are rendered in the process.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Each published column's kind.
    kinds: Vec<Kind>,
    /// The columns the images keep, in table order, each with its `"name":` prefix.
    payload: Vec<(usize, String)>,
    /// The `row` ordering's key.
    row: Key,
    /// The `columns` ordering's key.
    group: Key,
}

impl Plan {
    /// The plan for rows of `shape` taken as `projection` says, when every part of their
    /// events renders exactly in `session` (see the module's documentation).
    pub fn new(
        shape: &Shape,
        projection: Option<&Projection>,
        session: &Session,
    ) -> Option<Arc<Plan>> {
        if !session.utf8 || !session.same_keys || shape.layout.is_some() {
            return None;
        }
        if projection.is_some_and(|p| p.condition.is_some()) {
            return None;
        }
        let kinds = shape
            .columns
            .iter()
            .map(|c| Kind::of(c.type_oid, session))
            .collect::<Option<Vec<Kind>>>()?;
        let names: Vec<String> = shape.columns.iter().map(|c| c.name.clone()).collect();
        let position = |name: &String| names.iter().position(|n| n == name);
        let kept = in_table_order(
            projection.and_then(|p| p.payload_columns.as_deref()),
            &names,
        );
        let payload = kept
            .map_or_else(
                || (0..names.len()).collect(),
                |kept| kept.iter().filter_map(position).collect::<Vec<usize>>(),
            )
            .into_iter()
            .map(|i| {
                let mut prefix = String::new();
                escape_json(&names[i], &mut prefix);
                prefix.push(':');
                (i, prefix)
            })
            .collect();
        let hashable = |i: &usize| Kind::hashes_as_text(shape.columns[*i].type_oid);
        let row = match shape.key.as_slice() {
            [] => Key::None,
            [one] if hashable(one) => Key::Column(*one),
            columns if columns.iter().all(hashable) => Key::Record(columns.to_vec()),
            _ => return None,
        };
        // Group columns the row no longer has are left out, as the statement leaves them.
        let group: Vec<usize> = projection
            .and_then(|p| p.group_columns.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(position)
            .collect();
        if !group.iter().all(hashable) {
            return None;
        }
        let group = if group.is_empty() {
            Key::None
        } else {
            Key::Record(group)
        };
        Some(Arc::new(Plan {
            kinds,
            payload,
            row,
            group,
        }))
    }

    /// The event of `row` at log position `seq`; `None` when a value is not of the form
    /// the stream sends for its type (the server's statement renders the row then).
    pub fn render(&self, row: &Row, seq: i64) -> Option<Unwritten> {
        let seed = i64::from(row.trigger_id);
        let old = row.old.as_deref();
        let new = row.new.as_deref();
        let (row_key, old_key) = match row.ordering as u8 {
            b'n' => (None, None),
            b't' => (Key::Table.of(None, seed), None),
            code @ (b'r' | b'c') => {
                let key = if code == b'r' { &self.row } else { &self.group };
                let row_key = key.of(if row.op as u8 == b'D' { old } else { new }, seed);
                let old_key = (row.op as u8 == b'U')
                    .then(|| key.of(old, seed))
                    .flatten()
                    .filter(|old| Some(*old) != key.of(new, seed));
                (row_key, old_key)
            }
            _ => return None,
        };
        Some(Unwritten {
            seq,
            trigger_id: row.trigger_id,
            op: row.op,
            row_key,
            old_key,
            old: match old {
                Some(values) => Some(self.image(values)?),
                None => None,
            },
            new: match new {
                Some(values) => Some(self.image(values)?),
                None => None,
            },
            created_at: row.created_at,
        })
    }

    /// `to_json` of an image's kept columns.
    fn image(&self, values: &[Option<String>]) -> Option<String> {
        let mut out = String::with_capacity(
            2 + self
                .payload
                .iter()
                .map(|(i, prefix)| {
                    prefix.len()
                        + 1
                        + values
                            .get(*i)
                            .map_or(4, |v| v.as_ref().map_or(4, |v| v.len() + 2))
                })
                .sum::<usize>(),
        );
        out.push('{');
        for (n, (i, prefix)) in self.payload.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(prefix);
            match values.get(*i)? {
                None => out.push_str("null"),
                Some(text) => self.kinds[*i].render(text, &mut out)?,
            }
        }
        out.push('}');
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(types: &[u32], key: Vec<usize>) -> Shape {
        Shape {
            columns: types
                .iter()
                .enumerate()
                .map(|(i, oid)| crate::pgoutput::Column {
                    name: format!("c{i}"),
                    type_oid: *oid,
                    type_modifier: -1,
                })
                .collect(),
            key,
            layout: None,
        }
    }

    #[test]
    fn plans_only_what_renders_exactly() {
        let stream_like = Session {
            utf8: true,
            utc: true,
            hex_bytea: true,
            shortest_floats: true,
            same_keys: true,
        };
        let common = [
            20, 25, 1700, 701, 16, 3802, 114, 1184, 1114, 1082, 17, 2950, 26,
        ];
        assert!(Plan::new(&shape(&common, vec![1, 0]), None, &stream_like).is_some());
        // An array, an interval, an enum's or a domain's own OID: the server renders.
        for other in [1007, 1186, 16_385] {
            assert!(Plan::new(&shape(&[20, other], vec![0]), None, &stream_like).is_none());
        }
        // Keys whose text the process cannot know: a boolean's, a timestamp's.
        assert!(Plan::new(&shape(&[16, 20], vec![0]), None, &stream_like).is_none());
        assert!(Plan::new(&shape(&[1184], vec![0]), None, &stream_like).is_none());
        // A log connection printing otherwise than the stream.
        let elsewhere = Session {
            utc: false,
            hex_bytea: false,
            shortest_floats: false,
            ..stream_like
        };
        for printed in [1184, 17, 701] {
            assert!(Plan::new(&shape(&[20, printed], vec![0]), None, &elsewhere).is_none());
        }
        assert!(Plan::new(&shape(&[20, 25], vec![0]), None, &Session::default()).is_none());
        // A server whose keys hash otherwise than this process computes them.
        let other_keys = Session {
            same_keys: false,
            ..stream_like
        };
        assert!(Plan::new(&shape(&[20], vec![0]), None, &other_keys).is_none());
        // A group of columns of several types, and a payload cut to some columns.
        let projection = Projection {
            payload_columns: Some(vec!["c1".into(), "gone".into()]),
            group_columns: Some(vec!["c1".into()]),
            condition: None,
        };
        let plan =
            Plan::new(&shape(&[20, 25], vec![0]), Some(&projection), &stream_like).expect("a plan");
        assert_eq!(plan.payload, [(1, "\"c1\":".to_string())]);
        assert!(matches!(&plan.group, Key::Record(columns) if columns == &[1]));
    }

    /// `hashtextextended(text, seed)` as PostgreSQL 15 returned it.
    #[test]
    fn hashes_text_as_postgresql() {
        let cases: &[(&str, i64, i64)] = &[
            ("", 0, -6939563903564495251),
            ("", -1, -5142811166230430645),
            ("", 4294967297, -2107732646845606080),
            ("a", 0, 3591986179850072241),
            ("a", 7, 6761863715122467050),
            ("abcd", 1, -9042268383291675265),
            ("abcde", -1, 1101614911744638770),
            ("abcdefgh", 0, -8882191227074733005),
            ("abcdefghi", 4294967297, -716533554892663473),
            ("abcdefghijk", 7, -4615438900308943748),
            ("abcdefghijkl", 0, -7556637188122330412),
            ("abcdefghijklm", 1, 3808842878744369845),
            ("abcdefghijklmnopqrstuvwx", -1, -1203456767747787834),
            ("abcdefghijklmnopqrstuvwxy", 7, 3796739520200716204),
            (
                "abcdefghijklmnopqrstuvwxyz",
                4294967297,
                4513954780223858432,
            ),
            ("héllo, wörld ✓", 0, -2543737631703942120),
            ("(a,\"b c\")", 7, -299773507633039365),
        ];
        for (text, seed, expected) in cases {
            assert_eq!(
                hash_text(text.as_bytes(), *seed),
                *expected,
                "{text:?} {seed}"
            );
        }
    }

    #[test]
    fn numbers_are_json_numbers_as_the_lexer_reads_them() {
        for yes in [
            "0",
            "-0",
            "12",
            "-1.5",
            "1e+20",
            "1.5e-7",
            "12345678901234567890.1",
            "2E3",
        ] {
            assert!(is_json_number(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "-",
            "01",
            "+1",
            ".5",
            "1.",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "1x",
            " 1",
        ] {
            assert!(!is_json_number(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn strings_escape_as_escape_json() {
        let mut out = String::new();
        escape_json("a\"b\\c\n\t\u{1}\u{7f}é\u{8}\u{c}\r", &mut out);
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\t\\u0001\u{7f}é\\b\\f\\r\"");
    }

    #[test]
    fn records_quote_as_record_out() {
        let text = record_text(
            [
                Some("a"),
                None,
                Some(""),
                Some("b c"),
                Some("x\"y\\z"),
                Some("(1,2)"),
            ]
            .into_iter(),
        );
        assert_eq!(text, r#"(a,,"","b c","x""y\\z","(1,2)")"#);
    }

    #[test]
    fn timestamps_render_as_to_json() {
        let render = |kind: Kind, text: &str| {
            let mut out = String::new();
            kind.render(text, &mut out).map(|()| out)
        };
        assert_eq!(
            render(Kind::Timestamp, "2026-11-24 10:15:00.123456").as_deref(),
            Some("\"2026-11-24T10:15:00.123456\"")
        );
        assert_eq!(
            render(Kind::TimestampTz, "0044-03-15 12:00:00+00 BC").as_deref(),
            Some("\"0044-03-15T12:00:00+00:00 BC\"")
        );
        assert_eq!(
            render(Kind::TimestampTz, "-infinity").as_deref(),
            Some("\"-infinity\"")
        );
        assert_eq!(render(Kind::TimestampTz, "2026-11-24 10:15:00+02"), None);
        assert_eq!(render(Kind::Bool, "true"), None);
        assert_eq!(render(Kind::Number, "NaN").as_deref(), Some("\"NaN\""));
    }
}
