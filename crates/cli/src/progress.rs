//! The live progress line: one spinner per target showing its current step, on a terminal only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyrotor_core::config::Target;
use keyrotor_core::engine::{Observer, Phase};

/// Spinners for a run (or nothing, when stderr is not a terminal).
pub struct Live {
    bars: Option<(MultiProgress, Arc<HashMap<String, ProgressBar>>)>,
}

impl Live {
    /// One spinner per target when `enabled`.
    pub fn new(enabled: bool, targets: &[Target]) -> Self {
        if !enabled {
            return Self { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {prefix:24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = targets
            .iter()
            .map(|t| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(t.name.to_string());
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
                (t.name.to_string(), bar)
            })
            .collect();
        Self {
            bars: Some((multi, Arc::new(bars))),
        }
    }

    /// The observer that moves the spinners.
    pub fn observer(&self) -> Observer {
        let Some((_, bars)) = &self.bars else {
            return Arc::new(|_| {});
        };
        let bars = bars.clone();
        Arc::new(move |e| {
            if let Some(bar) = bars.get(&e.target) {
                match &e.phase {
                    Phase::Started => bar.set_message(format!("{}…", e.step)),
                    Phase::Done => bar.set_message(format!("{} done", e.step)),
                    Phase::Failed(m) => bar.set_message(format!("{} failed: {m}", e.step)),
                }
            }
        })
    }

    /// Clears the spinners.
    pub fn finish(&self) {
        if let Some((multi, bars)) = &self.bars {
            for b in bars.values() {
                b.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}
