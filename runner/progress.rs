//! Progress bars for long work (large labs, a gc of many objects): drawn on stderr only when it
//! is a terminal and the caller does not print machine-readable output, so scripts, pipes and
//! `--json` never see them.

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar that appears once work of at least `min_total` steps is under way.
pub struct Progress {
    label: &'static str,
    min_total: usize,
    enabled: bool,
    bar: OnceLock<ProgressBar>,
}

impl Progress {
    /// `quiet`: the output is machine-readable (`--json`): never draw.
    pub fn new(label: &'static str, min_total: usize, quiet: bool) -> Progress {
        Progress {
            label,
            min_total,
            enabled: !quiet && std::io::stderr().is_terminal(),
            bar: OnceLock::new(),
        }
    }

    /// Whether a bar may be drawn at all (callers skip counting work when not).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `done` of `total` steps are finished.
    pub fn update(&self, done: usize, total: usize) {
        if !self.enabled || total < self.min_total {
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label);
            bar
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.get() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}
