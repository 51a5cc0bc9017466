//! Exact sums for delta columns: integers and DECIMAL text, added without rounding (two
//! regions adding the same deltas in another order must reach the same value).

use crate::model::Value;

/// `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Num {
    mantissa: i128,
    scale: u32,
}

/// DECIMAL has at most 65 digits; i128 holds 38. Beyond that a delta is refused (the change
/// is applied by the slower in-order path, which lets the server do the arithmetic).
const MAX_SCALE: u32 = 30;

impl Num {
    pub const ZERO: Num = Num { mantissa: 0, scale: 0 };

    /// The number a column value holds: integers and DECIMAL text; NULL counts as zero.
    pub fn of(value: &Value) -> Option<Num> {
        match value {
            Value::Null => Some(Num::ZERO),
            Value::Int { v } => Some(Num { mantissa: i128::from(*v), scale: 0 }),
            Value::Uint { v } => Some(Num { mantissa: i128::from(*v), scale: 0 }),
            Value::Decimal { v } => Num::parse(v),
            _ => None,
        }
    }

    pub fn parse(text: &str) -> Option<Num> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || frac.len() as u32 > MAX_SCALE
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in whole.bytes().chain(frac.bytes()) {
            mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        Some(Num { mantissa: if negative { -mantissa } else { mantissa }, scale: frac.len() as u32 })
    }

    fn rescale(self, scale: u32) -> Option<Num> {
        let factor = 10i128.checked_pow(scale - self.scale)?;
        Some(Num { mantissa: self.mantissa.checked_mul(factor)?, scale })
    }

    pub fn checked_add(self, other: Num) -> Option<Num> {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.rescale(scale)?, other.rescale(scale)?);
        Some(Num { mantissa: a.mantissa.checked_add(b.mantissa)?, scale })
    }

    pub fn checked_sub(self, other: Num) -> Option<Num> {
        self.checked_add(Num { mantissa: other.mantissa.checked_neg()?, scale: other.scale })
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// The value to bind: an integer when it is one, else DECIMAL text.
    pub fn to_value(self) -> Value {
        if self.scale == 0
            && let Ok(v) = i64::try_from(self.mantissa)
        {
            return Value::Int { v };
        }
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, frac) = padded.split_at(padded.len() - scale);
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let v = if frac.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{frac}") };
        Value::Decimal { v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Num {
        Num::parse(s).unwrap()
    }

    #[test]
    fn decimal_text_adds_exactly_and_prints_back() {
        assert_eq!(
            d("10.50").checked_add(d("-0.75")).unwrap().to_value(),
            Value::Decimal { v: "9.75".into() }
        );
        assert_eq!(
            d("0.10").checked_sub(d("0.30")).unwrap().to_value(),
            Value::Decimal { v: "-0.20".into() }
        );
        assert_eq!(d("-.5").to_value(), Value::Decimal { v: "-0.5".into() });
        assert_eq!(d("7").checked_sub(d("9")).unwrap().to_value(), Value::Int { v: -2 });
        assert_eq!(
            Num::of(&Value::Uint { v: u64::MAX }).unwrap().to_value(),
            Value::Decimal { v: u64::MAX.to_string() }
        );
        assert_eq!(Num::of(&Value::Null), Some(Num::ZERO));
        for bad in ["", ".", "1e5", "1.2.3", "abc", "--1"] {
            assert_eq!(Num::parse(bad), None, "{bad}");
        }
        assert_eq!(Num::of(&Value::Double { v: 1.5 }), None, "floating point is not exact");
    }
}
