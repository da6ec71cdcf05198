//! Label edits as kubectl takes them (`key=value` sets a label, `key-` removes one, and with
//! `--replace` the given set becomes the whole label map), checked against Kubernetes' rules
//! for label keys (qualified names) and values. Pure; `fabricctl pod label` and
//! `fabricctl namespace label` share it.

use std::collections::BTreeMap;

/// One edit of a label map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `key=value`: set the label.
    Set(String, String),
    /// `key-`: remove the label.
    Remove(String),
}

/// Why an edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Neither `key=value` nor `key-`.
    #[error("{arg:?}: write key=value to set a label, key- to remove one")]
    Syntax {
        /// The argument.
        arg: String,
    },
    /// The key is not a qualified name.
    #[error("label key {key:?} is invalid: {reason}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The value is not a label value.
    #[error("label value {value:?} (of {key:?}) is invalid: {reason}")]
    Value {
        /// The label's key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same key is edited twice.
    #[error("label {key:?} is given more than once")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// `key-` together with `--replace`, which already drops every label not given.
    #[error("{arg:?}: --replace keeps only the labels given as key=value; leave removals out")]
    RemoveWithReplace {
        /// The argument.
        arg: String,
    },
}

/// The longest label name (the part after a key's prefix) and the longest label value.
const MAX_NAME: usize = 63;

/// The longest key prefix (a DNS subdomain).
const MAX_PREFIX: usize = 253;

/// Parses and checks kubectl-style label arguments. With `replace`, only `key=value` is
/// accepted (an empty list then means "no labels at all").
pub fn parse(args: &[String], replace: bool) -> Result<Vec<Edit>, LabelError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut edits = Vec::with_capacity(args.len());
    for arg in args {
        let edit = match arg.split_once('=') {
            Some((key, value)) => {
                check_key(key)?;
                check_value(key, value)?;
                Edit::Set(key.to_owned(), value.to_owned())
            }
            None => match arg.strip_suffix('-') {
                Some(_) if replace => {
                    return Err(LabelError::RemoveWithReplace { arg: arg.clone() })
                }
                Some(key) => {
                    check_key(key)?;
                    Edit::Remove(key.to_owned())
                }
                None => return Err(LabelError::Syntax { arg: arg.clone() }),
            },
        };
        let key = match &edit {
            Edit::Set(key, _) | Edit::Remove(key) => key,
        };
        if !seen.insert(key.clone()) {
            return Err(LabelError::Duplicate { key: key.clone() });
        }
        edits.push(edit);
    }
    Ok(edits)
}

/// The label map after `edits`: `labels` changed by them, or with `replace` only the labels
/// they set.
pub fn apply(
    labels: &BTreeMap<String, String>,
    edits: &[Edit],
    replace: bool,
) -> BTreeMap<String, String> {
    let mut out = if replace {
        BTreeMap::new()
    } else {
        labels.clone()
    };
    for edit in edits {
        match edit {
            Edit::Set(key, value) => {
                out.insert(key.clone(), value.clone());
            }
            Edit::Remove(key) => {
                out.remove(key);
            }
        }
    }
    out
}

/// Checks a label key as Kubernetes does: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters of `A-Z a-z 0-9 - _ .` that starts and ends alphanumeric.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let bad = |reason| LabelError::Key {
        key: key.to_owned(),
        reason,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX || !is_dns_subdomain(prefix) {
            return Err(bad(
                "the prefix (before '/') must be a lowercase DNS subdomain, e.g. example.com",
            ));
        }
    }
    if name.is_empty() {
        return Err(bad("the name part must not be empty"));
    }
    check_name(name).map_err(bad)
}

/// Checks a label value as Kubernetes does: empty, or at most 63 characters of
/// `A-Z a-z 0-9 - _ .` that start and end alphanumeric.
pub fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| LabelError::Value {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    })
}

fn check_name(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_NAME {
        return Err("must be no more than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("must consist of alphanumerics, '-', '_' or '.'");
    }
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !ends_ok(s.bytes().next()) || !ends_ok(s.bytes().last()) {
        return Err("must start and end with an alphanumeric character");
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubectl_syntax() {
        let edits = parse(&args(&["app=web", "tier-", "empty="]), false).unwrap();
        assert_eq!(
            edits,
            [
                Edit::Set("app".into(), "web".into()),
                Edit::Remove("tier".into()),
                Edit::Set("empty".into(), "".into()),
            ]
        );
        let before = BTreeMap::from([
            ("tier".to_string(), "fe".to_string()),
            ("keep".to_string(), "me".to_string()),
        ]);
        let after = apply(&before, &edits, false);
        assert_eq!(
            after,
            BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("empty".to_string(), "".to_string()),
                ("keep".to_string(), "me".to_string()),
            ])
        );
        assert!(matches!(
            parse(&args(&["app"]), false),
            Err(LabelError::Syntax { .. })
        ));
        assert!(matches!(
            parse(&args(&["a=1", "a-"]), false),
            Err(LabelError::Duplicate { .. })
        ));
    }

    #[test]
    fn replace_keeps_only_what_is_given() {
        let before = BTreeMap::from([("old".to_string(), "x".to_string())]);
        let edits = parse(&args(&["pod=a"]), true).unwrap();
        assert_eq!(
            apply(&before, &edits, true),
            BTreeMap::from([("pod".to_string(), "a".to_string())])
        );
        assert!(apply(&before, &parse(&[], true).unwrap(), true).is_empty());
        assert!(matches!(
            parse(&args(&["old-"]), true),
            Err(LabelError::RemoveWithReplace { .. })
        ));
    }

    #[test]
    fn keys_are_qualified_names() {
        for ok in [
            "app",
            "a",
            "App.Name_1-x",
            "kubernetes.io/metadata.name",
            "example.com/Tier",
            &"k".repeat(63),
        ] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "a/b/c",
            "/app",
            "Example.com/app",
            "exa_mple.com/app",
            "example.com/",
            "app!",
            &"k".repeat(64),
            &format!("{}/a", "p".repeat(254)),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_are_short_alphanumeric_words() {
        for ok in ["", "web", "v1.2_3-x", "A", &"v".repeat(63)] {
            assert_eq!(check_value("k", ok), Ok(()), "{ok}");
        }
        for bad in ["-web", "web-", "we b", "a/b", ".x", &"v".repeat(64)] {
            assert!(check_value("k", bad).is_err(), "{bad:?}");
        }
        let err = parse(&args(&["app=bad value"]), false).unwrap_err();
        assert!(err.to_string().contains("\"bad value\""), "{err}");
    }
}
