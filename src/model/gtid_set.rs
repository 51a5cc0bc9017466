//! MySQL 8 GTID sets (`@@gtid_executed`): source UUID → transaction numbers, as closed
//! intervals. Text form `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,4e11…:1-3` (MySQL's own,
//! newlines allowed). Capture's MySQL position is a GTID set: everything in it is done.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::GtidParseError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// UUID (lowercase, with dashes) → sorted, disjoint, non-adjacent closed intervals.
    sources: BTreeMap<String, Vec<(u64, u64)>>,
}

impl GtidSet {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn contains(&self, uuid: &str, gno: u64) -> bool {
        self.sources.get(uuid).is_some_and(|iv| iv.iter().any(|&(a, b)| a <= gno && gno <= b))
    }

    /// Add one transaction number.
    pub fn add(&mut self, uuid: &str, gno: u64) {
        self.add_interval(uuid, gno, gno);
    }

    fn add_interval(&mut self, uuid: &str, start: u64, end: u64) {
        let intervals = self.sources.entry(uuid.to_string()).or_default();
        intervals.push((start, end));
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(a, b) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *intervals = merged;
    }

    /// Add the closed interval `start..=end`.
    pub fn add_range(&mut self, uuid: &str, start: u64, end: u64) {
        self.add_interval(uuid, start, end);
    }

    /// True when every transaction number of `start..=end` is in the set.
    pub fn covers(&self, uuid: &str, start: u64, end: u64) -> bool {
        self.sources.get(uuid).is_some_and(|iv| iv.iter().any(|&(a, b)| a <= start && end <= b))
    }

    /// How many transactions of `other` this set lacks.
    pub fn lacks(&self, other: &GtidSet) -> u64 {
        let mut n = 0;
        for (uuid, theirs) in &other.sources {
            let mine = self.sources.get(uuid).map(Vec::as_slice).unwrap_or_default();
            for &(start, end) in theirs {
                let overlap: u64 =
                    mine.iter().map(|&(a, b)| (end.min(b) + 1).saturating_sub(start.max(a))).sum();
                n += (end - start + 1) - overlap;
            }
        }
        n
    }

    /// `(uuid, [(start, end_inclusive)])` pairs, for building a dump request.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[(u64, u64)])> {
        self.sources.iter().map(|(u, iv)| (u.as_str(), iv.as_slice()))
    }

    /// The UUID as the 16 bytes MySQL's protocol uses.
    pub fn uuid_bytes(uuid: &str) -> Option<[u8; 16]> {
        let hex: Vec<u8> = uuid.bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(out)
    }

    /// The text UUID of 16 protocol bytes.
    pub fn uuid_text(bytes: &[u8; 16]) -> String {
        let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, intervals)) in self.sources.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(uuid)?;
            for &(a, b) in intervals {
                if a == b { write!(f, ":{a}")? } else { write!(f, ":{a}-{b}")? }
            }
        }
        Ok(())
    }
}

impl FromStr for GtidSet {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GtidParseError { input: s.to_string(), reason };
        let mut set = GtidSet::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut pieces = part.split(':');
            let uuid = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
            let bytes = Self::uuid_bytes(&uuid).ok_or(err("bad server UUID"))?;
            let uuid = Self::uuid_text(&bytes);
            let mut any = false;
            for interval in pieces {
                let (a, b) = match interval.split_once('-') {
                    Some((a, b)) => (
                        a.parse().map_err(|_| err("bad interval"))?,
                        b.parse().map_err(|_| err("bad interval"))?,
                    ),
                    None => {
                        let n = interval.parse().map_err(|_| err("bad transaction number"))?;
                        (n, n)
                    }
                };
                if a == 0 || a > b {
                    return Err(err("intervals start at 1 and must not be reversed"));
                }
                set.add_interval(&uuid, a, b);
                any = true;
            }
            if !any {
                return Err(err("a UUID without transaction numbers"));
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn parses_mysqls_text_and_prints_it_normalised() {
        let text = format!("{}:1-5:7:6,\n{B}:1-3", A.to_uppercase());
        let set: GtidSet = text.parse().unwrap();
        assert_eq!(set.to_string(), format!("{A}:1-7,{B}:1-3"), "6 joins 1-5 and 7");
        assert!(set.contains(A, 7) && !set.contains(A, 8) && !set.contains(B, 4));
        for bad in [A.to_string(), format!("{A}:0"), format!("{A}:5-3"), "zz:1".into(), format!("{A}:x")] {
            assert!(bad.parse::<GtidSet>().is_err(), "{bad:?}");
        }
        assert!("".parse::<GtidSet>().unwrap().is_empty());
    }

    #[test]
    fn adding_merges_adjacent_and_keeps_gaps() {
        let mut set = GtidSet::default();
        for n in [5, 1, 2, 3, 9, 4] {
            set.add(A, n);
        }
        assert_eq!(set.to_string(), format!("{A}:1-5:9"));
        set.add(A, 8);
        set.add(A, 6);
        assert_eq!(set.to_string(), format!("{A}:1-6:8-9"));
    }

    #[test]
    fn uuid_bytes_round_trip() {
        let bytes = GtidSet::uuid_bytes(A).unwrap();
        assert_eq!(bytes[0], 0x3e);
        assert_eq!(GtidSet::uuid_text(&bytes), A);
        assert!(GtidSet::uuid_bytes("3e11fa47").is_none());
    }
}
