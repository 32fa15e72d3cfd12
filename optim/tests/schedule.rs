//! SGD/SAM schedules, their cost accounting, and the learning-rate schedule.

use samlab_optim::*;

const T: u64 = 200 * 196;

fn brute(r: &Resolved, start: u64, end: u64) -> u64 {
    (start..end).filter(|&t| r.method(t) == Method::Sam).count() as u64
}

#[test]
fn psam_cost_is_the_thesis_formula() {
    // T = 200 epochs x 196 steps, E = 0.75 T, n = 20.
    let r = StepSchedule::Psam {
        period: 20,
        until: Point::Fraction(0.75),
        with: Method::Sam,
    }
    .resolve(T, 196)
    .unwrap();
    assert_eq!(
        r,
        Resolved::Psam {
            period: 20,
            until: 29_400,
            with: Method::Sam,
        }
    );
    let sam = r.count(Method::Sam, 0, T);
    assert_eq!(sam, brute(&r, 0, T));
    assert_eq!(sam, 29_400 / 20 + (T - 29_400));
    let cost = r.cost(&KindSettings::default(), 0, T);
    // 1 + (1 - (n-1)E/(nT)) SGD-step units per step, exactly.
    let (n, e, t) = (20.0, 29_400.0, T as f64);
    let formula = 1.0 + (1.0 - (n - 1.0) * e / (n * t));
    assert_eq!(cost / t, formula);
    assert_eq!(cost / t, 1.2875);
    // ... which is 0.64 of SAM's cost (2 units per step).
    assert!((cost / (2.0 * t) - 0.64375).abs() < 1e-12);
    // PSAM's schedule itself: SAM at multiples of n before E, every step after.
    assert_eq!(r.method(0), Method::Sam);
    assert_eq!(r.method(1), Method::Sgd);
    assert_eq!(r.method(40), Method::Sam);
    assert_eq!(r.method(29_401), Method::Sam);
}

#[test]
fn closed_form_counts_equal_counting_every_step() {
    let schedules = [
        StepSchedule::Always(Method::Sgd),
        StepSchedule::Always(Method::Sam),
        StepSchedule::Switch {
            from: Method::Sgd,
            to: Method::Sam,
            at: Point::Epoch(150.0),
        },
        StepSchedule::Switch {
            from: Method::Sam,
            to: Method::Sgd,
            at: Point::Fraction(0.75),
        },
        StepSchedule::Psam {
            period: 7,
            until: Point::Step(1000),
            with: Method::Sam,
        },
        StepSchedule::Psam {
            period: 1,
            until: Point::Step(0),
            with: Method::Sam,
        },
    ];
    for s in &schedules {
        let r = s.resolve(T, 196).unwrap();
        for (a, b) in [
            (0, T),
            (0, 1),
            (13, 29_400),
            (29_399, 29_401),
            (5000, 5000),
            (999, 1010),
            (T - 3, T),
        ] {
            assert_eq!(
                r.count(Method::Sam, a, b),
                brute(&r, a, b),
                "{s:?} [{a}, {b})"
            );
            assert_eq!(
                r.count(Method::Sgd, a, b) + r.count(Method::Sam, a, b),
                b - a
            );
            assert_eq!(
                r.cost(&KindSettings::default(), a, b),
                ((b - a) + brute(&r, a, b)) as f64
            );
        }
    }
    let sw = StepSchedule::Switch {
        from: Method::Sgd,
        to: Method::Sam,
        at: Point::Epoch(150.0),
    }
    .resolve(T, 196)
    .unwrap();
    assert_eq!(sw.method(150 * 196 - 1), Method::Sgd);
    assert_eq!(sw.method(150 * 196), Method::Sam);
}

#[test]
fn bad_points_are_errors() {
    let err = StepSchedule::Switch {
        from: Method::Sgd,
        to: Method::Sam,
        at: Point::Fraction(1.5),
    }
    .resolve(T, 196)
    .unwrap_err()
    .to_string();
    assert!(err.contains("fraction 1.5"), "{err}");
    let err = StepSchedule::Psam {
        period: 20,
        until: Point::Epoch(250.0),
        with: Method::Sam,
    }
    .resolve(T, 196)
    .unwrap_err()
    .to_string();
    assert!(err.contains("outside the run"), "{err}");
    let err = StepSchedule::Psam {
        period: 0,
        until: Point::Step(1),
        with: Method::Sam,
    }
    .resolve(T, 196)
    .unwrap_err()
    .to_string();
    assert!(err.contains("period"), "{err}");
    // A schedule resolved for a longer run is refused by a shorter one.
    let trainer = |schedule: Resolved| {
        Trainer::resolved(
            SgdConfig::default(),
            SamConfig::new(0.05),
            LrSchedule::Cosine { lr: 0.1 },
            schedule,
            100,
        )
    };
    let long = StepSchedule::Switch {
        from: Method::Sgd,
        to: Method::Sam,
        at: Point::Fraction(0.75),
    }
    .resolve(T, 196)
    .unwrap();
    let err = trainer(long).err().unwrap().to_string();
    assert!(err.contains("outside the run's 0..=100"), "{err}");
    let err = trainer(Resolved::Psam {
        period: 0,
        until: 50,
        with: Method::Sam,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("period"), "{err}");
    assert!(
        trainer(Resolved::Switch {
            from: Method::Sgd,
            to: Method::Sam,
            at: 75
        })
        .is_ok()
    );
}

#[test]
fn schedules_round_trip_through_serde() {
    let s = StepSchedule::Psam {
        period: 20,
        until: Point::Fraction(0.75),
        with: Method::Sam,
    };
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<StepSchedule>(&text).unwrap(), s);
    let lr = LrSchedule::Cosine { lr: 0.1 };
    assert_eq!(
        serde_json::from_str::<LrSchedule>(&serde_json::to_string(&lr).unwrap()).unwrap(),
        lr
    );
}

#[test]
fn cosine_schedule_depends_on_the_global_step_of_the_whole_run() {
    let lr = LrSchedule::Cosine { lr: 0.1 };
    assert_eq!(lr.at(0, T), 0.1);
    assert!((lr.at(T / 2, T) - 0.05).abs() < 1e-15);
    assert!(lr.at(T, T).abs() < 1e-15);
    let mid = lr.at(T / 4, T);
    assert!((mid - 0.1 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0).abs() < 1e-15);
    assert!((1..T).all(|t| lr.at(t, T) <= lr.at(t - 1, T)));
    assert_eq!(LrSchedule::Constant { lr: 0.03 }.at(12345, T), 0.03);
}

/// PSAM's SAM steps may be of any kind: they are counted as that kind's,
/// and the plan's cost follows the kind's settings.
#[test]
fn psam_with_another_kind_counts_that_kind() {
    let r = StepSchedule::Psam {
        period: 3,
        until: Point::Step(9),
        with: Method::LookSam,
    }
    .resolve(12, 4)
    .unwrap();
    let look = (0..12).filter(|&t| r.method(t) == Method::LookSam).count() as u64;
    assert_eq!(look, 3 + 3);
    assert_eq!(r.count(Method::LookSam, 0, 12), look);
    assert_eq!(r.count(Method::Sgd, 0, 12), 12 - look);
    assert_eq!(r.count(Method::Sam, 0, 12), 0);
    let mut kinds = KindSettings::default();
    kinds.look_sam.k = 2;
    assert_eq!(r.cost(&kinds, 0, 12), 6.0 + 6.0 * 1.5);
}
