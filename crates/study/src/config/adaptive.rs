//! The `[sweep.adaptive]` section: more samples, in rounds, for the budget frontier's
//! undecided winners (issue 20 item 2).

use serde::{Deserialize, Serialize};

/// Adaptive sampling of the budget frontier: after the sweep, each budget whose winner's margin
/// over the runner-up has an interval containing 0 gets its two settings' cells measured again
/// with `growth` times the samples, round after round, until decided or capped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSampling {
    /// Rounds at most (0: off).
    pub rounds: u32,
    /// Factor on a refined cell's samples per round (at least 2).
    #[serde(default = "two")]
    pub growth: u32,
    /// Samples per cell no round goes beyond (also capped by the held-out prompts).
    pub max_samples_per_cell: u32,
    /// Cells re-measured per round at most: the undecided comparisons nearest to decided go
    /// first, so a round's cost is bounded.
    pub max_cells_per_round: u32,
}

fn two() -> u32 {
    2
}

impl AdaptiveSampling {
    /// CI: one round, a few cells.
    pub fn tiny() -> Self {
        Self {
            rounds: 1,
            growth: 2,
            max_samples_per_cell: 32,
            max_cells_per_round: 4,
        }
    }

    /// The quick preset: two rounds up to 4x the samples.
    pub fn quick() -> Self {
        Self {
            rounds: 2,
            growth: 2,
            max_samples_per_cell: 128,
            max_cells_per_round: 16,
        }
    }

    /// Samples of a cell refined `round` times from `base`, within the caps.
    pub fn samples(&self, base: u32, round: u32, prompts: usize) -> u32 {
        let grown = base.saturating_mul(self.growth.saturating_pow(round));
        grown.min(self.max_samples_per_cell).min(prompts as u32)
    }

    /// Problems with the section: the field and what is wrong with it.
    pub fn problems(&self, samples_per_cell: u32) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.growth < 2 {
            out.push((
                "sweep.adaptive.growth",
                format!(
                    "{}: expected at least 2 (samples multiply by it each round)",
                    self.growth
                ),
            ));
        }
        if self.rounds > 0 && self.max_samples_per_cell <= samples_per_cell {
            out.push((
                "sweep.adaptive.max_samples_per_cell",
                format!(
                    "{} is not above sweep.samples_per_cell = {samples_per_cell}: no round could add samples",
                    self.max_samples_per_cell
                ),
            ));
        }
        if self.rounds > 0 && self.max_cells_per_round < 2 {
            out.push((
                "sweep.adaptive.max_cells_per_round",
                format!(
                    "{}: expected at least 2 (a comparison has two sides)",
                    self.max_cells_per_round
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_grow_per_round_within_the_caps() {
        let a = AdaptiveSampling::quick();
        assert_eq!(a.samples(32, 0, 1000), 32);
        assert_eq!(a.samples(32, 1, 1000), 64);
        assert_eq!(a.samples(32, 2, 1000), 128);
        assert_eq!(a.samples(32, 3, 1000), 128);
        assert_eq!(a.samples(32, 2, 100), 100);
        assert!(a.problems(32).is_empty());
        let bad = AdaptiveSampling {
            growth: 1,
            max_samples_per_cell: 32,
            max_cells_per_round: 1,
            ..a
        };
        let p = bad.problems(32);
        let fields: Vec<&str> = p.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "sweep.adaptive.growth",
                "sweep.adaptive.max_samples_per_cell",
                "sweep.adaptive.max_cells_per_round"
            ]
        );
        assert!(p[1].1.starts_with("32 is not above"), "{p:?}");
    }
}
