//! GTIDs and replication positions.
//!
//! MariaDB: a GTID is `domain-server-seq`; a position holds the last GTID of each domain (what
//! `@@gtid_slave_pos` and `@slave_connect_state` use). MySQL 8: `uuid:gno`; its positions are
//! GTID sets (see `capture::mysql8`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::GtidSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a GTID: {reason}")]
pub struct GtidParseError {
    pub input: String,
    pub reason: &'static str,
}

/// A MariaDB GTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MariaGtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.seq)
    }
}

impl FromStr for MariaGtid {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GtidParseError { input: s.to_string(), reason };
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || parts.next().ok_or(err("expected domain-server-seq"));
        let domain = next()?.parse().map_err(|_| err("bad domain id"))?;
        let server_id = next()?.parse().map_err(|_| err("bad server id"))?;
        let seq = next()?.parse().map_err(|_| err("bad sequence number"))?;
        Ok(Self { domain, server_id, seq })
    }
}

/// A GTID of either server family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Gtid {
    MariaDb(MariaGtid),
    /// MySQL 8: source UUID (as text, lowercase) and transaction number.
    MySql {
        uuid: String,
        gno: u64,
    },
}

impl Gtid {
    /// This GTID, as the last one of an ordered stream, already covers `next`: same domain
    /// (MariaDB; the server id may differ, a promoted replica continues the domain's sequence)
    /// or same server UUID (MySQL), and `next` is not after it.
    pub fn covers(&self, next: &Gtid) -> bool {
        match (self, next) {
            (Gtid::MariaDb(d), Gtid::MariaDb(n)) => d.domain == n.domain && n.seq <= d.seq,
            (Gtid::MySql { uuid: du, gno: dg }, Gtid::MySql { uuid: nu, gno: ng }) => du == nu && ng <= dg,
            _ => false,
        }
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb(g) => g.fmt(f),
            Gtid::MySql { uuid, gno } => write!(f, "{uuid}:{gno}"),
        }
    }
}

impl FromStr for Gtid {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((uuid, gno)) => {
                let err = |reason| GtidParseError { input: s.to_string(), reason };
                let hex = uuid.chars().filter(|c| *c != '-').count();
                if hex != 32 || !uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
                    return Err(err("bad server UUID"));
                }
                let gno = gno.parse().map_err(|_| err("bad transaction number"))?;
                Ok(Gtid::MySql { uuid: uuid.to_ascii_lowercase(), gno })
            }
            None => s.parse().map(Gtid::MariaDb),
        }
    }
}

impl Serialize for Gtid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Gtid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A replication position. MariaDB: the last GTID of each domain (`1-101-5,2-201-9`); MySQL:
/// the set of executed GTIDs (`uuid:1-5:7`). One server family uses one of the two parts; the
/// text form lists both, comma-separated (empty string = the very beginning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    domains: BTreeMap<u32, MariaGtid>,
    mysql: GtidSet,
}

impl Position {
    /// A position holding a MySQL GTID set.
    pub fn from_gtid_set(set: GtidSet) -> Self {
        Self { domains: BTreeMap::new(), mysql: set }
    }

    /// The MySQL part.
    pub fn gtid_set(&self) -> &GtidSet {
        &self.mysql
    }

    /// Record a transaction of either family as done.
    pub fn advance_gtid(&mut self, gtid: &Gtid) {
        match gtid {
            Gtid::MariaDb(g) => self.advance(*g),
            Gtid::MySql { uuid, gno } => self.mysql.add(uuid, *gno),
        }
    }

    /// True when `gtid` is covered by this position.
    pub fn includes_gtid(&self, gtid: &Gtid) -> bool {
        match gtid {
            Gtid::MariaDb(g) => self.includes(*g),
            Gtid::MySql { uuid, gno } => self.mysql.contains(uuid, *gno),
        }
    }

    /// Record `gtid` as the latest of its domain.
    pub fn advance(&mut self, gtid: MariaGtid) {
        self.domains.insert(gtid.domain, gtid);
    }

    /// The last GTID seen in `domain`.
    pub fn get(&self, domain: u32) -> Option<MariaGtid> {
        self.domains.get(&domain).copied()
    }

    /// True when `gtid` is at or before this position in its domain.
    pub fn includes(&self, gtid: MariaGtid) -> bool {
        self.domains.get(&gtid.domain).is_some_and(|p| p.seq >= gtid.seq)
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.mysql.is_empty()
    }

    /// How many transactions of `other` this position lacks: per MariaDB domain the sequence
    /// numbers after ours (gap-free within a domain), plus the MySQL transactions not in our
    /// set.
    pub fn lacks(&self, other: &Position) -> u64 {
        let maria: u64 =
            other.iter().map(|g| g.seq.saturating_sub(self.get(g.domain).map_or(0, |m| m.seq))).sum();
        maria + self.mysql.lacks(&other.mysql)
    }

