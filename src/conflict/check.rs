//! The conflict rules against the local primary's schema (`ferry validate`, and a warning at
//! `ferry run`): delta columns must be exact numbers outside every key, a version column must
//! be temporal or an integer, and a table with neither a version column nor delta columns
//! must be declared `single_writer` (nothing else would make its regions converge).

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::Queryable;

use crate::config::{Config, ConfigProblem};

use crate::schema::NOT_USER_SCHEMAS as SYSTEM;

#[derive(Debug, Default)]
struct Table {
    /// column → data type (lower case)
    columns: BTreeMap<String, String>,
    /// Columns of the primary key and of unique indexes.
    keyed: BTreeSet<String>,
    has_primary_key: bool,
}

/// Every problem of `config.conflicts` against the schema `conn` reaches, with its YAML path.
pub async fn check(
    conn: &mut mysql_async::Conn,
    config: &Config,
) -> Result<Vec<ConfigProblem>, mysql_async::Error> {
    let columns: Vec<(String, String, String, String)> = conn
        .query(format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, LOWER(c.DATA_TYPE) FROM information_schema.COLUMNS c \
             JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA NOT IN {SYSTEM}"
        ))
        .await?;
    let keyed: Vec<(String, String, String, String)> = conn
        .query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, INDEX_NAME FROM information_schema.STATISTICS \
             WHERE NON_UNIQUE = 0 AND TABLE_SCHEMA NOT IN {SYSTEM}"
        ))
        .await?;
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    for (db, table, column, data_type) in columns {
        tables.entry(format!("{db}.{table}")).or_default().columns.insert(column, data_type);
    }
    for (db, table, column, index) in keyed {
        let t = tables.entry(format!("{db}.{table}")).or_default();
        t.keyed.insert(column);
        t.has_primary_key |= index == "PRIMARY";
    }
    Ok(problems(config, &tables))
}

fn is_version_type(t: &str) -> bool {
    matches!(t, "datetime" | "timestamp" | "date" | "bigint" | "int")
}

fn is_exact_number(t: &str) -> bool {
    matches!(t, "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal")
}

fn problems(config: &Config, tables: &BTreeMap<String, Table>) -> Vec<ConfigProblem> {
    let conflicts = &config.conflicts;
    let mut out = Vec::new();
    let mut push = |path: String, message: String| out.push(ConfigProblem { path, message });
    for (name, rules) in &conflicts.tables {
        let at = format!("conflicts.tables.{name}");
        let Some(table) = tables.get(name) else {
            push(at, format!("no table `{name}` on the local primary"));
            continue;
        };
        if let Some(version) = &rules.version_column {
            match table.columns.get(version) {
                None => push(format!("{at}.version_column"), format!("`{name}` has no column `{version}`")),
                Some(t) if !is_version_type(t) => push(
                    format!("{at}.version_column"),
                    format!(
                        "`{name}.{version}` is {t}; a version column is DATETIME, TIMESTAMP, DATE or an integer"
                    ),
                ),
                Some(_) => {}
            }
        }
        for (i, column) in rules.delta_columns.iter().enumerate() {
            let path = format!("{at}.delta_columns[{i}]");
            match table.columns.get(column) {
                None => push(path, format!("`{name}` has no column `{column}`")),
                Some(t) if !is_exact_number(t) => push(
                    path,
                    format!(
                        "`{name}.{column}` is {t}; a delta column is an integer or DECIMAL (sums must be exact)"
                    ),
                ),
                Some(_) if table.keyed.contains(column) => push(
                    path,
                    format!(
                        "`{name}.{column}` is part of a primary or unique key; a key cannot be merged additively"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for (name, table) in tables {
        let rules = conflicts.tables.get(name);
        if rules.is_some_and(|r| r.single_writer.is_some()) {
            continue;
        }
        if !table.has_primary_key {
            push(
                "conflicts.tables".into(),
                format!(
                    "`{name}` has no primary key, so conflicts in it cannot be decided (its changes apply as \
                     they are): declare `single_writer: <region>` under conflicts.tables.{name}"
                ),
            );
            continue;
        }
        if rules.is_some_and(|r| !r.delta_columns.is_empty()) {
            continue;
        }
        let version = rules.and_then(|r| r.version_column.as_deref()).unwrap_or(&conflicts.version_column);
        match table.columns.get(version) {
            Some(t) if is_version_type(t) => {}
            Some(t) if rules.and_then(|r| r.version_column.as_ref()).is_none() => push(
                "conflicts.version_column".into(),
                format!(
                    "`{name}.{version}` is {t}, not a version: give `{name}` a version column or delta columns, \
                     or declare it `single_writer: <region>` under conflicts.tables.{name}"
                ),
            ),
            Some(_) => {} // reported above
            None => push(
                "conflicts.tables".into(),
                format!(
                    "`{name}` has no version column `{version}` and no delta columns: its regions could not \
                     converge; declare `single_writer: <region>` (or a version column) under conflicts.tables.{name}"
                ),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[(&str, &str)], keyed: &[&str]) -> Table {
        Table {
            columns: columns.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect(),
            keyed: keyed.iter().map(|c| c.to_string()).collect(),
            has_primary_key: !keyed.is_empty(),
        }
    }

    #[test]
    fn every_schema_problem_is_reported_with_its_path() {
        let yaml = "region: east\nregions:\n  east:\n    priority: 1\n    mysql: { user: u, password: p, gtid_domain_id: 1, \
                    primary: { host: h, server_id: 1 } }\n    kafka: { bootstrap: [\"k:9092\"] }\n\
                    conflicts:\n  tables:\n    psi.stock: { delta_columns: [quantity, product_id, note] }\n    \
                    psi.log: { single_writer: east }\n    psi.gone: { delta_columns: [qty] }\n    \
                    psi.odd: { version_column: rev }\n";
        let config = crate::config::load_str("test", yaml, Vec::new()).unwrap();
        let mut tables = BTreeMap::new();
        tables.insert(
            "psi.stock".to_string(),
            table(&[("product_id", "bigint"), ("quantity", "bigint"), ("note", "varchar")], &["product_id"]),
        );
        tables.insert("psi.log".into(), table(&[("line", "text")], &[]));
        tables.insert("psi.products".into(), table(&[("id", "bigint"), ("updated_at", "datetime")], &["id"]));
        tables.insert("psi.notes".into(), table(&[("id", "bigint")], &["id"]));
        tables.insert("psi.audit".into(), table(&[("line", "text"), ("updated_at", "datetime")], &[]));
        tables.insert("psi.odd".into(), table(&[("id", "bigint"), ("rev", "varchar")], &["id"]));
        let found: Vec<String> =
            problems(&config, &tables).iter().map(|p| format!("{}: {}", p.path, p.message)).collect();
        let expect = [
            "conflicts.tables.psi.gone: no table",
            "conflicts.tables.psi.odd.version_column: `psi.odd.rev` is varchar",
            "conflicts.tables.psi.stock.delta_columns[1]: `psi.stock.product_id` is part of a primary or unique key",
            "conflicts.tables.psi.stock.delta_columns[2]: `psi.stock.note` is varchar",
            "conflicts.tables: `psi.notes` has no version column `updated_at`",
            "conflicts.tables: `psi.audit` has no primary key",
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for e in expect {
            assert!(found.iter().any(|f| f.starts_with(e)), "missing {e}: {found:#?}");
        }
    }
}
