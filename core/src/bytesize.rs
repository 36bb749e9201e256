use std::fmt;
use std::str::FromStr;

/// A number of bytes written the way people write memory limits: `4GiB`,
/// `512MB`, `1.5G`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid byte size {input:?}: expected a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
)]
pub struct ByteSizeError {
    input: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError {
            input: s.to_string(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gi" | "gib" => 1 << 30,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "ti" | "tib" => 1 << 40,
            _ => return Err(err()),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_people_write() {
        assert_eq!("4GiB".parse::<ByteSize>().unwrap().0, 4 << 30);
        assert_eq!("512MB".parse::<ByteSize>().unwrap().0, 512_000_000);
        assert_eq!("1.5Gi".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!(" 2 kib ".parse::<ByteSize>().unwrap().0, 2048);
    }

    #[test]
    fn rejects_nonsense_and_names_it() {
        let e = "12 parsecs".parse::<ByteSize>().unwrap_err();
        assert!(e.to_string().contains("12 parsecs"));
        assert!("".parse::<ByteSize>().is_err());
        assert!("-5MB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }
}
