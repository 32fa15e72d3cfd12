//! Every study error names the file, the line where it can, and the valid
//! choices; no input makes the parser panic (mutation fuzzing over the
//! corpus in tests/corpus/).

use std::path::Path;

use proptest::prelude::*;
use samlab_runner::study;

fn err(text: &str) -> String {
    match study::parse(text, Path::new("s.ron")) {
        Ok(s) => panic!("expected an error, got {} stages", s.stages.len()),
        Err(e) => e.to_string(),
    }
}

fn with_stages(stages: &str) -> String {
    format!(
        "Study(\n    version: 1,\n    dataset: \"cifar10\",\n    stages: {{\n{stages}\n    }},\n)\n"
    )
}

const TRAIN: &str = r#"model: "resnet8", epochs: 2"#;

#[test]
fn syntax_errors_give_file_line_and_column() {
    let e = err("Study(\n    version: 1\n    dataset: \"cifar10\",\n)");
    assert!(e.starts_with("s.ron:3:"), "{e}");
    let e = err(&with_stages(
        r#"        "a": Train(model: "resnet8", epochs: two),"#,
    ));
    assert!(e.starts_with("s.ron:5:"), "{e}");
}

#[test]
fn unknown_fields_and_kinds_list_what_is_expected() {
    let e = err(&with_stages(
        r#"        "a": Train(modle: "resnet8", epochs: 2),"#,
    ));
    assert!(
        e.starts_with("s.ron:5:") && e.contains("modle") && e.contains("model"),
        "{e}"
    );
    let e = err(&with_stages(
        r#"        "a": Trian(model: "resnet8", epochs: 2),"#,
    ));
    assert!(
        e.contains("Trian") && e.contains("Train") && e.contains("Evaluate"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, method: Always(Adam)),"#
    )));
    assert!(
        e.contains("Adam") && e.contains("Sgd") && e.contains("Sam"),
        "{e}"
    );
}

#[test]
fn unknown_model_dataset_and_references_list_the_choices() {
    let e = err(&with_stages(
        r#"        "a": Train(model: "resnet19", epochs: 2),"#,
    ));
    assert!(e.starts_with("s.ron:5:") && e.contains("6n+2"), "{e}");
    let e = err(&with_stages(
        r#"        "a": Train(model: "vgg16", epochs: 2),"#,
    ));
    assert!(
        e.contains("vgg16") && e.contains("resnet18") && e.contains("wrnD-K"),
        "{e}"
    );
    let e = err(&format!(
        "Study(version: 1, dataset: \"mnist\", stages: {{ \"a\": Train({TRAIN}) }})"
    ));
    assert!(
        e.contains("mnist") && e.contains("cifar10, cifar100"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        "        \"a\": Train({TRAIN}),\n        \"b\": Evaluate(of: \"c\"),"
    )));
    assert!(
        e.starts_with("s.ron:6:") && e.contains("unknown stage `c`; valid choices: a, b"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, extends: "nope"),"#
    )));
    assert!(e.contains("extends unknown `nope`"), "{e}");
}

