//! What apply may write for an origin. Pure: no I/O.
//!
//! Anyone who can write to an origin's topic could otherwise make apply write anything, with
//! ferry's privileged account and under any identity. So a transaction is admitted only when
//! its claims hold against the configuration of the topic's origin:
//! - its region is the topic's origin;
//! - its GTID is the origin's: MariaDB, the origin's `gtid_domain_id`; MySQL, one of its
//!   `server_uuids` (a GTID of this region's own domain would make local capture publish it
//!   again: an echo loop);
//! - its server id (and, on MariaDB, the GTID's server id) is one of the origin's servers;
//! - every row is in a user schema (never `mysql`, `sys`, `information_schema`,
//!   `performance_schema`, and in `ferry` only the heartbeat) and, when `apply.schemas` is
//!   set, in one of those.
//!
//! A transaction that is refused is dead-lettered with the reason; nothing of it is written.

use std::collections::BTreeSet;

use super::reassemble::Transaction;
use crate::config::{Flavor, MysqlConfig};
use crate::model::Gtid;

/// The server's own schemas: apply never writes them.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "sys", "information_schema", "performance_schema"];

/// The one `ferry` table apply carries: each region's heartbeat.
const HEARTBEAT: &str = "heartbeat";

/// The claims an origin's transactions may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    origin: String,
    flavor: Flavor,
    domain: Option<u32>,
    uuids: BTreeSet<String>,
    server_ids: BTreeSet<u32>,
    /// `apply.schemas`: None = every user schema.
    schemas: Option<BTreeSet<String>>,
}

impl Admission {
    pub fn new(origin: &str, mysql: &MysqlConfig, schemas: Option<&[String]>) -> Self {
        Self {
            origin: origin.to_string(),
            flavor: mysql.flavor,
            domain: mysql.gtid_domain_id,
            uuids: mysql.server_uuids.iter().map(|u| u.to_ascii_lowercase()).collect(),
            server_ids: std::iter::once(&mysql.primary).chain(&mysql.replicas).map(|s| s.server_id).collect(),
            schemas: schemas.map(|s| s.iter().cloned().collect()),
        }
    }

