//! The timeline of a lab file: steps at times counted from `up` (`at`) or from the end of the
//! previous step (`after`), each making at most one change and then running its checks.
//! `lab test` plays it after the file's own checks; the whole passes when every step does.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::topology::StepPlan;
use super::{CheckResult, Lab};

/// What one step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    /// When the change was made, in milliseconds since `up`.
    pub at_ms: f64,
    /// Why the change failed, if it did.
    pub error: Option<String>,
    pub checks: Vec<CheckResult>,
    pub passed: bool,
}

/// Plays `steps` on `lab`, calling `on_step` after each.
pub fn play(
    lab: &Lab,
    steps: &[StepPlan],
    on_step: &mut dyn FnMut(&StepReport),
) -> Vec<StepReport> {
    let mut out = vec![];
    let mut last_end = Instant::now();
    for step in steps {
        let start = match step.when {
            super::topology::When::At(at) => lab.up_at() + at,
            super::topology::When::After(after) => last_end + after,
        };
        sleep_until(start);
        let at_ms = lab.up_at().elapsed().as_secs_f64() * 1000.0;
        let error = step
            .action
            .as_ref()
            .and_then(|a| lab.apply(a).err())
            .map(|e| crate::error::chain(&e));
        let checks = match lab.run_checks(&step.checks) {
            Ok(c) => c,
            Err(e) => {
                let report = StepReport {
                    step: step.name.clone(),
                    at_ms,
                    error: Some(error.unwrap_or_else(|| crate::error::chain(&e))),
                    checks: vec![],
                    passed: false,
                };
                on_step(&report);
                out.push(report);
                last_end = Instant::now();
                continue;
            }
        };
        let passed = error.is_none() && checks.iter().all(|c| c.passed);
        let report = StepReport {
            step: step.name.clone(),
            at_ms,
            error,
            checks,
            passed,
        };
        on_step(&report);
        out.push(report);
        last_end = Instant::now();
    }
    out
}

fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if left > Duration::ZERO {
        std::thread::sleep(left);
    }
}

/// A step's report as text: a line for the step, one per check.
pub fn text(r: &StepReport) -> String {
    let mut out = format!(
        "{}  step {} (at {:.0} ms)",
        if r.passed { "PASS" } else { "FAIL" },
        r.step,
        r.at_ms
    );
    if let Some(e) = &r.error {
        out.push_str(&format!(": {e}"));
    }
    out.push('\n');
    for c in &r.checks {
        out.push_str(&format!(
            "  {}  {}  ({}, {:.1} ms{})\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.check,
            c.detail,
            c.millis,
            if c.attempts > 1 {
                format!(", {} tries", c.attempts)
            } else {
                String::new()
            }
        ));
    }
    out
}
