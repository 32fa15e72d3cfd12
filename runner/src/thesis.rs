//! The thesis' own numbers: its Tables 5.1, 5.2 and 5.3 as printed,
//! transcribed once into `results/thesis/tables.csv` (whose README says
//! where each row comes from and what the text leaves open;
//! `results/thesis/check_transcription.py` compares the file with the
//! text). The paper studies' tables show them beside their own cells
//! (`Table(..., thesis: Thesis(...))`, [`crate::compare::pivots`]).
//!
//! A row is found by table, dataset, model (as the runner names it:
//! `resnet18`, `preactresnet164`, `wrn28-10`, `pyramidnet110`) and method
//! with the setting the table prints, written `"SGD"`, `"SAM rho=0.05"`,
//! `"SGD->SAM"`, `"PSAM n=20"`.

use std::sync::OnceLock;

use serde::Deserialize;

/// The committed transcription.
pub const CSV: &str = include_str!("../../results/thesis/tables.csv");

/// One printed cell: `mean ± std` over `n` seeds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Row {
    /// `5.1`, `5.2` or `5.3`.
    pub table: String,
    pub model: String,
    /// `cifar10` or `cifar100`.
    pub dataset: String,
    /// `SGD`, `SAM`, `SGD->SAM`, `SAM->SGD`, `PSAM`.
    pub method: String,
    /// What the table's row label adds (`rho=0.05`, `n=20`), else empty.
    pub setting: String,
    pub mean: f64,
    pub std: f64,
    /// Seeds, as the caption states them.
    pub n: usize,
    /// The section that reports the table.
    pub section: String,
    pub note: String,
}

impl Row {
    /// `method` or `method setting`, as a study names the row.
    pub fn label(&self) -> String {
        if self.setting.is_empty() {
            self.method.clone()
        } else {
            format!("{} {}", self.method, self.setting)
        }
    }
}

/// Parses a transcription in the committed file's format.
pub fn parse(text: &str) -> std::result::Result<Vec<Row>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, r) in reader.deserialize::<Row>().enumerate() {
        // Line i + 2: the header is line 1.
        let row = r.map_err(|e| format!("tables.csv line {}: {e}", i + 2))?;
        if row.n == 0 || !row.mean.is_finite() || !row.std.is_finite() || row.std < 0.0 {
            return Err(format!(
                "tables.csv line {}: n must be positive and mean, std finite (std >= 0)",
                i + 2
            ));
        }
        out.push(row);
    }
    Ok(out)
}

/// The committed rows (parsed once; `tests::the_transcription_parses`
/// fails if the file does not).
pub fn rows() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| parse(CSV).expect("results/thesis/tables.csv parses (thesis::tests)"))
}

/// The row of `table` for `dataset`, `model` and `label` (`"SAM rho=0.05"`).
pub fn find(table: &str, dataset: &str, model: &str, label: &str) -> Option<&'static Row> {
    rows().iter().find(|r| {
        r.table == table && r.dataset == dataset && r.model == model && r.label() == label
    })
}