#[test]
fn cycles_missing_fields_and_bad_values_are_named() {
    let e = err(&with_stages(&format!(
        "        \"a\": Train({TRAIN}, from: \"b\"),\n        \"b\": Train({TRAIN}, from: \"a\"),"
    )));
    assert!(e.contains("cycle") && e.contains("a -> b -> a"), "{e}");
    let e = err(&with_stages(
        r#"        "a": Train(extends: "a", model: "resnet8", epochs: 2),"#,
    ));
    assert!(e.contains("cycle"), "{e}");
    let e = err(&with_stages(r#"        "a": Train(model: "resnet8"),"#));
    assert!(e.contains("`epochs` is missing"), "{e}");
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, sam: (rho: -1.0)),"#
    )));
    assert!(e.contains("rho"), "{e}");
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"momentum": [0.9]}}),"#
    )));
    assert!(
        e.contains("`momentum` cannot be a grid field") && e.contains("seed, rho"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"seed": [0.5]}}),"#
    )));
    assert!(e.contains("0.5 is not a whole number"), "{e}");
    // A typo of a grid field or of a step kind's setting: the nearest name.
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"rhoo": [0.1]}}),"#
    )));
    assert!(e.contains("did you mean `rho`?"), "{e}");
    // Any numeric setting by its path; a misspelt one names the nearest.
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"sam.rhoo": [0.1]}}),"#
    )));
    assert!(
        e.contains("`sam.rhoo` cannot be a grid field") && e.contains("did you mean `sam.rho`?"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"epochs": [1.5]}}),"#
    )));
    assert!(e.contains("`epochs`") && e.contains("1.5"), "{e}");
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"kinds.look_sam.kk": [2]}}),"#
    )));
    assert!(
        e.contains("`kinds.look_sam.kk` cannot be a grid field")
            && e.contains("did you mean `kinds.look_sam.k`?"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, grid: {{"kinds.look_sam.k": [1.5]}}),"#
    )));
    assert!(e.contains("1.5 is not a whole number"), "{e}");
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, kinds: (look_sam: (kk: 2))),"#
    )));
    assert!(
        e.contains("`kinds`") && e.contains("unknown field `kk`"),
        "{e}"
    );
    // A kind's settings checked against the run's batch where the study
    // is read: ESAM's gamma 0.1 selects no sample of a batch of 10.
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, batch: 10, method: Always(Esam), kinds: (esam: (gamma: 0.1))),"#
    )));
    assert!(
        e.contains("kinds.esam") && e.contains("selects no sample of a batch of 10"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, kinds: (look_sam: (k: 0))),"#
    )));
    assert!(
        e.contains("kinds.look_sam: LookSAM's k must be at least 1"),
        "{e}"
    );
    // `ghost: Batched` only where every kind the schedule takes has the
    // batched form, in Train and in Escape; a misspelt form lists both.
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, batch: 64, bn_batch: 32, ghost: Batched, method: Switch(from: Sgd, to: LookSam, at: Fraction(0.5))),"#
    )));
    assert!(
        e.starts_with("s.ron:5: stage `a`")
            && e.contains("`ghost: Batched` is built for the Sgd and Sam kinds only; LookSam"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        "        \"a\": Train({TRAIN}),\n        \"e\": Escape(of: \"a\", method: Esam, lr: 0.1, bn_batch: 32, ghost: Batched),"
    )));
    assert!(
        e.contains("stage `e`")
            && e.contains("`ghost: Batched` is built for")
            && e.contains("Esam computes"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, ghost: Batched),"#
    )));
    assert!(
        e.contains("stage `a`") && e.contains("`ghost: Batched` has nothing to batch"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        r#"        "a": Train({TRAIN}, ghost: Batch),"#
    )));
    assert!(
        e.contains("Batch") && e.contains("Sequential") && e.contains("Batched"),
        "{e}"
    );
    let e = err(&with_stages(&format!(
        "        \"a\": Train({TRAIN}),\n        \"e\": Evaluate(of: \"a\"),\n        \"f\": Evaluate(of: \"e\"),"
    )));
    assert!(
        e.contains("must name a Train or Import stage, not evaluate"),
        "{e}"
    );
    let e = err(&format!(
        "Study(version: 9, dataset: \"cifar10\", stages: {{ \"a\": Train({TRAIN}) }})"
    ));
    assert!(e.contains("version 9") && e.contains("version 1"), "{e}");
    let e = err(&with_stages(&format!(
        "        \"a\": Train({TRAIN}, grid: {{\"seed\": [0, 1]}}),\n        \"b\": Train({TRAIN}, from: \"a\", grid: {{\"seed\": [2]}}),"
    )));
    assert!(
        e.contains("refers to `a`, which has no run with those grid values"),
        "{e}"
    );
}

#[test]
fn grids_expand_and_references_follow_the_grid() {
    let s = study::parse(
        &with_stages(&format!(
            "        \"a\": Train({TRAIN}, grid: {{\"seed\": [0, 1]}}),\n        \"b\": Train({TRAIN}, from: \"a\", grid: {{\"rho\": [0.1, 0.2]}}, method: Always(Sam)),\n        \"e\": Evaluate(of: \"b\"),"
        )),
        Path::new("s.ron"),
    )
    .unwrap();
    let names: Vec<String> = s.stages.iter().map(|s| s.display()).collect();
    assert_eq!(
        names,
        [
            "a[seed=0]",
            "a[seed=1]",
            "b[rho=0.1,seed=0]",
            "b[rho=0.1,seed=1]",
            "b[rho=0.2,seed=0]",
            "b[rho=0.2,seed=1]",
            "e[rho=0.1,seed=0]",
            "e[rho=0.1,seed=1]",
            "e[rho=0.2,seed=0]",
            "e[rho=0.2,seed=1]"
        ]
    );
    // b[rho=0.2,seed=1] trains from a[seed=1]; e[...] evaluates its own b.
    assert_eq!(s.stages[5].deps, [("from", 1)]);
    assert_eq!(s.stages[9].deps, [("of", 5)]);
}

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[test]
fn corpus_studies_parse() {
    for text in corpus() {
        study::parse(&text, Path::new("corpus.ron")).unwrap();
    }
}

