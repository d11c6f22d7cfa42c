//! Identifier and literal quoting — the one place SQL text is built from user names — and
//! table names as users write them: `orders`, `billing.invoices`, or with SQL-quoted parts
//! such as `"my schema"."Weird ""Name"""`.
//!
//! An unquoted part must be written as PostgreSQL stores it: lower case, since PostgreSQL
//! folds unquoted names to lower case. Rather than fold `Orders` silently (and then watch a
//! table the user did not mean), such a name is refused with a hint to quote it or lower it.

/// Quotes an identifier for SQL: `my "x"` becomes `"my ""x"""`. Always quotes, so case and
/// spaces survive and no name can end the identifier early.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (standard-conforming strings).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

use std::fmt;

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`); longer ones are truncated.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The schema used when a table name has none.
pub const DEFAULT_SCHEMA: &str = "public";

/// A schema-qualified table name, each part exactly as PostgreSQL stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// The schema, e.g. `public`.
    pub schema: String,
    /// The bare table name, e.g. `orders`.
    pub name: String,
}

/// Why a table name does not parse; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TableNameError(String);

impl QualifiedName {
    /// A table name from its two parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> QualifiedName {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `table`, `schema.table`, either part possibly in double quotes with `""` for a
    /// quote; a name without schema is in [`DEFAULT_SCHEMA`].
    ///
    /// ```
    /// use pgevents_postgres::QualifiedName;
    /// assert_eq!(QualifiedName::parse("orders"), Ok(QualifiedName::new("public", "orders")));
    /// assert_eq!(
    ///     QualifiedName::parse(r#""my schema"."Weird ""Name""""#),
    ///     Ok(QualifiedName::new("my schema", r#"Weird "Name""#))
    /// );
    /// assert!(QualifiedName::parse("Orders").is_err()); // ambiguous: write orders or "Orders"
    /// ```
    pub fn parse(text: &str) -> Result<QualifiedName, TableNameError> {
        let mut parts = Vec::new();
        let mut chars = text.trim().chars().peekable();
        let empty_part = || {
            TableNameError(format!(
                "{text:?} has an empty part; write table or schema.table, e.g. \"public.orders\""
            ))
        };
        loop {
            let part = match chars.peek() {
                None | Some('.') => return Err(empty_part()),
                Some('"') => {
                    chars.next();
                    let mut part = String::new();
                    loop {
                        match chars.next() {
                            None => {
                                return Err(TableNameError(format!(
                                    "{text:?} has an unclosed double quote; close it, and write a quote inside a quoted name as \"\""
                                )))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                part.push('"');
                            }
                            Some('"') => break,
                            Some(c) => part.push(c),
                        }
                    }
                    if part.is_empty() {
                        return Err(TableNameError(format!(
                            "{text:?} has an empty quoted part \"\"; name the schema or table inside the quotes"
                        )));
                    }
                    part
                }
                Some(_) => {
                    let mut part = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '"' {
                            break;
                        }
                        part.push(c);
                        chars.next();
                    }
                    check_unquoted(text, &part)?;
                    part
                }
            };
            if part.len() > MAX_IDENTIFIER_BYTES {
                return Err(TableNameError(format!(
                    "{part:?} is longer than {MAX_IDENTIFIER_BYTES} bytes, which PostgreSQL would truncate; use the table's real name"
                )));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => {
                    return Err(TableNameError(format!(
                        "{text:?} has {c:?} where a . was expected; put a . between schema and table, or put the whole part in double quotes"
                    )))
                }
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => Ok(QualifiedName::new(DEFAULT_SCHEMA, name)),
            (Some(schema), Some(name), None) => Ok(QualifiedName::new(schema, name)),
            _ => Err(TableNameError(format!(
                "{text:?} has more than two parts; write table or schema.table, e.g. \"billing.invoices\" (a database name is not part of it)"
            ))),
        }
    }
}

