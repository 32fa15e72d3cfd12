//! Event files written and read back through the crate's own reader, which
//! checks every record's length and both CRCs; damaged files are refused.

use samlab_tensorboard::proto::event::What;
use samlab_tensorboard::{Error, EventWriter, FILE_NAME, FILE_VERSION, Reading};

fn write_run(dir: &std::path::Path) -> std::path::PathBuf {
    let mut w = EventWriter::create(dir, "sam-rho0.1-seed2").unwrap();
    w.add_text("settings", 0, "    {\"rho\": 0.1}", 0.0)
        .unwrap();
    for step in 1..=3i64 {
        let loss = 2.0 / step as f32;
        w.add_scalar("train_loss", step * 10, loss, step as f64 * 1.5)
            .unwrap();
    }
    w.add_scalar("summary/test_acc", 30, 0.362, 4.5).unwrap();
    let path = w.path().to_path_buf();
    w.close().unwrap();
    path
}

#[test]
fn written_values_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_run(dir.path());
    assert_eq!(path, dir.path().join("sam-rho0.1-seed2").join(FILE_NAME));

    let events = samlab_tensorboard::read_events(&path).unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
    assert_eq!((events[0].step, events[0].wall_time), (0, 0.0));

    let values = samlab_tensorboard::read_values(&path).unwrap();
    let expected = vec![
        (
            0,
            0.0,
            "settings".to_string(),
            Reading::Text(vec!["    {\"rho\": 0.1}".into()]),
        ),
        (10, 1.5, "train_loss".into(), Reading::Scalar(2.0)),
        (20, 3.0, "train_loss".into(), Reading::Scalar(1.0)),
        (30, 4.5, "train_loss".into(), Reading::Scalar(2.0 / 3.0)),
        (30, 4.5, "summary/test_acc".into(), Reading::Scalar(0.362)),
    ];
    assert_eq!(values, expected);
}

#[test]
fn the_same_values_give_the_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = write_run(a.path());
    let first = std::fs::read(&pa).unwrap();
    // Writing again over the same file replaces it rather than appending.
    write_run(a.path());
    let pb = write_run(b.path());
    assert_eq!(std::fs::read(&pa).unwrap(), first);
    assert_eq!(std::fs::read(&pb).unwrap(), first);
}

#[test]
fn records_frame_lengths_and_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_run(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let records = samlab_tensorboard::read_records(&path).unwrap();
    // Each record adds 16 bytes of framing around its data.
    let framed: usize = records.iter().map(|r| r.len() + 16).sum();
    assert_eq!(framed, bytes.len());
    // The first record's length field is its data's length.
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(len, records[0].len());
}

#[test]
fn damaged_files_are_refused_with_the_record_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_run(dir.path());
    let good = std::fs::read(&path).unwrap();
    let first = samlab_tensorboard::read_records(&path).unwrap()[0].len() + 16;

    // A flipped bit in the second record's data.
    let mut bad = good.clone();
    bad[first + 12] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    match samlab_tensorboard::read_records(&path) {
        Err(Error::Corrupt {
            index,
            offset,
            what,
            ..
        }) => {
            assert_eq!((index, offset), (1, first as u64));
            assert!(what.contains("data CRC"), "{what}");
        }
        other => panic!("expected a data CRC error, got {other:?}"),
    }

    // A flipped bit in the first record's length.
    let mut bad = good.clone();
    bad[0] ^= 4;
    std::fs::write(&path, &bad).unwrap();
    match samlab_tensorboard::read_records(&path) {
        Err(Error::Corrupt { index, what, .. }) => {
            assert_eq!(index, 0);
            assert!(what.contains("length CRC"), "{what}");
        }
        other => panic!("expected a length CRC error, got {other:?}"),
    }

    // A file cut inside its last record.
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let e = samlab_tensorboard::read_records(&path).unwrap_err();
    assert!(
        e.to_string().contains("record 5") && e.to_string().contains("only"),
        "{e}"
    );
}

#[test]
fn run_names_must_be_one_safe_folder() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "..", "a/b", "a\\b", ".hidden", "a b", "x[rho=0.1]", "é"] {
        match EventWriter::create(dir.path(), bad) {
            Err(Error::RunName { name }) => assert_eq!(name, bad),
            Err(e) => panic!("{bad:?}: {e}"),
            Ok(_) => panic!("{bad:?} accepted"),
        }
    }
    assert!(EventWriter::create(dir.path(), "sgd-sam_x.1,rho=0.05+a").is_ok());
    let mut w = EventWriter::create(dir.path(), "ok").unwrap();
    assert!(matches!(
        w.add_scalar("", 3, 1.0, 0.0),
        Err(Error::EmptyTag { step: 3 })
    ));
}