/// A mutation: delete, insert or replace a short span.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just(":".to_string()),
        Just("{".to_string()),
        Just("[".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
        Just("NaN".to_string()),
        Just("\"base\"".to_string()),
        Just("extends: \"sgd-sam\",".to_string()),
        Just("from: \"eval\",".to_string()),
        Just("grid: {\"seed\": []},".to_string()),
        Just("batch: 0,".to_string()),
        Just("epochs: 0,".to_string()),
        "[ -~]{0,8}",
        "\\PC{0,3}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..12).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), token.clone()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), token).prop_map(|(a, t)| Edit::Replace(a, t)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Delete(a, n) => {
                let a = a % len;
                let b = (a + n).min(chars.len());
                chars.drain(a.min(chars.len())..b);
            }
            Edit::Insert(a, t) => {
                let a = a % (chars.len() + 1);
                chars.splice(a..a, t.chars());
            }
            Edit::Replace(a, t) => {
                let a = a % len;
                let b = (a + t.chars().count()).min(chars.len());
                chars.splice(a.min(chars.len())..b, t.chars());
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn mutated_studies_never_panic(which in 0usize..16, edits in proptest::collection::vec(edit(), 1..4)) {
        let corpus = corpus();
        let text = apply(&corpus[which % corpus.len()], &edits);
        // Either a study or an error that names the file; never a panic.
        if let Err(e) = study::parse(&text, Path::new("fuzz.ron")) {
            prop_assert!(e.to_string().starts_with("fuzz.ron"), "{}", e);
        }
    }
}

/// Every committed study plans (without the dataset: keys unknown, costs
/// on the official split sizes); each paper-scale study (`table-*`,
/// `figure-*`) names the thesis' table or figure in its header and trains with the thesis' protocol
/// (batch 256 as 8 x 32: `bn_batch` 32, SAM's m 32).
#[test]
fn committed_studies_plan_and_paper_studies_follow_the_protocol() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../studies");
    let mut paper = 0;
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in [root.clone(), root.join("quick"), root.join("medium")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ron") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 22, "{files:?}");
    for path in files {
        let s = study::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let planned = samlab_runner::plan::plan(&s, None, None).unwrap();
        assert_eq!(planned.len(), s.stages.len());
        assert!(planned.iter().all(|p| p.cost > 0.0), "{}", path.display());
        // The quick regime, and the laptop-sized studies beside the paper
        // ones (`escape.ron`): the paper studies are `table-*`/`figure-*`.
        let name = path.file_name().unwrap().to_string_lossy();
        let paper_name = name.starts_with("table-") || name.starts_with("figure-");
        if path.parent().unwrap().ends_with("quick")
            || (path.parent() == Some(&root) && !paper_name)
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String = text.lines().take_while(|l| l.starts_with("//")).collect();
        if path.parent().unwrap().ends_with("medium") {
            // the medium regime names its thesis counterpart and keeps the
            // per-device protocol (m = 32) on a smaller batch
            assert!(
                ["Table 5.", "Figure", "Theorem"]
                    .iter()
                    .any(|t| header.contains(t))
                    || header
                        .match_indices("Section ")
                        .any(|(i, m)| header[i + m.len()..]
                            .starts_with(|c: char| c.is_ascii_digit())),
                "{}: the header names no part of the thesis",
                path.display()
            );
            for stage in &s.stages {
                if let samlab_runner::stages::StageSpec::Train(t) = &stage.spec {
                    assert_eq!(
                        t.bn_batch,
                        Some(32),
                        "{} {}",
                        path.display(),
                        stage.display()
                    );
                    assert_eq!(
                        t.sam.chunk,
                        Some(32),
                        "{} {}",
                        path.display(),
                        stage.display()
                    );
                }
            }
            continue;
        }
        paper += 1;
        assert!(
            header.contains("Table 5.") || header.contains("Figure"),
            "{}: the header names no table or figure",
            path.display()
        );
        for stage in &s.stages {
            if let samlab_runner::stages::StageSpec::Train(t) = &stage.spec {
                assert_eq!(t.batch, 256, "{} {}", path.display(), stage.display());
                assert_eq!(
                    t.bn_batch,
                    Some(32),
                    "{} {}",
                    path.display(),
                    stage.display()
                );
                assert_eq!(
                    t.sam.chunk,
                    Some(32),
                    "{} {}",
                    path.display(),
                    stage.display()
                );
            }
        }
    }
    assert_eq!(paper, 8, "one study per table or figure pair");
}

