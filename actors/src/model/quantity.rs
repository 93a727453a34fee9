//! Kubernetes resource quantities (`250m`, `1.5`, `256Mi`, `1G`, `1e3`):
//! parsed exactly into nano-units and printed in Kubernetes' canonical form.

use std::fmt;

/// A parsed quantity, held exactly as an integer count of 10^-9 units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
    binary: bool,
}

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {input:?} is not valid: {reason} (examples: 250m, 1.5, 256Mi, 1G)")]
pub struct QuantityError {
    pub input: String,
    pub reason: &'static str,
}

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        let err = |reason| QuantityError { input: input.to_string(), reason };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err("it must start with a number"));
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if frac_part.len() > 9 {
            return Err(err("more than 9 decimal places"));
        }
        let parse_digits = |d: &str| -> Result<i128, QuantityError> {
            if d.is_empty() {
                Ok(0)
            } else {
                d.parse::<i128>().map_err(|_| err("the number is too large"))
            }
        };
        let int = parse_digits(int_part)?;
        let frac = parse_digits(frac_part)? * 10i128.pow(9 - frac_part.len() as u32);
        let base = int.checked_mul(NANO).and_then(|v| v.checked_add(frac)).ok_or_else(|| err("the number is too large"))?;
        let (mul_num, mul_den, binary): (i128, i128, bool) = match suffix {
            "" => (1, 1, false),
            "n" => (1, NANO, false),
            "u" => (1, 1_000_000, false),
            "m" => (1, 1_000, false),
            "k" => (1_000, 1, false),
            "M" => (1_000_000, 1, false),
            "G" => (1_000_000_000, 1, false),
            "T" => (1_000_000_000_000, 1, false),
            "P" => (1_000_000_000_000_000, 1, false),
            "E" => (1_000_000_000_000_000_000, 1, false),
            "Ki" => (1 << 10, 1, true),
            "Mi" => (1 << 20, 1, true),
            "Gi" => (1 << 30, 1, true),
            "Ti" => (1 << 40, 1, true),
            "Pi" => (1 << 50, 1, true),
            "Ei" => (1 << 60, 1, true),
            s if s.starts_with(['e', 'E']) => {
                let exp: i32 = s[1..].parse().map_err(|_| err("the exponent is not a whole number"))?;
                if !(-9..=18).contains(&exp) {
                    return Err(err("the exponent is out of range"));
                }
                if exp >= 0 {
                    (10i128.pow(exp as u32), 1, false)
                } else {
                    (1, 10i128.pow((-exp) as u32), false)
                }
            }
            _ => return Err(err("unknown suffix; use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi or Ei")),
        };
        let scaled = base.checked_mul(mul_num).ok_or_else(|| err("the number is too large"))?;
        if scaled % mul_den != 0 {
            return Err(err("it is finer than one nano-unit"));
        }
        let nanos = scaled / mul_den;
        Ok(Quantity { nanos: if negative { -nanos } else { nanos }, binary })
    }

    /// In thousandths, rounded up (CPU in millicores).
    pub fn millis(&self) -> i64 {
        let m = self.nanos.div_euclid(1_000_000) + i128::from(self.nanos.rem_euclid(1_000_000) != 0);
        m.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// In whole units, rounded up (memory in bytes).
    pub fn value(&self) -> i64 {
        let v = self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0);
        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    pub fn from_millis(millis: i64) -> Quantity {
        Quantity { nanos: millis as i128 * 1_000_000, binary: false }
    }

    pub fn from_bytes(bytes: i64, binary: bool) -> Quantity {
        Quantity { nanos: bytes as i128 * NANO, binary }
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }
}

impl fmt::Display for Quantity {
    /// Canonical form: the largest suffix of the quantity's family (binary or
    /// decimal) that shows it as a whole number, as Kubernetes prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { "-" } else { "" };
        let n = self.nanos.abs();
        if n == 0 {
            return f.write_str("0");
        }
        if self.binary && n % NANO == 0 {
            let v = n / NANO;
            for (suffix, size) in [("Ei", 1i128 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
            {
                if v % size == 0 {
                    return write!(f, "{sign}{}{suffix}", v / size);
                }
            }
            return write!(f, "{sign}{v}");
        }
        for (suffix, size) in [
            ("E", NANO * 1_000_000_000_000_000_000),
            ("P", NANO * 1_000_000_000_000_000),
            ("T", NANO * 1_000_000_000_000),
            ("G", NANO * 1_000_000_000),
            ("M", NANO * 1_000_000),
            ("k", NANO * 1_000),
            ("", NANO),
            ("m", 1_000_000),
            ("u", 1_000),
            ("n", 1),
        ] {
            if n % size == 0 {
                return write!(f, "{sign}{}{suffix}", n / size);
            }
        }
        unreachable!("every quantity is a whole number of nano-units")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(q("250m").millis(), 250);
        assert_eq!(q("1.5").millis(), 1500);
        assert_eq!(q("2").millis(), 2000);
        assert_eq!(q("256Mi").value(), 256 * 1024 * 1024);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("0.1").millis(), 100);
        assert_eq!(q("100n").millis(), 1, "rounds up");
        assert_eq!(q("1.5Gi").value(), 1536 * 1024 * 1024);
    }

    #[test]
    fn prints_canonically() {
        assert_eq!(q("1.5").to_string(), "1500m");
        assert_eq!(q("250m").to_string(), "250m");
        assert_eq!(q("1024Mi").to_string(), "1Gi");
        assert_eq!(q("1000M").to_string(), "1G");
        assert_eq!(q("1.5Gi").to_string(), "1536Mi");
        assert_eq!(q("0").to_string(), "0");
        assert_eq!(Quantity::from_millis(2000).to_string(), "2");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "abc", "1x", "1.2.3", "Mi", "1e99", "1.0000000001"] {
            let e = Quantity::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not valid"), "{bad}: {e}");
        }
        assert_eq!(Quantity::parse("12Q").unwrap_err().reason, "unknown suffix; use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi or Ei");
    }
}
