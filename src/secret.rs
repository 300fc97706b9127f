//! A value that must never reach a log: its `Debug` prints `<redacted>`. Use it for fields
//! that hold JWTs, client secrets or credentials, so that a `{:?}` of the enclosing struct
//! (in an error, a trace, a test failure) does not leak them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Serialises and compares as the value inside; only `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

/// What `Debug` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)] // read only through Debug
    struct Login {
        user: String,
        password: Secret<String>,
    }

    #[test]
    fn debug_hides_the_value_serde_keeps_it() {
        let login = Login {
            user: "alice".into(),
            password: Secret::new("hunter2".into()),
        };
        let shown = format!("{login:?} {login:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains(REDACTED),
            "{shown}"
        );
        let s: Secret<String> = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
    }
}