/// Checks an unquoted part: what PostgreSQL would keep as written.
fn check_unquoted(text: &str, part: &str) -> Result<(), TableNameError> {
    if part.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(TableNameError(format!(
            "{part:?} has upper-case letters, which PostgreSQL folds to lower case unless quoted: \
             write {:?} for the lower-case table, or '\"{part}\"' (double quotes inside the TOML string) for the mixed-case one",
            part.to_ascii_lowercase()
        )));
    }
    if needs_quotes(part) {
        return Err(TableNameError(format!(
            "{text:?}: {part:?} is not a plain SQL name (lower-case letters, digits, _ and $, not starting with a digit or $); \
             put it in double quotes inside the TOML string, e.g. '\"{part}\"'"
        )));
    }
    Ok(())
}

/// Whether `part` must be quoted to keep its exact spelling in SQL.
fn needs_quotes(part: &str) -> bool {
    let mut chars = part.chars();
    let first_ok = chars.next().is_some_and(|c| {
        c == '_' || c.is_ascii_lowercase() || (!c.is_ascii() && c.is_alphabetic())
    });
    !first_ok
        || !chars.all(|c| {
            c == '_'
                || c == '$'
                || c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || (!c.is_ascii() && c.is_alphanumeric())
        })
}

impl QualifiedName {
    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::str::FromStr for QualifiedName {
    type Err = TableNameError;

    fn from_str(text: &str) -> Result<QualifiedName, TableNameError> {
        QualifiedName::parse(text)
    }
}

impl fmt::Display for QualifiedName {
    /// `schema.table`, quoting the parts that need it (as the config would write it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in [&self.schema, &self.name].into_iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if needs_quotes(part) {
                write!(f, "\"{}\"", part.replace('"', "\"\""))?;
            } else {
                f.write_str(part)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(quote_ident(r#"Weird "Name""#), r#""Weird ""Name""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            QualifiedName::parse(r#""my schema"."Weird ""Name""""#).map(|n| n.quoted()),
            Ok(r#""my schema"."Weird ""Name""""#.to_string())
        );
    }

    fn ok(text: &str, schema: &str, name: &str) {
        assert_eq!(
            QualifiedName::parse(text),
            Ok(QualifiedName::new(schema, name)),
            "{text}"
        );
    }

    #[test]
    fn plain_qualified_and_quoted_names() {
        ok("orders", "public", "orders");
        ok("billing.invoices", "billing", "invoices");
        ok(" public.orders ", "public", "orders");
        ok("s_1.t$2", "s_1", "t$2");
        ok(
            r#""my schema"."Weird ""Name""""#,
            "my schema",
            r#"Weird "Name""#,
        );
        ok(r#""Orders""#, "public", "Orders");
        ok(r#"billing."Invoices.2024""#, "billing", "Invoices.2024");
        ok("café", "public", "café");
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "public.orders",
            r#""my schema"."Weird ""Name""""#,
            r#"public."Orders""#,
            r#"public."1st""#,
        ] {
            let parsed = QualifiedName::parse(text).expect(text);
            assert_eq!(parsed.to_string(), text);
            assert_eq!(QualifiedName::parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn refusals_say_what_to_write() {
        for (text, hint) in [
            ("", "empty part"),
            ("a.", "empty part"),
            (".a", "empty part"),
            ("Orders", "write \"orders\""),
            ("my table", "double quotes"),
            ("1st", "double quotes"),
            ("a.b.c", "more than two parts"),
            (r#""open"#, "unclosed"),
            (r#""""#, "empty quoted part"),
            (r#""a"b"#, "where a . was expected"),
            (r#"a"b""#, "where a . was expected"),
        ] {
            let error = QualifiedName::parse(text).expect_err(text).to_string();
            assert!(error.contains(hint), "{text}: {error}");
        }
        assert!(QualifiedName::parse(&"x".repeat(64))
            .expect_err("too long")
            .to_string()
            .contains("63 bytes"));
        assert!(QualifiedName::parse(&"x".repeat(63)).is_ok());
    }
}
