//! Kubernetes resource quantities (`500m`, `2`, `4Gi`, `1.5e9`) as numbers.
//! The grammar is Kubernetes' own, so what this refuses a pod would refuse
//! too; `4GB` and `4Gb` are the usual mistakes.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (such as 500m, 2, 4Gi or 4G)")]
pub struct QuantityError(String);

/// The quantity as a non-negative real number of base units (bytes, cores).
pub fn value(q: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError(q.to_string());
    let t = q.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    Ok(v)
}

/// A memory quantity in bytes, rounded up.
pub fn bytes(q: &str) -> Result<u64, QuantityError> {
    let v = value(q)?.ceil();
    if v > u64::MAX as f64 {
        return Err(QuantityError(q.to_string()));
    }
    Ok(v as u64)
}

/// A CPU quantity in millicores, rounded up.
pub fn cpu_millis(q: &str) -> Result<i64, QuantityError> {
    let v = (value(q)? * 1000.0).ceil();
    if v > i64::MAX as f64 {
        return Err(QuantityError(q.to_string()));
    }
    Ok(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_read_binary_and_decimal_suffixes_and_refuse_4gb() {
        assert_eq!(bytes("4Gi"), Ok(4 << 30));
        assert_eq!(bytes("512Mi"), Ok(512 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1.5e9"), Ok(1_500_000_000));
        assert_eq!(bytes("1000"), Ok(1000));
        assert!(bytes("4GB").is_err());
        assert!(bytes("4Gb").is_err());
        assert!(bytes("lots").is_err());
        assert!(bytes("").is_err());
        assert!(bytes("-1Gi").is_err());
    }

    #[test]
    fn cpu_quantities_round_up_to_millicores() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert_eq!(cpu_millis("0.1"), Ok(100));
        assert_eq!(cpu_millis("100u"), Ok(1));
        assert!(cpu_millis("two").is_err());
    }
}