    /// This position holds everything `other` holds.
    pub fn covers(&self, other: &Position) -> bool {
        self.lacks(other) == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = MariaGtid> + '_ {
        self.domains.values().copied()
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.domains.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            g.fmt(f)?;
        }
        if !self.mysql.is_empty() {
            if !self.domains.is_empty() {
                f.write_str(",")?;
            }
            self.mysql.fmt(f)?;
        }
        Ok(())
    }
}

impl FromStr for Position {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pos = Position::default();
        let (mysql, maria): (Vec<&str>, Vec<&str>) =
            s.split(',').map(str::trim).filter(|p| !p.is_empty()).partition(|p| p.contains(':'));
        pos.mysql = mysql.join(",").parse()?;
        for part in maria {
            let g: MariaGtid = part.parse()?;
            if pos.domains.insert(g.domain, g).is_some() {
                return Err(GtidParseError { input: s.to_string(), reason: "a domain appears twice" });
            }
        }
        Ok(pos)
    }
}

/// Which transactions are this region's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginFilter {
    /// MariaDB: the region's GTID domain.
    Domain(u32),
    /// MySQL: the region's server UUIDs (lowercase).
    Uuids(Vec<String>),
    /// Every transaction counts as local (`ferry tail --all-origins`).
    All,
}

impl OriginFilter {
    pub fn is_local(&self, gtid: &Gtid) -> bool {
        match (self, gtid) {
            (OriginFilter::All, _) => true,
            (OriginFilter::Domain(d), Gtid::MariaDb(g)) => g.domain == *d,
            (OriginFilter::Uuids(uuids), Gtid::MySql { uuid, .. }) => uuids.iter().any(|u| u == uuid),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_position_lacks_is_counted_in_either_family() {
        let p = |t: &str| -> Position { t.parse().unwrap() };
        assert_eq!(p("1-101-7,2-201-4").lacks(&p("1-101-9,2-201-4,3-301-2")), 4);
        assert!(p("1-101-9").covers(&p("1-102-9")), "a promoted replica continues the domain");
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert_eq!(p(&format!("{u}:1-5:9")).lacks(&p(&format!("{u}:1-10"))), 4, "6, 7, 8 and 10");
        assert_eq!(p(&format!("{u}:1-10")).lacks(&p(&format!("{u}:3-4:9"))), 0);
        assert_eq!(p("").lacks(&p(&format!("{u}:2-3,8e1e6e46-9c54-11e9-a3b8-0242ac110002:1"))), 3);
    }

    #[test]
    fn gtids_round_trip_through_text() {
        for text in ["0-1-1", "1-101-18446744073709551615", "4294967295-4294967295-0"] {
            let g: MariaGtid = text.parse().unwrap();
            assert_eq!(g.to_string(), text);
            assert_eq!(text.parse::<Gtid>().unwrap().to_string(), text);
        }
        let my = "3E11FA47-71CA-11E1-9E33-C80AA9429562:23";
        assert_eq!(my.parse::<Gtid>().unwrap().to_string(), my.to_ascii_lowercase());
        for bad in ["", "1-2", "1-2-x", "-1-2-3", "1-2-3-4", "zz:1", "3E11FA47-71CA-11E1-9E33-C80AA9429562:x"]
        {
            assert!(bad.parse::<Gtid>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn position_keeps_the_last_gtid_per_domain() {
        let mut p: Position = "2-201-9,1-101-5".parse().unwrap();
        assert_eq!(p.to_string(), "1-101-5,2-201-9", "sorted by domain");
        p.advance("1-101-6".parse().unwrap());
        assert!(p.includes("1-101-6".parse().unwrap()));
        assert!(p.includes("2-201-3".parse().unwrap()));
        assert!(!p.includes("2-201-10".parse().unwrap()));
        assert!(!p.includes("3-301-1".parse().unwrap()), "unknown domain");
        assert_eq!(p.to_string(), "1-101-6,2-201-9");
        assert!("".parse::<Position>().unwrap().is_empty());
        assert!("1-1-1,1-2-2".parse::<Position>().is_err(), "duplicate domain");
    }

    #[test]
    fn a_position_holds_a_mysql_gtid_set_too() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut p: Position = format!("{uuid}:1-5").parse().unwrap();
        let next = Gtid::MySql { uuid: uuid.into(), gno: 6 };
        assert!(!p.includes_gtid(&next));
        p.advance_gtid(&next);
        assert!(p.includes_gtid(&next));
        assert_eq!(p.to_string(), format!("{uuid}:1-6"));
        assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
    }
}
