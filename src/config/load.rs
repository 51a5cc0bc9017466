//! Loading: YAML text → generic tree → env overrides → typed [`Config`] → validation.
//!
//! serde stops at the first error, but an operator wants every problem at once. So the tree is
//! deserialized repeatedly: each error is recorded with its path, the offending node is pruned
//! from the tree, and deserialization is retried. Semantic checks then run on what parsed, and
//! a semantic problem that points at a pruned node is dropped (it would only echo the first one).

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Config, validate};

/// Environment variables starting with this override config keys:
/// `FERRY__HTTP__LISTEN=0.0.0.0:9464` sets `http.listen`. Segments are lowercased; the value is
/// parsed as a YAML scalar or flow collection (`3306`, `true`, `[a, b]`).
pub const ENV_PREFIX: &str = "FERRY__";

/// How many prune-and-retry passes before giving up; far above any real config's error count.
const MAX_PASSES: usize = 100;

/// One problem, at one YAML path (empty path = the document itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(document): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} configuration problem{}", self.source, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Load and validate the file at `path`, applying `FERRY__*` overrides from the environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source: source.clone(),
        problems: vec![problem("", format!("cannot read file: {e}"))],
    })?;
    load_str(&source, &text, std::env::vars())
}

/// Load and validate YAML `text`; `env` supplies the override variables (all of them; only
/// those starting with [`ENV_PREFIX`] are used).
pub fn load_str(
    source: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut tree: Value = match serde_saphyr::from_str(text) {
        Ok(Value::Null) => Value::Object(Map::new()),
        Ok(v) => v,
        Err(e) => {
            let problems = vec![problem("", format!("not valid YAML: {e}"))];
            return Err(ConfigErrors { source: source.to_string(), problems });
        }
    };
    let (mut problems, overridden) = apply_env_overrides(&mut tree, env);
    // A problem at (or inside) a key an environment variable set says so: the file is not
    // where to fix it.
    let fail = |problems: Vec<ConfigProblem>| ConfigErrors {
        source: source.to_string(),
        problems: problems
            .into_iter()
            .map(|mut p| {
                if let Some((_, name)) = overridden.iter().find(|(path, name)| {
                    (p.path == *path
                        || p.path.starts_with(&format!("{path}."))
                        || p.path.starts_with(&format!("{path}[")))
                        && !p.message.contains(name.as_str())
                }) {
                    p.message = format!("{} (set by the environment variable {name})", p.message);
                }
                p
            })
            .collect(),
    };
    let mut pruned: Vec<String> = Vec::new();

    for _ in 0..MAX_PASSES {
        let err = match serde_path_to_error::deserialize::<_, Config>(&tree) {
            Ok(config) => {
                problems.extend(
                    validate::validate(&config)
                        .into_iter()
                        .filter(|p| !p.touches_any(&pruned))
                        .map(|p| problem(&p.path, p.message)),
                );
                return if problems.is_empty() { Ok(config) } else { Err(fail(problems)) };
            }
            Err(e) => e,
        };
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = err.inner().to_string();
        let mut target: Vec<Segment> = err.path().iter().map(Segment::from).collect();

        if let Some(field) = backticked(&message, "missing field `") {
            // `target` is the struct that lacks the field; it is what gets pruned.
            let missing = join(&path, &field);
            if !pruned.iter().any(|p| is_prefix(p, &missing)) {
                problems.push(problem(&missing, "is required".into()));
            }
        } else if let Some(field) = backticked(&message, "unknown field `") {
            // The path already ends in the unknown key.
            let text = match message.split_once(", expected ") {
                Some((_, expected)) => format!("unknown field `{field}` (expected {expected})"),
                None => format!("unknown field `{field}`"),
            };
            problems.push(problem(&path, text));
        } else if !problems
            .iter()
            .any(|p| p.path.starts_with(&format!("{path}.")) || p.path.starts_with(&format!("{path}[")))
        {
            // A node whose inside was already reported (and pruned) fails again as a whole
            // (an enum left as an empty map: "expected map with a single key"): an echo of the
            // real problem, not reported.
            problems.push(problem(&path, message));
        }
        // Inside a list, prune the whole list: removing one element would shift the indexes
        // of the ones after it, and later problems would name the wrong element.
        while matches!(target.last(), Some(Segment::Index(_))) {
            target.pop();
        }
        if !remove(&mut tree, &target) {
            return Err(fail(problems));
        }
        pruned.push(render(&target));
    }
    problems.push(problem("", "too many problems; fix these and try again".into()));
    Err(fail(problems))
}

fn problem(path: &str, message: String) -> ConfigProblem {
    ConfigProblem { path: path.to_string(), message }
}

/// A semantic problem found by validation, possibly referring to another path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Finding {
    pub path: String,
    pub message: String,
    /// Another node this finding depends on (e.g. the region a reference names).
    pub refers_to: Option<String>,
}

impl Finding {
    fn touches_any(&self, pruned: &[String]) -> bool {
        pruned
            .iter()
            .any(|p| is_prefix(p, &self.path) || self.refers_to.as_deref().is_some_and(|r| is_prefix(p, r)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Seq { index } => Segment::Index(*index),
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Segment::Key(variant.clone()),
            serde_path_to_error::Segment::Unknown => Segment::Key("?".into()),
        }
    }
}

fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Remove the node at `path` from `tree`; false when there is nothing to remove.
fn remove(tree: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut node = tree;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        _ => false,
    }
}

/// The text between `prefix` and the next backtick, e.g. the field name in serde's messages.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// `a` is `b` or an ancestor of `b` (`regions.east` of `regions.east.mysql`, not of `regions.eastern`).
fn is_prefix(a: &str, b: &str) -> bool {
    b == a || (b.starts_with(a) && matches!(b.as_bytes().get(a.len()), Some(b'.') | Some(b'[')))
}

/// Apply `FERRY__A__B=value` overrides. Returns problems for values that are not valid YAML or
/// that would descend through a non-map.
fn apply_env_overrides(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> (Vec<ConfigProblem>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, raw) in vars {
        let keys: Vec<String> =
            name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        let path = keys.join(".");
        if keys.iter().any(String::is_empty) {
            problems.push(problem(&path, format!("environment variable {name} has an empty key segment")));
            continue;
        }
        let value: Value = match serde_saphyr::from_str(&raw) {
            Ok(v) => v,
            Err(_) => Value::String(raw.clone()),
        };
        if set_path(tree, &keys, value) {
            applied.push((path, name));
        } else {
            problems.push(problem(
                &path,
                format!("environment variable {name} overrides a key inside a value that is not a map"),
            ));
        }
    }
    (problems, applied)
}

fn set_path(tree: &mut Value, keys: &[String], value: Value) -> bool {
    let Some((last, parents)) = keys.split_last() else { return false };
    let mut node = tree;
    for k in parents {
        let Value::Object(map) = node else { return false };
        node = map.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = node else { return false };
    map.insert(last.clone(), value);
    true
}

#[cfg(test)]
mod tests;
