//! Schema names: [`check_schema_name`] and [`derived_schema_name`] (a
//! rebuild shadow's name), never longer than PostgreSQL keeps.

use crate::{Error, Result, fold};

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1` bytes). A
/// longer name is silently truncated, so a name derived by appending to
/// an accepted one could turn into another schema: the derived names below
/// always fit.
pub const MAX_SCHEMA_NAME_BYTES: usize = 63;

/// Checks a schema name foodpipe accepts: lowercase letters, digits and
/// `_`, not starting with a digit (so it never needs quoting), at most
/// [`MAX_SCHEMA_NAME_BYTES`] long (so PostgreSQL never truncates it).
pub fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_NAME_BYTES
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadSchema(schema.to_owned()))
    }
}

/// The name of a schema that belongs to `schema` (e.g. its rebuild shadow):
/// `<schema><suffix>` when that fits in [`MAX_SCHEMA_NAME_BYTES`],
/// otherwise `schema` cut short, `_`, eight hex digits of a hash of the
/// whole of `schema`, and `suffix`. Either way a valid name that PostgreSQL
/// keeps whole and that is never `schema` itself, checked before any
/// statement uses it. `suffix` must start with `_` and be at most 40 bytes.
pub fn derived_schema_name(schema: &str, suffix: &str) -> Result<String> {
    check_schema_name(schema)?;
    const HASH: usize = 1 + 8;
    let fits = suffix.starts_with('_') && suffix.len() + HASH < MAX_SCHEMA_NAME_BYTES - 8;
    if !fits {
        return Err(Error::BadSchema(format!("{schema}{suffix}")));
    }
    let name = if schema.len() + suffix.len() <= MAX_SCHEMA_NAME_BYTES {
        format!("{schema}{suffix}")
    } else {
        // A stable FNV-1a of the whole name keeps two long names that
        // share their first bytes apart.
        let hash = fold::fingerprint(chrono::DateTime::UNIX_EPOCH, Some(schema.as_bytes()), None);
        let keep = MAX_SCHEMA_NAME_BYTES - HASH - suffix.len();
        // ASCII only (checked above), so any byte index is a char boundary.
        format!("{}_{:08x}{suffix}", &schema[..keep], hash as u32)
    };
    check_schema_name(&name)?;
    if name == schema {
        return Err(Error::BadSchema(name));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted schema length gets a rebuild shadow name that is valid, kept whole by PostgreSQL and never the live name.
    #[test]
    fn derived_names_always_fit_and_differ() {
        for len in 1..=MAX_SCHEMA_NAME_BYTES {
            let live: String = "s".repeat(len);
            let shadow = derived_schema_name(&live, "_rebuild").expect("derivable");
            assert!(shadow.len() <= MAX_SCHEMA_NAME_BYTES, "{shadow}");
            assert!(check_schema_name(&shadow).is_ok(), "{shadow}");
            assert_ne!(shadow, live);
            // What PostgreSQL would make of it: the first 63 bytes.
            assert_ne!(&shadow[..shadow.len().min(MAX_SCHEMA_NAME_BYTES)], live);
            if len <= MAX_SCHEMA_NAME_BYTES - "_rebuild".len() {
                assert_eq!(
                    shadow,
                    format!("{live}_rebuild"),
                    "short names keep the plain form"
                );
            }
        }
        // Two long names that share their first bytes get different shadows.
        let a = format!("{}a", "x".repeat(62));
        let b = format!("{}b", "x".repeat(62));
        assert_ne!(
            derived_schema_name(&a, "_rebuild").expect("a"),
            derived_schema_name(&b, "_rebuild").expect("b")
        );
        // The same name always gets the same shadow (a leftover is found again).
        assert_eq!(
            derived_schema_name(&a, "_rebuild").expect("a"),
            derived_schema_name(&a, "_rebuild").expect("a")
        );
        assert!(derived_schema_name(&"s".repeat(64), "_rebuild").is_err());
        assert!(derived_schema_name("Public", "_rebuild").is_err());
        assert!(
            derived_schema_name("live", "rebuild").is_err(),
            "suffix must start with _"
        );
    }

    /// Schema names that need quoting or that PostgreSQL would truncate are refused.
    #[test]
    fn schema_names_are_checked() {
        for ok in ["public", "a", "replay_noon", "s2", &"x".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2s",
            "Public",
            "a-b",
            "a b",
            "a;drop",
            "é",
            &"x".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