/// What a table's numbers are in.
pub fn unit(table: &str) -> &'static str {
    match table {
        "5.1" => "steps",
        _ => "%",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: [&str; 4] = ["resnet18", "preactresnet164", "wrn28-10", "pyramidnet110"];

    #[test]
    fn the_transcription_parses() {
        let rows = parse(CSV).unwrap();
        assert_eq!(rows.len(), 84);
        assert!(rows.iter().all(|r| r.n > 0 && !r.section.is_empty()));
        assert!(parse("table,model\n5.1,resnet18\n").is_err());
    }

    /// Row counts per table (methods x models x datasets as printed), one
    /// row per key, n as the captions state, each model in every table.
    #[test]
    fn the_tables_are_complete_and_keys_unique() {
        let count = |t: &str| rows().iter().filter(|r| r.table == t).count();
        assert_eq!((count("5.1"), count("5.2"), count("5.3")), (28, 32, 24));
        let mut keys: Vec<(&str, &str, &str, String)> = rows()
            .iter()
            .map(|r| {
                (
                    r.table.as_str(),
                    r.dataset.as_str(),
                    r.model.as_str(),
                    r.label(),
                )
            })
            .collect();
        keys.sort();
        let all = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), all, "a key appears twice");
        for r in rows() {
            assert!(MODELS.contains(&r.model.as_str()), "{r:?}");
            let n = if r.table == "5.1" { 100 } else { 5 };
            assert_eq!(r.n, n, "{r:?}");
            let section = match r.table.as_str() {
                "5.1" => "5.2",
                "5.2" => "5.3",
                _ => "5.4",
            };
            assert_eq!(r.section, section, "{r:?}");
        }
        for rho in ["0.05", "0.1", "0.2", "0.3", "0.5", "0.7"] {
            for m in MODELS {
                assert!(find("5.1", "cifar10", m, &format!("SAM rho={rho}")).is_some());
            }
        }
    }

    /// Table 5.3 prints Table 5.2's SGD and SAM rows again: the two
    /// transcriptions agree.
    #[test]
    fn table_5_3_repeats_table_5_2() {
        for ds in ["cifar10", "cifar100"] {
            for m in MODELS {
                for method in ["SGD", "SAM"] {
                    let a = find("5.2", ds, m, method).unwrap();
                    let b = find("5.3", ds, m, method).unwrap();
                    assert_eq!((a.mean, a.std), (b.mean, b.std), "{ds} {m} {method}");
                }
            }
        }
    }

    /// What the text says of its own tables, checked on the transcription:
    /// SGD->SAM's mean above SAM->SGD's "in 7 out of 8 cases" (Section
    /// 5.3; WRN-28-10 on CIFAR-10 is the exception), escape steps that
    /// fall as rho grows (Section 5.2), and the speed-ups at the "typical"
    /// rho that results/thesis/README.md quotes (SGD over SAM steps:
    /// PreAct-ResNet-164 and WRN-28-10 at 0.05, PyramidNet-110 at 0.2;
    /// ResNet-18's 0.15 is no row of Table 5.1, so its 0.1 and 0.2).
    #[test]
    fn the_texts_readings_of_its_tables() {
        let mut wins = Vec::new();
        for ds in ["cifar10", "cifar100"] {
            for m in MODELS {
                let a = find("5.2", ds, m, "SGD->SAM").unwrap().mean;
                let b = find("5.2", ds, m, "SAM->SGD").unwrap().mean;
                if a <= b {
                    wins.push(format!("{ds} {m}"));
                }
            }
        }
        assert_eq!(wins, ["cifar10 wrn28-10"]);
        for m in MODELS {
            let mut last = f64::INFINITY;
            for label in [
                "SAM rho=0.05",
                "SAM rho=0.1",
                "SAM rho=0.2",
                "SAM rho=0.3",
                "SAM rho=0.5",
                "SAM rho=0.7",
            ] {
                let v = find("5.1", "cifar10", m, label).unwrap().mean;
                assert!(v <= last, "{m} {label}");
                last = v;
            }
        }
        let speedup = |m: &str, rho: &str| {
            find("5.1", "cifar10", m, "SGD").unwrap().mean
                / find("5.1", "cifar10", m, &format!("SAM rho={rho}"))
                    .unwrap()
                    .mean
        };
        let shown = |x: f64| format!("{x:.1}");
        assert_eq!(shown(speedup("preactresnet164", "0.05")), "2.0");
        assert_eq!(shown(speedup("wrn28-10", "0.05")), "5.4");
        assert_eq!(shown(speedup("pyramidnet110", "0.2")), "47.7");
        assert_eq!(shown(speedup("resnet18", "0.1")), "7.4");
        assert_eq!(shown(speedup("resnet18", "0.2")), "33.3");
        assert_eq!(shown(speedup("resnet18", "0.05")), "1.0");
        assert_eq!(shown(speedup("pyramidnet110", "0.05")), "4.8");
        assert_eq!(unit("5.1"), "steps");
        assert_eq!(unit("5.2"), "%");
    }
}
