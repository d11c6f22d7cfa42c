//! Where `*_from_env` settings are read: the process environment, or a fixed set of variables.
//!
//! Secrets never live in the config file: it names environment variables instead, and this
//! module reads them, turning an unset or empty variable into an error that says what to do.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::SinkConfigErrorKind;

/// The environment that `*_from_env` settings are looked up in.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Env {
    /// The process environment (`std::env::var`).
    #[default]
    Process,
    /// A fixed set of variables, for tests and for programs that embed pgevents.
    Fixed(BTreeMap<String, String>),
}

impl Env {
    /// An environment holding exactly `vars`.
    pub fn fixed<I, K, V>(vars: I) -> Env
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env::Fixed(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of variable `var`, which must be set and non-empty.
    ///
    /// `instead` completes the advice "export it or ..." (e.g. `use url = "..."`).
    pub fn require(&self, var: &str, instead: &str) -> Result<String, SinkConfigErrorKind> {
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(SinkConfigErrorKind::EnvNameInvalid { var: var.into() });
        }
        let value = match self {
            Env::Process => match std::env::var(var) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SinkConfigErrorKind::EnvNotUnicode { var: var.into() })
                }
            },
            Env::Fixed(vars) => vars.get(var).cloned(),
        };
        match value {
            None => Err(SinkConfigErrorKind::EnvNotSet {
                var: var.into(),
                instead: instead.into(),
            }),
            Some(value) if value.is_empty() => Err(SinkConfigErrorKind::EnvEmpty {
                var: var.into(),
                instead: instead.into(),
            }),
            Some(value) => Ok(value),
        }
    }
}

impl fmt::Debug for Env {
    /// Names the variables of a fixed environment, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Env::Process => f.write_str("Process"),
            Env::Fixed(vars) => f.debug_tuple("Fixed").field(&vars.keys()).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_empty_and_bad_names_are_errors_with_advice() {
        let env = Env::fixed([("SET", "x"), ("EMPTY", "")]);
        assert_eq!(env.require("SET", "use url = \"...\""), Ok("x".into()));
        assert_eq!(
            env.require("UNSET", "use url = \"...\"")
                .map_err(|e| e.to_string()),
            Err("environment variable UNSET is not set; export it or use url = \"...\"".into())
        );
        assert!(matches!(
            env.require("EMPTY", "x"),
            Err(SinkConfigErrorKind::EnvEmpty { .. })
        ));
        assert!(matches!(
            env.require("", "x"),
            Err(SinkConfigErrorKind::EnvNameInvalid { .. })
        ));
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = Env::fixed([("HOOK_SECRET", "hunter2")]);
        let shown = format!("{env:?}");
        assert!(
            shown.contains("HOOK_SECRET") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