    /// `Err(reason)` when the transaction claims what its topic's origin may not.
    pub fn check(&self, txn: &Transaction) -> Result<(), String> {
        let o = &txn.origin;
        if o.region != self.origin {
            return Err(format!(
                "identity: transaction {} claims region `{}` in the topic of `{}`",
                o.gtid, o.region, self.origin
            ));
        }
        if !self.server_ids.contains(&o.server_id) {
            return Err(format!(
                "identity: server id {} of transaction {} is not one of {}'s servers {:?}",
                o.server_id, o.gtid, self.origin, self.server_ids
            ));
        }
        match (&o.gtid, self.flavor) {
            (Gtid::MariaDb(g), Flavor::Mariadb) => {
                if Some(g.domain) != self.domain {
                    return Err(format!(
                        "identity: GTID {} is not in {}'s domain {}",
                        o.gtid,
                        self.origin,
                        self.domain.map_or("(none configured)".into(), |d| d.to_string())
                    ));
                }
                if !self.server_ids.contains(&g.server_id) {
                    return Err(format!(
                        "identity: GTID {} names server {}, not one of {}'s servers",
                        o.gtid, g.server_id, self.origin
                    ));
                }
            }
            (Gtid::MySql { uuid, .. }, Flavor::Mysql) => {
                if !self.uuids.contains(uuid) {
                    return Err(format!(
                        "identity: GTID {} is not under one of {}'s server UUIDs",
                        o.gtid, self.origin
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "identity: GTID {} is not of {}'s server flavor ({:?})",
                    o.gtid, self.origin, self.flavor
                ));
            }
        }
        for row in &txn.rows {
            self.schema(&row.db, &row.table)?;
        }
        Ok(())
    }

    fn schema(&self, db: &str, table: &str) -> Result<(), String> {
        let lower = db.to_ascii_lowercase();
        if SYSTEM_SCHEMAS.contains(&lower.as_str()) {
            return Err(format!("schema: apply never writes the system schema `{db}` (`{db}.{table}`)"));
        }
        if lower == crate::schema::DATABASE {
            return if table == HEARTBEAT {
                Ok(())
            } else {
                Err(format!("schema: apply writes only ferry.heartbeat in `ferry`, not `ferry.{table}`"))
            };
        }
        match &self.schemas {
            Some(allowed) if !allowed.contains(db) => {
                Err(format!("schema: `{db}.{table}` is not in apply.schemas {allowed:?}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbServer;
    use crate::model::{Op, Row, RowChange, Value};
    use crate::transport::envelope::Origin;

    fn east(flavor: Flavor) -> MysqlConfig {
        MysqlConfig {
            user: "ferry".into(),
            password: crate::config::Secret::inline("x"),
            flavor,
            gtid_domain_id: Some(1),
            server_uuids: vec!["3E11FA47-71CA-11E1-9E33-C80AA9429562".into()],
            primary: DbServer { host: "h".into(), port: 1, server_id: 101 },
            replicas: vec![DbServer { host: "h".into(), port: 2, server_id: 102 }],
        }
    }

    fn txn(region: &str, server_id: u32, gtid: &str, tables: &[(&str, &str)]) -> Transaction {
        Transaction {
            origin: Origin { region: region.into(), server_id, gtid: gtid.parse().unwrap() },
            commit_time_us: 0,
            seq: 1,
            prev: None,
            rows: tables
                .iter()
                .map(|(db, table)| RowChange {
                    db: (*db).into(),
                    table: (*table).into(),
                    op: Op::Insert,
                    key: Row(vec![("id".into(), Value::Int { v: 1 })]),
                    before: None,
                    after: Some(Row(vec![("id".into(), Value::Int { v: 1 })])),
                    generated: Vec::new(),
                })
                .collect(),
            first_offset: 0,
            last_offset: 0,
        }
    }

    #[test]
    fn only_the_origins_own_identity_and_user_schemas_are_admitted() {
        let a = Admission::new("east", &east(Flavor::Mariadb), None);
        let ok = |t: Transaction| a.check(&t);
        assert_eq!(ok(txn("east", 101, "1-101-5", &[("psi", "stock"), ("ferry", "heartbeat")])), Ok(()));
        assert_eq!(ok(txn("east", 102, "1-102-6", &[("psi", "stock")])), Ok(()), "a promoted replica");
        let refused = [
            (txn("west", 101, "1-101-5", &[("psi", "stock")]), "claims region `west`"),
            (txn("east", 201, "1-201-5", &[("psi", "stock")]), "server id 201"),
            (txn("east", 101, "2-101-5", &[("psi", "stock")]), "not in east's domain 1"),
            (txn("east", 101, "1-999-5", &[("psi", "stock")]), "names server 999"),
            (txn("east", 101, "1-101-5", &[("mysql", "user")]), "system schema `mysql`"),
            (txn("east", 101, "1-101-5", &[("MySQL", "user")]), "system schema `MySQL`"),
            (txn("east", 101, "1-101-5", &[("performance_schema", "x")]), "system schema"),
            (txn("east", 101, "1-101-5", &[("sys", "x")]), "system schema"),
            (txn("east", 101, "1-101-5", &[("information_schema", "x")]), "system schema"),
            (txn("east", 101, "1-101-5", &[("ferry", "applied")]), "not `ferry.applied`"),
            (txn("east", 101, "1-101-5", &[("psi", "stock"), ("ferry", "tombstones")]), "ferry.tombstones"),
            (
                txn("east", 101, "3e11fa47-71ca-11e1-9e33-c80aa9429562:5", &[("psi", "stock")]),
                "not of east's server flavor",
            ),
        ];
        for (t, why) in refused {
            let gtid = t.origin.gtid.to_string();
            match a.check(&t) {
                Err(reason) => assert!(reason.contains(why), "{gtid}: expected `{why}` in `{reason}`"),
                Ok(()) => panic!("{gtid} {:?} was admitted; expected `{why}`", t.rows[0].db),
            }
        }
    }

    #[test]
    fn mysql_gtids_must_carry_one_of_the_origins_uuids_and_schemas_can_be_listed() {
        let schemas = vec!["psi".to_string()];
        let a = Admission::new("east", &east(Flavor::Mysql), Some(&schemas));
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert_eq!(a.check(&txn("east", 101, &format!("{uuid}:9"), &[("psi", "stock")])), Ok(()));
        assert_eq!(a.check(&txn("east", 101, &format!("{uuid}:9"), &[("ferry", "heartbeat")])), Ok(()));
        let other = a.check(&txn("east", 101, "4e11fa47-71ca-11e1-9e33-c80aa9429562:9", &[("psi", "stock")]));
        assert!(other.is_err_and(|r| r.contains("server UUIDs")));
        let unlisted = a.check(&txn("east", 101, &format!("{uuid}:9"), &[("hr", "salaries")]));
        assert!(unlisted.is_err_and(|r| r.contains("not in apply.schemas")));
    }
}
