//! What `docs/install.md` tells an operator to do, read out of the page itself, so that the
//! sandbox and the tests set servers up exactly as the guide says and a wrong guide fails them:
//! the `ini` block of server settings and the `sql` blocks that create ferry's account.

/// The install guide, as shipped.
const GUIDE: &str = include_str!("../../docs/install.md");

/// The password the guide's SQL writes, replaced by the real one.
const PLACEHOLDER_PASSWORD: &str = "change-me";

/// The application schema the guide's SQL grants on, replaced by the real ones.
const PLACEHOLDER_SCHEMA: &str = "`shop`";

/// The body of every fenced block of `language` in `text`, in order.
fn blocks<'a>(text: &'a str, language: &str) -> Vec<&'a str> {
    let fence = format!("```{language}\n");
    text.split(fence.as_str()).skip(1).map(|rest| rest.split("```").next().unwrap_or("")).collect()
}

/// The guide's server settings as `mariadbd` options (`--binlog_format=ROW`, ...).
pub fn server_settings() -> Vec<String> {
    blocks(GUIDE, "ini")
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| format!("--{}={}", k.trim(), v.trim()))
        .collect()
}

/// The guide's SQL, statement by statement, creating ferry's account with `password` and
/// granting the application grants on each of `schemas` (a statement naming the guide's example
/// schema is repeated per schema).
pub fn account_sql(password: &str, schemas: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for statement in
        blocks(GUIDE, "sql").into_iter().flat_map(|b| b.split(';')).map(str::trim).filter(|s| !s.is_empty())
    {
        let statement = statement.replace(PLACEHOLDER_PASSWORD, &password.replace('\'', "''"));
        if statement.contains(PLACEHOLDER_SCHEMA) {
            out.extend(schemas.iter().map(|s| statement.replace(PLACEHOLDER_SCHEMA, &format!("`{s}`"))));
        } else {
            out.push(statement);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_has_settings_and_an_account() {
        let settings = server_settings();
        for wanted in ["--binlog_format=ROW", "--binlog_row_metadata=FULL", "--gtid_strict_mode=ON"] {
            assert!(settings.iter().any(|s| s == wanted), "{wanted} in {settings:?}");
        }
        let sql = account_sql("pw'1", &["a", "b"]);
        assert!(sql[0].starts_with("CREATE USER") && sql[0].contains("'pw''1'"), "{sql:?}");
        assert_eq!(sql.iter().filter(|s| s.contains("ON `a`.*") || s.contains("ON `b`.*")).count(), 2);
        assert!(!sql.iter().any(|s| s.contains(PLACEHOLDER_SCHEMA) || s.contains(PLACEHOLDER_PASSWORD)));
    }
}
