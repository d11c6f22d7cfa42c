//! Identifier and literal quoting: the one place SQL text is built from user names.

use std::fmt;

/// Quotes an identifier for SQL: `my "x"` becomes `"my ""x"""`. Always quotes, so case and
/// spaces survive and no name can end the identifier early.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (standard-conforming strings).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A schema-qualified table name, as given in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// The schema.
    pub schema: String,
    /// The table.
    pub name: String,
}

impl QualifiedName {
    /// Parses `table`, `schema.table`, or either part double-quoted (`"my schema"."Weird ""Name"""`).
    /// Unquoted parts are taken as written (not case-folded); a bare name means schema `public`.
    pub fn parse(text: &str) -> Result<QualifiedName, String> {
        let parts = split_parts(text)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName {
                schema: "public".into(),
                name: name.clone(),
            }),
            [schema, name] => Ok(QualifiedName {
                schema: schema.clone(),
                name: name.clone(),
            }),
            _ => Err(format!(
                "{text:?} is not a table name: write `table` or `schema.table` (quote parts containing dots with \"...\")"
            )),
        }
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let part = |s: &str| {
            if plain(s) {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

fn split_parts(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("{text:?} has an unclosed quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("{text:?} has an empty name part"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("{text:?}: unexpected {c:?} after a quoted name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(quote_ident(r#"Weird "Name""#), r#""Weird ""Name""""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn parses_table_names() {
        let q = |s| QualifiedName::parse(s);
        assert_eq!(
            q("orders").map(|n| n.quoted()),
            Ok(r#""public"."orders""#.into())
        );
        assert_eq!(
            q(r#""my schema"."Weird ""Name""""#).map(|n| (n.schema, n.name)),
            Ok(("my schema".into(), r#"Weird "Name""#.into()))
        );
        assert_eq!(
            q("billing.invoices").map(|n| n.to_string()),
            Ok("billing.invoices".into())
        );
        assert!(q("a.b.c").is_err());
        assert!(q("").is_err());
        assert!(q(r#""open"#).is_err());
    }
}
