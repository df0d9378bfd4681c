//! Resource quantities (`100m`, `1.5`, `64Mi`, `1e3`), read exactly as upstream's
//! `resource.Quantity` does: decimal and binary suffixes, exponents, rounding up.

/// A quantity in thousandths of its unit (CPU in millicores), rounded up; `None` if it
/// does not parse or overflows.
pub fn milli_value(quantity: &str) -> Option<i64> {
    scaled(quantity, 3)
}

/// A quantity in whole units (memory in bytes, pods), rounded up.
pub fn value(quantity: &str) -> Option<i64> {
    scaled(quantity, 0)
}

/// `quantity × 10^extra`, rounded up (away from zero for positive values).
fn scaled(quantity: &str, extra: i32) -> Option<i64> {
    let q = quantity.trim();
    let (sign, q) = match q.strip_prefix('-') {
        Some(rest) => (-1i128, rest),
        None => (1, q.strip_prefix('+').unwrap_or(q)),
    };
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = digits.parse().ok()?;
    let mut exp10: i32 = extra - i32::try_from(fraction.len()).ok()?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => exp10 += s[1..].parse::<i32>().ok()?,
        _ => return None,
    }
    let mut value = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)?;
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-exp10).ok()?)?;
        value = (value + divisor - 1) / divisor;
    }
    i64::try_from(sign * value).ok()
}

/// Millicores as users write them: `1500` -> `1500m`, `2000` -> `2`.
pub fn format_milli(v: i64) -> String {
    if v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    }
}

/// Bytes in the largest binary unit that divides them: `128Mi`, `1Gi`, `1000`.
pub fn format_bytes(v: i64) -> String {
    for (unit, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        if v != 0 && v % (1 << shift) == 0 {
            return format!("{}{unit}", v >> shift);
        }
    }
    v.to_string()
}

/// Whether a resource is counted in millis (CPU) rather than whole units.
pub fn is_milli(resource: &str) -> bool {
    resource == "cpu" || resource.ends_with(".cpu")
}

/// A resource's quantity in its unit (millicores for CPU); `None` if it does not parse.
pub fn of_resource(resource: &str, quantity: &str) -> Option<i64> {
    if is_milli(resource) {
        milli_value(quantity)
    } else {
        value(quantity)
    }
}

/// A resource's amount printed as users write it.
pub fn format_resource(resource: &str, v: i64) -> String {
    if is_milli(resource) {
        format_milli(v)
    } else if resource.contains("memory") || resource.contains("storage") {
        format_bytes(v)
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_users_write_them() {
        assert_eq!(format_milli(1500), "1500m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_resource("requests.cpu", 250), "250m");
        assert_eq!(format_resource("limits.memory", 64 << 20), "64Mi");
        assert_eq!(format_resource("pods", 3), "3");
    }

    #[test]
    fn cpu_and_memory_as_upstream_reads_them() {
        assert_eq!(milli_value("100m"), Some(100));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("2"), Some(2000));
        assert_eq!(milli_value("0.1"), Some(100));
        assert_eq!(milli_value("1u"), Some(1), "rounded up");
        assert_eq!(value("64Mi"), Some(64 << 20));
        assert_eq!(value("1Gi"), Some(1 << 30));
        assert_eq!(value("1.5Gi"), Some(3 << 29));
        assert_eq!(value("128974848"), Some(128_974_848));
        assert_eq!(value("129e6"), Some(129_000_000));
        assert_eq!(value("123M"), Some(123_000_000));
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("-1"), Some(-1));
        assert_eq!(value("abc"), None);
        assert_eq!(value("1Zi"), None);
        assert_eq!(value(""), None);
    }
}
