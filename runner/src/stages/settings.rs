//! A stage's settings as a study writes them, shared by the kinds: the
//! inheritance of fields and grids through `extends`, the SGD, SAM and
//! step-kind partials and their resolution, the checks of numbers (`whole`,
//! `positive`, the ghost batch), `w1`/`w2` references, a line of `a`
//! values, and how a model enters a key. A kind's own module holds only
//! what is its own.

use indexmap::IndexMap;
use samlab_models::Arch;
use samlab_optim::{Decay, KindSettings, Method, RhoSchedule, SamConfig, Scope, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// `child` with what it leaves unset taken from `parent` (what it
/// `extends`), as values: fields by name at every level (a `sam:` block
/// sets only the fields it names; a grid adds or replaces its fields),
/// while a value that is not a block (a number, a list, an enum's variant
/// such as `Cosine(lr: 0.1)` or `PerClass(50)`) replaces the parent's
/// whole. The result `extends` what the parent extends. Each kind's
/// serde form is its list of fields, so no kind lists them again.
pub fn merged<T: Serialize + serde::de::DeserializeOwned>(
    child: &T,
    parent: &T,
) -> Result<T, Invalid> {
    use serde_json::Value;
    fn is_variant(m: &serde_json::Map<String, Value>) -> bool {
        m.len() == 1
            && m.keys()
                .all(|k| k.starts_with(|c: char| c.is_ascii_uppercase()))
    }
    fn merge(child: Value, parent: &Value) -> Value {
        match (child, parent) {
            (Value::Null, p) => p.clone(),
            (Value::Object(c), Value::Object(p)) if !is_variant(&c) && !is_variant(p) => {
                // The parent's fields in their order, then the child's new
                // ones (a grid's axes run in that order).
                let mut out = p.clone();
                for (k, v) in c {
                    let theirs = out.get(&k).cloned().unwrap_or(Value::Null);
                    out.insert(k, merge(v, &theirs));
                }
                Value::Object(out)
            }
            (c, _) => c,
        }
    }
    let parent = serde_json::to_value(parent).expect("stages serialise");
    let mut v = merge(
        serde_json::to_value(child).expect("stages serialise"),
        &parent,
    );
    v["extends"] = parent["extends"].clone();
    serde_json::from_value(v)
        .map_err(|e| Invalid::Value(format!("merging with what it extends: {e}")))
}

/// A stage's grid as written: field name to the values it takes.
pub type Grid = IndexMap<String, Vec<f64>>;

/// SGD settings as written (unset fields: the thesis' recipe).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Sgd")]
pub struct SgdPartial {
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
    /// `Update` (default) or `Loss`: docs/thesis-protocol.md.
    pub decay: Option<Decay>,
}

/// SAM settings as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename = "Sam")]
pub struct SamPartial {
    pub rho: Option<f64>,
    /// m-sharpness chunk size; unset: the whole batch.
    pub chunk: Option<usize>,
    pub adaptive: Option<bool>,
    pub eta: Option<f64>,
    /// `All` (default) or `Norm`: SAM-ON, only the normalisation layers'
    /// parameters perturbed.
    pub scope: Option<Scope>,
    /// `Constant` (default), `Linear(to: x)`, `Cosine(to: x)` or
    /// `LrProportional(min: x)` (GSAM's rule).
    pub rho_schedule: Option<RhoSchedule>,
}

impl SgdPartial {
    /// The settings with the recipe's defaults filled in, checked.
    pub fn resolve(o: Option<&SgdPartial>) -> Result<SgdConfig, Invalid> {
        let d = SgdConfig::default();
        let o = o.cloned().unwrap_or_default();
        let optimizer = SgdConfig {
            momentum: o.momentum.unwrap_or(d.momentum),
            nesterov: o.nesterov.unwrap_or(d.nesterov),
            weight_decay: o.weight_decay.unwrap_or(d.weight_decay),
            decay: o.decay.unwrap_or(d.decay),
        };
        samlab_optim::Sgd::new(optimizer.clone())?;
        Ok(optimizer)
    }
}

impl SamPartial {
    /// The settings with defaults filled in, checked against the batch size
    /// and the ghost batch: the chunk m defaults to the ghost batch, as a
    /// device perturbs and normalises its own images.
    pub fn resolve(
        s: Option<&SamPartial>,
        batch: usize,
        bn_batch: Option<usize>,
    ) -> Result<SamConfig, Invalid> {
        let s = s.cloned().unwrap_or_default();
        let ds = SamConfig::new(0.05);
        let sam = SamConfig {
            rho: s.rho.unwrap_or(ds.rho),
            chunk: s.chunk.or(bn_batch),
            adaptive: s.adaptive.unwrap_or(ds.adaptive),
            eta: s.eta.unwrap_or(ds.eta),
            scope: s.scope.unwrap_or(ds.scope),
            rho_schedule: s.rho_schedule.unwrap_or(ds.rho_schedule),
        };
        sam.check()?;
        if let Some(m) = sam.chunk
            && !batch.is_multiple_of(m)
        {
            return Err(Invalid::Value(format!(
                "the m-sharpness chunk {m} does not divide the batch {batch}"
            )));
        }
        if let (Some(m), Some(b)) = (sam.chunk, bn_batch)
            && !m.is_multiple_of(b)
        {
            return Err(Invalid::Value(format!(
                "`bn_batch` {b} does not divide the m-sharpness chunk {m}: a device's perturbation covers whole ghost batches"
            )));
        }
        Ok(sam)
    }
}

/// The step kinds' own settings as written (`kinds: (look_sam: (k: 3))`),
/// kept as a value: `extends` merges it field by field, and it becomes
/// [`KindSettings`] once, with the kinds' defaults, in `finish`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct KindsPartial(serde_json::Value);

impl KindsPartial {
    /// Every numeric setting of every kind, as a grid path
    /// (`kinds.look_sam.k`).
    pub fn grid_paths() -> Vec<String> {
        let d = serde_json::to_value(KindSettings::default()).expect("settings serialise");
        let mut out = Vec::new();
        for (kind, fields) in d.as_object().into_iter().flatten() {
            for (name, v) in fields.as_object().into_iter().flatten() {
                if v.is_number() {
                    out.push(format!("kinds.{kind}.{name}"));
                }
            }
        }
        out
    }

    /// Sets grid path `kinds.KIND.NAME` (one of [`grid_paths`](Self::grid_paths))
    /// to `v`: a whole number where the setting is one.
    pub fn set(own: &mut Option<KindsPartial>, path: &str, v: f64) -> Result<(), Invalid> {
        let d = serde_json::to_value(KindSettings::default()).expect("settings serialise");
        let parts: Vec<&str> = path.split('.').collect();
        let [_, kind, name] = parts[..] else {
            return Err(Invalid::UnknownGridField(path.to_string()));
        };
        let value = match d.get(kind).and_then(|k| k.get(name)) {
            Some(x) if x.is_u64() => serde_json::Value::from(whole(v)?),
            Some(x) if x.is_number() => serde_json::Value::from(v),
            _ => return Err(Invalid::UnknownGridField(path.to_string())),
        };
        let root = &mut own
            .get_or_insert_with(|| KindsPartial(serde_json::json!({})))
            .0;
        if !root.is_object() {
            *root = serde_json::json!({});
        }
        let k = root
            .as_object_mut()
            .expect("an object")
            .entry(kind)
            .or_insert_with(|| serde_json::json!({}));
        match k.as_object_mut() {
            Some(m) => {
                m.insert(name.to_string(), value);
                Ok(())
            }
            None => Err(Invalid::Value(format!(
                "`kinds.{kind}` must be a block of settings to vary `{path}`"
            ))),
        }
    }

    /// The settings with every kind's defaults filled in, checked.
    pub fn resolve(o: Option<&KindsPartial>) -> Result<KindSettings, Invalid> {
        let kinds: KindSettings = match o {
            None => KindSettings::default(),
            Some(v) => serde_json::from_value(v.0.clone())
                .map_err(|e| Invalid::Value(format!("`kinds`: {e}")))?,
        };
        kinds.check()?;
        Ok(kinds)
    }
}

/// What a key records of the step kinds' own settings: for each kind the
/// run uses, the settings that differ from the kind's defaults (so adding a
/// setting, or a kind, changes no existing key); `None` when that is nothing.
pub fn kinds_key(
    kinds: &KindSettings,
    used: impl Iterator<Item = Method>,
) -> Option<serde_json::Value> {
    let (mine, base) = kinds_json(kinds);
    let mut out = serde_json::Map::new();
    for m in used {
        if let Some(v) = non_default_in(&mine, &base, m) {
            out.insert(m.field().to_string(), v);
        }
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// Every kind whose settings differ from its defaults, with those settings
/// (what a prefix identity records from the kind's first step).
pub fn non_default_kinds(
    kinds: &KindSettings,
) -> std::collections::BTreeMap<Method, serde_json::Value> {
    let (mine, base) = kinds_json(kinds);
    Method::ALL
        .iter()
        .filter_map(|m| Some((*m, non_default_in(&mine, &base, *m)?)))
        .collect()
}

/// `kinds` and the defaults, as JSON (serialised once per call above).
fn kinds_json(kinds: &KindSettings) -> (serde_json::Value, serde_json::Value) {
    (
        serde_json::to_value(kinds).expect("settings serialise"),
        serde_json::to_value(KindSettings::default()).expect("settings serialise"),
    )
}

/// Kind `m`'s settings in `mine` that differ from `base`, as an object
/// (`None`: all at their defaults).
fn non_default_in(
    mine: &serde_json::Value,
    base: &serde_json::Value,
    m: Method,
) -> Option<serde_json::Value> {
    let (mine, base) = (&mine[m.field()], &base[m.field()]);
    let fields: serde_json::Map<String, serde_json::Value> = mine
        .as_object()?
        .iter()
        .filter(|(k, v)| base.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!fields.is_empty()).then_some(serde_json::Value::Object(fields))
}

/// Checks a ghost-batch size against the batch.
pub fn check_bn_batch(bn_batch: Option<usize>, batch: usize) -> Result<(), Invalid> {
    if let Some(b) = bn_batch {
        positive("bn_batch", b as u64)?;
        if !batch.is_multiple_of(b) {
            return Err(Invalid::Value(format!(
                "`bn_batch` {b} does not divide the batch {batch}"
            )));
        }
    }
    Ok(())
}

/// Converts a grid value to a whole number.
pub fn whole(v: f64) -> Result<u64, Invalid> {
    if v >= 0.0 && v.fract() == 0.0 && v < 9.0e15 {
        Ok(v as u64)
    } else {
        Err(Invalid::Value(format!("{v} is not a whole number >= 0")))
    }
}

/// Checks that an integer field which must be positive is.
pub fn positive(name: &'static str, v: u64) -> Result<(), Invalid> {
    if v == 0 {
        Err(Invalid::NotPositive(name))
    } else {
        Ok(())
    }
}

/// `(w1, w2)` as stage references.
pub fn pair_refs<'a>(
    w1: &'a Option<String>,
    w2: &'a Option<String>,
) -> Vec<(&'static str, &'a str)> {
    let mut r = Vec::new();
    if let Some(a) = w1 {
        r.push(("w1", a.as_str()));
    }
    if let Some(b) = w2 {
        r.push(("w2", b.as_str()));
    }
    r
}

/// A specs' model, serialised as its canonical name (`resnet18`): how keys
/// hold it.
pub fn arch_name<S: serde::Serializer>(arch: &Arch, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&arch.name())
}

/// The values of `a`: `points` evenly spaced from `start` to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaGrid {
    pub start: f64,
    pub end: f64,
    pub points: usize,
}

impl AlphaGrid {
    pub fn values(&self) -> Vec<f64> {
        if self.points == 1 {
            return vec![self.start];
        }
        (0..self.points)
            .map(|i| {
                let t = i as f64 / (self.points - 1) as f64;
                // exact at both ends
                if i + 1 == self.points {
                    self.end
                } else {
                    self.start + t * (self.end - self.start)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_grid_hits_its_ends_exactly() {
        let g = AlphaGrid {
            start: -0.5,
            end: 1.5,
            points: 21,
        };
        let v = g.values();
        assert_eq!(v.len(), 21);
        assert_eq!(v[0], -0.5);
        assert_eq!(v[20], 1.5);
        assert_eq!(v[5], 0.0);
        assert_eq!(v[15], 1.0);
    }
}
