//! Grid axes by path: any numeric setting of a stage, written as the path
//! of field names to it (`sam.rho`, `optimizer.weight_decay`,
//! `lr.lr`, `kinds.look_sam.k`), set on the stage as written.
//!
//! The stage goes through its serde form (a JSON value: struct fields by
//! name, an enum variant as `{"Cosine": {"lr": 0.1}}`), the number is set
//! at the path, and the value is read back into the stage, so the kind's
//! own types and checks decide what the number may be. A path passes
//! through an enum variant's fields without naming the variant (`lr.lr`
//! is the rate of `Cosine(lr: ..)` or `Constant(lr: ..)`), and a number
//! at a newtype variant replaces its content (`method.at` of
//! `Switch(.., at: Fraction(0.75))` sets the fraction). A setting the
//! stage leaves unset is created (`optimizer.weight_decay` without an
//! `optimizer:` block). The kinds' short names (`rho`, `switch_epoch`,
//! `train_per_class`) are an alias table over this: each kind's
//! `Partial::GRID_FIELDS`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Invalid, closest};

/// `stage` with the number `v` at `path`.
pub fn set<T: Serialize + DeserializeOwned>(stage: &T, path: &str, v: f64) -> Result<T, Invalid> {
    if !v.is_finite() {
        return Err(Invalid::Value(format!(
            "`{path}`: {v} is not a finite number"
        )));
    }
    let mut doc = serde_json::to_value(stage).expect("stages serialise");
    let segs: Vec<&str> = path.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(Invalid::Value(format!(
            "`{path}` is not a path of settings (`sam.rho`)"
        )));
    }
    set_in(&mut doc, &segs, number(v)).map_err(|m| Invalid::Value(format!("`{path}`: {m}")))?;
    serde_json::from_value(doc).map_err(|e| Invalid::Value(explain(path, &e.to_string())))
}

/// `v` as JSON: a whole number as an integer, so that integer settings
/// (`epochs`, `batch`) read it.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// The one variant of an externally tagged enum value (`{"Cosine": ..}`).
fn variant(node: &mut Value) -> Option<&mut Value> {
    match node {
        Value::Object(m) if m.len() == 1 => {
            let (k, _) = m.iter().next()?;
            if k.starts_with(|c: char| c.is_ascii_uppercase()) {
                m.values_mut().next()
            } else {
                None
            }
        }
        _ => None,
    }
}

fn set_in(node: &mut Value, segs: &[&str], v: Value) -> Result<(), String> {
    let Some((first, rest)) = segs.split_first() else {
        // At the setting: a newtype variant keeps its variant.
        match variant(node) {
            Some(inner) if inner.is_number() || inner.is_null() => *inner = v,
            _ => *node = v,
        }
        return Ok(());
    };
    // Through a variant's fields, unless the path names a field beside it.
    let has_field = matches!(node, Value::Object(m) if m.contains_key(*first));
    let node = match variant(node) {
        Some(inner) if !has_field && inner.is_object() => inner,
        _ => node,
    };
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(m) => set_in(m.entry(first.to_string()).or_insert(Value::Null), rest, v),
        other => Err(format!("`{first}` is no setting of {other}")),
    }
}

/// serde's error for a path that does not fit, with the nearest field
/// where one was misspelt (`did you mean `sam.rho`?`).
fn explain(path: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f);
    // serde lists them as "expected `a`", "expected `a` or `b`" or
    // "expected one of `a`, `b`, `c`": every backticked word after it.
    let choices: Vec<String> = message
        .split_once(", expected ")
        .map(|(_, list)| {
            list.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let hint = unknown
        .and_then(|u| closest(u, &choices))
        .map(|c| {
            let prefix = path.rsplit_once('.').map_or("", |(p, _)| p);
            let full = if prefix.is_empty() {
                c.to_string()
            } else {
                format!("{prefix}.{c}")
            };
            format!("; did you mean `{full}`?")
        })
        .unwrap_or_default();
    format!("no setting `{path}` takes a number here ({message}){hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        rho: Option<f64>,
        chunk: Option<usize>,
    }

    #[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
    enum Lr {
        Cosine { lr: f64 },
        Constant { lr: f64 },
    }

    #[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
    enum At {
        Fraction(f64),
        Epoch(u64),
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Stage {
        epochs: Option<u64>,
        sam: Option<Inner>,
        lr: Option<Lr>,
        at: Option<At>,
    }

    #[test]
    fn paths_set_fields_variants_and_unset_blocks() {
        let s = Stage {
            lr: Some(Lr::Constant { lr: 0.1 }),
            at: Some(At::Epoch(3)),
            ..Stage::default()
        };
        let t = set(&s, "sam.rho", 0.2).unwrap();
        assert_eq!(t.sam.unwrap().rho, Some(0.2), "an unset block is created");
        assert_eq!(set(&s, "epochs", 7.0).unwrap().epochs, Some(7));
        assert_eq!(
            set(&s, "lr.lr", 0.05).unwrap().lr,
            Some(Lr::Constant { lr: 0.05 }),
            "through the variant, keeping it"
        );
        assert_eq!(set(&s, "at", 5.0).unwrap().at, Some(At::Epoch(5)));
        // What the types refuse, with the path named.
        let e = set(&s, "epochs", 1.5).unwrap_err().to_string();
        assert!(e.contains("`epochs`") && e.contains("1.5"), "{e}");
        let e = set(&s, "sam.rhoo", 0.1).unwrap_err().to_string();
        assert!(e.contains("did you mean `sam.rho`?"), "{e}");
        let e = set(&s, "epoch", 3.0).unwrap_err().to_string();
        assert!(e.contains("did you mean `epochs`?"), "{e}");
        assert!(set(&s, "sam..rho", 0.1).is_err());
        assert!(set(&s, "sam.rho", f64::NAN).is_err());
    }
}