/// `imports` brings in blocks from files beside the study; a name defined
/// twice, a missing file and an import cycle are errors naming the files.
#[test]
fn imports_share_blocks_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let dirname = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w(
        "base.ron",
        r#"Blocks(blocks: { "r": Train(model: "resnet8", epochs: 2) })"#,
    );
    w(
        "more.ron",
        r#"Blocks(imports: ["base.ron"], blocks: { "r2": Train(extends: "r", batch: 64) })"#,
    );
    w(
        "s.ron",
        r#"Study(version: 1, dataset: "cifar10", imports: ["more.ron", "base.ron"],
            stages: { "a": Train(extends: "r2") })"#,
    );
    let s = study::load(&dir.path().join("s.ron")).unwrap();
    let samlab_runner::stages::StageSpec::Train(t) = &s.stages[0].spec else {
        panic!()
    };
    assert_eq!(
        (t.model.name().as_str(), t.epochs, t.batch),
        ("resnet8", 2, 64)
    );
    w(
        "dup.ron",
        r#"Study(version: 1, dataset: "cifar10", imports: ["base.ron"],
            blocks: { "r": Train(model: "resnet20", epochs: 1) }, stages: { "a": Train(extends: "r") })"#,
    );
    let e = study::load(&dir.path().join("dup.ron"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`r` is defined here and in") && e.contains("base.ron"),
        "{e}"
    );
    w(
        "missing.ron",
        r#"Study(version: 1, dataset: "cifar10", imports: ["nope.ron"], stages: { "a": Train(model: "resnet8", epochs: 1) })"#,
    );
    let e = study::load(&dir.path().join("missing.ron"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.ron"), "{e}");
    w("c1.ron", r#"Blocks(imports: ["./c2.ron"], blocks: {})"#);
    w(
        "c2.ron",
        &r#"Blocks(imports: ["../{D}/c1.ron"], blocks: {})"#.replace("{D}", &dirname),
    );
    w(
        "cycle.ron",
        r#"Study(version: 1, dataset: "cifar10", imports: ["c1.ron"], stages: { "a": Train(model: "resnet8", epochs: 1) })"#,
    );
    let e = study::load(&dir.path().join("cycle.ron"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle") && e.contains("c1.ron"), "{e}");
}

/// A laid-out table must name stages (or grid points) of the study.
#[test]
fn report_tables_name_existing_stages() {
    let study = |stage: &str| {
        format!(
            r#"Study(version: 1, dataset: "cifar10",
    stages: {{
        "r8-sgd": Train(model: "resnet8", epochs: 1),
        "r8-sam": Train(model: "resnet8", epochs: 1, method: Always(Sam), grid: {{"rho": [0.1]}}),
    }},
    report: (tables: [Table(title: "T", measure: "test_acc", rows: ["sgd", "sam[rho=0.1]"],
                            columns: ["r8"], stage: "{stage}")]),
)"#
        )
    };
    assert!(study::parse(&study("{column}-{row}"), Path::new("s.ron")).is_ok());
    let e = err(&study("{row}-{column}"));
    assert!(
        e.contains("table `T` names `sgd-r8` (row `sgd`, column `r8`)"),
        "{e}"
    );
}

/// A claim must name stages (or grid points) of the study, after `each`
/// is expanded; a claim with an unknown direction lists the valid ones.
#[test]
fn report_claims_name_existing_stages() {
    let study = |claim: &str| {
        format!(
            r#"Study(version: 1, dataset: "cifar10",
    stages: {{
        "r8-sgd": Train(model: "resnet8", epochs: 1),
        "r8-sam": Train(model: "resnet8", epochs: 1, method: Always(Sam), grid: {{"rho": [0.1]}}),
    }},
    report: (claims: [{claim}]),
)"#
        )
    };
    let good = r#"Claim(claim: "SAM > SGD", a: "{each}-sam[rho=0.1]", b: "{each}-sgd", measure: "test_acc", expect: Higher, each: ["r8"])"#;
    let s = study::parse(&study(good), Path::new("s.ron")).unwrap();
    assert_eq!(s.report.claims.len(), 1);
    assert_eq!(s.report.claims[0].a, "r8-sam[rho=0.1]");
    let e = err(&study(&good.replace("[\"r8\"]", "[\"r9\"]")));
    assert!(
        e.contains("claim `SAM > SGD` names `r9-sam[rho=0.1]`"),
        "{e}"
    );
    let e = err(&study(&good.replace("Higher", "Bigger")));
    assert!(
        e.contains("Bigger") && e.contains("Higher") && e.contains("Describe"),
        "{e}"
    );
}

/// A study with two grid points of SGD and SAM, and `claims`/`tables` as given.
fn claims_study(report: &str) -> String {
    format!(
        r#"Study(version: 1, dataset: "cifar10",
    stages: {{
        "resnet18-sgd": Train(model: "resnet18", epochs: 1, grid: {{"seed": [0, 1]}}),
        "resnet18-sam": Train(extends: "resnet18-sgd", method: Always(Sam)),
        "r8-sgd": Train(model: "resnet8", epochs: 1, grid: {{"seed": [0, 1]}}),
        "r8-sam": Train(extends: "r8-sgd", method: Always(Sam)),
    }},
    report: (
{report}
    ),
)"#
    )
}

/// `expect: Same` without a margin is refused with a message that says
/// what to write instead, at the line and column of the claim; a bad
/// margin, level or count is named with its value and the claim's line.
#[test]
fn equivalence_claims_need_a_margin() {
    let claim = |expect: &str| {
        claims_study(&format!(
            "        claims: [\n            Claim(claim: \"PSAM matches SAM\", a: \"r8-sam\", b: \"r8-sgd\",\n                  measure: \"test_acc\", expect: {expect}, scale: 100),\n        ],"
        ))
    };
    let s = study::parse(&claim("Same(margin: 0.3)"), Path::new("s.ron")).unwrap();
    assert_eq!(
        s.report.claims[0].expect,
        study::Expect::Same { margin: 0.3 }
    );
    // An integer margin reads as a number too.
    assert!(study::parse(&claim("Same(margin: 5)"), Path::new("s.ron")).is_ok());
    let e = err(&claim("Same"));
    assert!(
        e.starts_with("s.ron:11:") && e.contains("`expect: Same(margin: X)`"),
        "{e}"
    );
    let e = err(&claim("Same()"));
    assert!(e.starts_with("s.ron:11:") && e.contains("margin"), "{e}");
    let e = err(&claim("Same(marg: 1)"));
    assert!(e.contains("marg") && e.contains("margin"), "{e}");
    let e = err(&claim("Same(margin: -1)"));
    assert!(
        e.starts_with("s.ron:10:")
            && e.contains("claim `PSAM matches SAM`")
            && e.contains("margin -1"),
        "{e}"
    );
    let e = err(&claim("Same(margin: 0)"));
    assert!(e.contains("margin 0 is not a positive number"), "{e}");
    let e = err(&claim("Higher, level: 1.5"));
    assert!(e.starts_with("s.ron:10:") && e.contains("level 1.5"), "{e}");
    // A bound other than 0 is for `Higher`/`Lower`, a positive ratio on
    // the log scale.
    let s = study::parse(
        &claim("Lower, transform: LogRatio, than: 0.5"),
        Path::new("s.ron"),
    )
    .unwrap();
    assert_eq!(s.report.claims[0].than, Some(0.5));
    let e = err(&claim("Same(margin: 0.3), than: 0.5"));
    assert!(
        e.starts_with("s.ron:10:") && e.contains("than: 0.5 bounds a `Higher` or `Lower`"),
        "{e}"
    );
    let e = err(&claim("Lower, transform: LogRatio, than: 0"));
    assert!(e.contains("than: 0 is not a positive ratio"), "{e}");
    let e = err(&claim("Describe, than: 1"));
    assert!(e.contains("than: 1 bounds a `Higher` or `Lower`"), "{e}");
    let e = err(&claim("Higher, than: inf"));
    assert!(e.contains("is not a finite number"), "{e}");
}

/// `at_least` and `family`: an aggregate is one claim over its cases, and
/// the settings that cannot go together are named.
#[test]
fn aggregate_and_family_claims_are_checked() {
    let claim = |extra: &str| {
        claims_study(&format!(
            "        claims: [\n            Claim(claim: \"SAM > SGD in most\", a: \"{{each}}-sam\", b: \"{{each}}-sgd\",\n                  measure: \"test_acc\", expect: Higher, {extra}),\n        ],"
        ))
    };
    let s = study::parse(
        &claim(r#"each: ["r8", "resnet18"], at_least: 1"#),
        Path::new("s.ron"),
    )
    .unwrap();
    assert_eq!(s.report.claims.len(), 1);
    assert_eq!(s.report.claims[0].at_least, Some(1));
    let s = study::parse(
        &claim(r#"each: ["r8", "resnet18"], family: "F""#),
        Path::new("s.ron"),
    )
    .unwrap();
    assert_eq!(s.report.claims.len(), 2);
    assert!(
        s.report
            .claims
            .iter()
            .all(|c| c.family.as_deref() == Some("F"))
    );
    let e = err(&claim(r#"each: ["r8", "resnet18"], at_least: 3"#));
    assert!(
        e.starts_with("s.ron:10:") && e.contains("at_least: 3 is not between 1 and the 2 values"),
        "{e}"
    );
    let e = err(&claim("at_least: 1"));
    assert!(e.contains("`at_least` counts the cases of `each`"), "{e}");
    let e = err(&claim(r#"each: ["r8"], at_least: 1, family: "F""#));
    assert!(e.contains("takes no `family`"), "{e}");
    let e = err(&claim(r#"each: ["r9"], at_least: 1"#));
    assert!(e.contains("names `r9-sam`"), "{e}");
    let e = err(&claims_study(
        r#"        claims: [
            Claim(claim: "a", a: "r8-sam", b: "r8-sgd", measure: "test_acc", expect: Higher, family: "F"),
            Claim(claim: "b", a: "r8-sam", b: "r8-sgd", measure: "test_acc", expect: Higher, family: "F", level: 0.9),
            Claim(claim: "c", a: "r8-sam", b: "r8-sgd", measure: "test_acc", expect: Describe, family: "G"),
        ],"#,
    ));
    assert!(
        e.starts_with("s.ron:11:") && e.contains("family `F` mixes levels 0.95 and 0.9"),
        "{e}"
    );
}

/// A table's `thesis:` names rows of results/thesis/tables.csv, one per
/// row of the table; a method the table lacks gets the valid choices.
#[test]
fn thesis_columns_name_rows_of_the_transcription() {
    let table = |thesis: &str| {
        claims_study(&format!(
            "        tables: [\n            Table(title: \"Table 5.2\", measure: \"test_acc\", rows: [\"sgd\", \"sam\"],\n                  columns: [\"resnet18\"], stage: \"{{column}}-{{row}}\",\n                  thesis: {thesis}),\n        ],"
        ))
    };
    let s = study::parse(
        &table(r#"Thesis(table: "5.2", dataset: "cifar10", rows: ["SGD", "SAM"])"#),
        Path::new("s.ron"),
    )
    .unwrap();
    assert_eq!(s.report.tables[0].thesis.as_ref().unwrap().rows[1], "SAM");
    let e = err(&table(
        r#"Thesis(table: "5.2", dataset: "cifar10", rows: ["SGD", "SAM rho=0.1"])"#,
    ));
    assert!(
        e.starts_with("s.ron:10:")
            && e.contains("no row `SAM rho=0.1` for resnet18")
            && e.contains("SGD->SAM"),
        "{e}"
    );
    let e = err(&table(
        r#"Thesis(table: "5.2", dataset: "cifar10", rows: ["SGD"])"#,
    ));
    assert!(e.contains("1 rows for the table's 2"), "{e}");
    let e = err(&table(
        r#"Thesis(table: "5.2", dataset: "cifar10", rows: ["SGD", "SAM"], columns: ["resnet8"])"#,
    ));
    assert!(e.contains("none (no such table, dataset or model)"), "{e}");
}
