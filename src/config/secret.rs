//! Secrets in configuration: a password or key given inline, by environment variable or by file.
//!
//! The value is resolved while the configuration is deserialized. A missing variable or an
//! unreadable file does not fail deserialization (that would hide the other problems of the
//! same section): the failure is kept in the secret and validation reports it with its path.
//! `Debug` and `Serialize` never show the value: serializing writes the *reference* back
//! (`{env: NAME}` / `{file: PATH}`), or `[redacted]` for an inline value.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a secret's value comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    /// `{env: NAME}`: read from an environment variable.
    Env { env: String },
    /// `{file: PATH}`: read from a file; one trailing newline is dropped.
    File { file: PathBuf },
    /// A literal value in the file. Allowed for sandboxes; prefer `env` or `file`.
    Inline(String),
}

/// A secret and its resolved value (or why it could not be resolved). The value is only
/// reachable through [`Secret::expose`].
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: Result<String, String>,
}

impl Secret {
    /// A secret read from `path`, resolved now.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, String> {
        Self::resolve(SecretSource::File { file: path.into() })
    }

    /// An inline secret (tests and generated sandbox files).
    pub fn inline(value: impl Into<String>) -> Self {
        let value = value.into();
        Self { source: SecretSource::Inline(value.clone()), value: Ok(value) }
    }

    pub fn resolve(source: SecretSource) -> Result<Self, String> {
        let secret = Self::lenient(source);
        secret.problem().map_or(Ok(()), |p| Err(p.to_string()))?;
        Ok(secret)
    }

    /// Resolve now, keeping a failure inside the secret for validation to report.
    fn lenient(source: SecretSource) -> Self {
        let value = Self::read(&source);
        Self { source, value }
    }

    fn read(source: &SecretSource) -> Result<String, String> {
        Ok(match source {
            SecretSource::Env { env } => std::env::var(env)
                .map_err(|_| format!("environment variable `{env}` is not set (or not UTF-8)"))?,
            SecretSource::File { file } => {
                let mut text = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
            SecretSource::Inline(v) => v.clone(),
        })
    }

    /// Why the value could not be read, if it could not.
    pub fn problem(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }

    /// The secret value (empty if it could not be resolved; a validated config has none such).
    /// Callers must not log it.
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::Env { env } => write!(f, "Secret(env:{env}, [redacted])"),
            SecretSource::File { file } => write!(f, "Secret(file:{}, [redacted])", file.display()),
            SecretSource::Inline(_) => f.write_str("Secret([redacted])"),
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let source = SecretSource::deserialize(de).map_err(|e| {
            // Keep serde's own "missing field" error so the loader recognises it.
            if e.to_string().starts_with("missing field") {
                e
            } else {
                serde::de::Error::custom("expected a secret: a string, `{env: VARIABLE}` or `{file: PATH}`")
            }
        })?;
        Ok(Secret::lenient(source))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.source {
            SecretSource::Inline(_) => s.serialize_str("[redacted]"),
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let s = Secret::inline("hunter2");
        assert_eq!(s.expose(), "hunter2");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "Debug leaked the secret: {dbg}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "Serialize leaked the secret: {json}");
    }

    #[test]
    fn file_secret_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let s = Secret::from_file(&p).unwrap();
        assert_eq!(s.expose(), "s3cret");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret"), "Debug leaked the secret: {dbg}");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_file() {
        let err = Secret::from_file("/nonexistent/ferry-secret").unwrap_err();
        assert!(err.contains("/nonexistent/ferry-secret"), "got: {err}");
    }
}
