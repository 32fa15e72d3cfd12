//! Content keys of stages and of shared training prefixes.
//!
//! A stage's key is the SHA-256 of one canonical JSON document (object keys
//! sorted, numbers in shortest round-trip form):
//!
//! | goes into the key | left out on purpose |
//! |---|---|
//! | the stage kind (`train`, `evaluate`) | the stage's name and grid labels in the study |
//! | its fully resolved spec, defaults filled in (model by canonical name) | the study file's name, path and other stages |
//! | the SGD/SAM schedule resolved to steps (`Switch at Fraction(0.75)` and `at Epoch(150)` of 200 agree) | SAM settings of a run that never takes a SAM step |
//! | the keys of the stages it depends on (`from`, `of`), by role | absolute paths, mtimes, host names, user names |
//! | the dataset's name and content fingerprint (decoded pixels and labels, not the file it came from) | where the dataset was read from (official archive, folder, JPEG tree: only content counts) |
//! | [`SEMANTICS`], bumped by hand whenever training or evaluation semantics change | the device (a checkpoint trained on CUDA is reused on the CPU; the entry records where it was computed), thread counts, progress settings |
//!
//! A shared prefix (the first `k` epochs of a Train stage) has its own key:
//! the stage's spec without `epochs` (kept when the learning rate depends on
//! the run's length, as the cosine schedule does), without the SGD/SAM
//! schedule and without the final evaluation, plus `k` and a digest of the
//! method of every step before epoch `k`. Two runs share a prefix key exactly
//! when they would compute the same first `k` epochs.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The version of the training and evaluation semantics. Bump it when a
/// change to the code changes what a stage computes; every key changes.
pub const SEMANTICS: u32 = 1;

/// Canonical JSON: object keys sorted at every level.
pub fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies a stage's computation, before hashing.
pub struct KeyDoc<'a> {
    pub kind: &'a str,
    pub spec: Value,
    pub deps: Vec<(&'a str, String)>,
    pub dataset: &'a str,
    pub fingerprint: &'a str,
}

impl KeyDoc<'_> {
    pub fn document(&self) -> Value {
        let deps: serde_json::Map<String, Value> = self
            .deps
            .iter()
            .map(|(role, key)| (role.to_string(), Value::String(key.clone())))
            .collect();
        serde_json::json!({
            "semantics": SEMANTICS,
            "kind": self.kind,
            "spec": self.spec,
            "deps": deps,
            "dataset": { "name": self.dataset, "fingerprint": self.fingerprint },
        })
    }

    pub fn key(&self) -> String {
        sha256_hex(canonical(&self.document()).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": 0.5}});
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":0.5,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn keys_depend_on_fingerprint_and_deps_not_their_order_of_insertion() {
        let doc = |fp: &'static str, deps: Vec<(&'static str, String)>| KeyDoc {
            kind: "train",
            spec: serde_json::json!({"x": 1}),
            deps,
            dataset: "cifar10",
            fingerprint: fp,
        };
        let a = doc("aa", vec![("from", "k1".into()), ("of", "k2".into())]).key();
        let b = doc("aa", vec![("of", "k2".into()), ("from", "k1".into())]).key();
        assert_eq!(a, b);
        assert_ne!(
            a,
            doc("ab", vec![("from", "k1".into()), ("of", "k2".into())]).key()
        );
        assert_ne!(
            a,
            doc("aa", vec![("from", "k3".into()), ("of", "k2".into())]).key()
        );
        assert_eq!(a.len(), 64);
    }
}
